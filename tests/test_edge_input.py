"""What clients send that the edge must read right, over real HTTP, against each way it runs:
`gleanpipe serve` (gunicorn, gevent workers, spool; loads into DuckDB), serve with the spool off
(gthread workers) and the `submit` function under functions-framework (gunicorn, gthread). Paths with extra slashes, header
values that are not ASCII, Content-Encodings other than gzip, gzip followed by zero padding.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import time
import uuid
import zlib

import orjson
import pytest

from conftest import APP, DATASET, SDK_HEADERS, make_ping, submit_path
from gleanpipe import rawobject
from test_http_framing import EDGES, edge_server

CLIENT = "5d1e7c2a-8b3f-4a6e-9c0d-1e2f3a4b5c6d"


@pytest.fixture(scope="module", params=EDGES)
def edge(request, tmp_path_factory):
    """Each server, started once for the tests below (each test uses its own document ids).
    ``kind``: "serve" for both serves (they load into DuckDB), or "function"."""
    data_dir = tmp_path_factory.mktemp(f"edge-{request.param}") / "data"
    data_dir.mkdir()
    srv = edge_server(request.param, data_dir, {})
    srv.kind = request.param.split("-")[0]
    yield srv
    srv.stop()
    assert "Traceback" not in srv.read_log()


def send(edge, path: str, body: bytes, headers: dict[str, str | bytes] | None = None) -> tuple[int, dict, dict]:
    """(status, JSON answer or {}, headers) of one POST. http.client sends the path as given (no
    slash merged) and a bytes header value as those bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=20)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        for name, value in {**SDK_HEADERS, **(headers or {}), "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else {}), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def stored(edge, doc_type: str, doc_id: str, wait: bool = True) -> tuple[dict, bytes] | None:
    """The metadata and payload of a document's raw object, or None when there is none. serve's
    200 means the ping is in its spool, which serve turns into the object a moment later: with
    ``wait`` this waits for it (a rejected ping never gets into the spool: no wait needed)."""
    path = edge.data_dir / "store" / "raw" / APP / doc_type / "1" / f"{doc_id}.json"
    deadline = time.monotonic() + (10 if wait and edge.kind == "serve" else 0)
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return rawobject.decode(path.read_bytes()) if path.exists() else None


def records(edge, error_type: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in (edge.data_dir / "store" / "errors").rglob(f"*/{error_type}/*.json")]


def raw_docs(edge) -> set[str]:
    raw = edge.data_dir / "store" / "raw"
    return {p.stem for p in raw.rglob("*.json")} if raw.exists() else set()


# --- 1. extra slashes in the path ------------------------------------------------------------------

def test_runs_of_slashes_and_a_trailing_slash_reach_the_same_document(edge):
    """Before: 404 for each (and a 404 is not recorded), so a server_endpoint written with a trailing
    slash (the SDK then sends //submit/...) lost every ping without a trace."""
    ping = orjson.dumps(make_ping(CLIENT, metrics={"counter": {"toolbox.launch_count": 4}}))
    forms = {
        "leading": "//submit/{app}/baseline/1/{doc}",
        "middle": "/submit//{app}///baseline/1//{doc}",
        "trailing": "/submit/{app}/baseline/1/{doc}/",
    }
    for name, form in forms.items():
        doc = str(uuid.uuid4())
        path = form.format(app=APP, doc=doc)
        status, answer, headers = send(edge, path, gzip.compress(ping))
        assert (status, headers.get("x-gleanpipe-stored")) == (200, "new"), (name, answer)
        meta, payload = stored(edge, "baseline", doc)
        assert payload == ping
        assert (meta["app_id"], meta["doc_type"], meta["document_id"], meta["key"]) == \
            (APP, "baseline", doc, f"raw/{APP}/baseline/1/{doc}.json")
        assert meta["uri"] == path  # the path as it came
        # the same document through the clean path, and back: a duplicate, nothing new written
        assert send(edge, submit_path("baseline", doc), gzip.compress(ping))[2]["x-gleanpipe-stored"] == "duplicate"
        assert send(edge, path, gzip.compress(ping))[2]["x-gleanpipe-stored"] == "duplicate"
    if edge.kind == "serve":
        assert edge.wait_rows(f"SELECT count(*) FROM {DATASET}.baseline_v1", 3) == 3
        assert edge.query(f"SELECT DISTINCT metrics.counter.toolbox_launch_count FROM {DATASET}.baseline_v1")[1] == [(4,)]


def test_slashes_are_merged_but_percent_2f_and_dot_segments_stay_refused(edge):
    """A %2F is part of a segment (the path WSGI gives has it as "/", RAW_URI has it as sent), so it
    is never merged away; `..` is a bad segment as before. The last two paths have four segments
    as sent, and WSGI's decoded path of them is a clean /submit path: they were stored (the app
    and doc type split at the %2F), while the same with a trailing slash was a 404."""
    body = gzip.compress(orjson.dumps(make_ping(CLIENT)))
    before = raw_docs(edge)
    doc = str(uuid.uuid4())
    for path in (f"/submit/org%2F/baseline/1/{doc}", f"/submit/{APP}/baseline/1/{doc}%2F",
                 f"/submit/{APP}%2F%2Fbaseline/1/{doc}", f"//submit/{APP}/baseline%2f/1/{doc}",
                 f"/submit/{APP}/baseline/1", f"//submit/{APP}//baseline/1//", f"/submit/{APP}/baseline/1/{doc}/x",
                 f"/submit/{APP}%2Fbaseline/1/{doc}", f"/submit/{APP}%2fbaseline/1/{doc}?x=%2F"):
        status, answer, _ = send(edge, path, body)
        assert (status, answer["error_type"]) == (404, "not_found"), path
    status, answer, _ = send(edge, f"/submit//../baseline/1/{doc}", body)
    assert (status, answer["error_type"]) == (400, "uri")
    assert raw_docs(edge) == before


def test_a_percent_2f_in_the_query_string_alone_is_no_escaped_slash(edge):
    """Only the path as sent is looked at for a %2F: one in the query string leaves a clean path,
    and a path of merged slashes, taken (both stored)."""
    ping = orjson.dumps(make_ping(CLIENT))
    clean, merged = str(uuid.uuid4()), str(uuid.uuid4())
    for path in (f"/submit/{APP}/baseline/1/{clean}?x=%2F", f"//submit/{APP}/baseline/1/{merged}?x=a%2fb"):
        status, answer, _ = send(edge, path, gzip.compress(ping))
        assert (status, answer) == (200, {}), (path, answer)
    assert stored(edge, "baseline", clean)[1] == ping and stored(edge, "baseline", merged)[1] == ping


# --- 2. header values that are not ASCII -----------------------------------------------------------

def test_header_values_are_stored_as_the_client_wrote_them(edge):
    """Before: X-Debug-ID `café-тест` (UTF-8) was stored as `cafÃ©-Ñ\\x82ÐµÑ\\x81Ñ\\x82` in the raw object,
    metadata.header.x_debug_id and at /debug. Bytes that are not UTF-8 stay one character each
    (latin-1), so nothing is lost."""
    doc = str(uuid.uuid4())
    headers = {"X-Debug-ID": "café-тест".encode(), "X-Source-Tags": "automation,тест".encode(),
               "User-Agent": b"Caf\xe9/1.0 (\xff)", "X-Telemetry-Agent": "Glean/71.0.0 (python on Linux)"}
    status, answer, _ = send(edge, submit_path("baseline", doc), gzip.compress(orjson.dumps(make_ping(CLIENT))),
                             headers)
    assert status == 200, answer
    meta, _ = stored(edge, "baseline", doc)
    assert meta["headers"]["x_debug_id"] == "café-тест"
    assert meta["headers"]["x_source_tags"] == "automation,тест"
    assert meta["headers"]["user_agent"] == "Café/1.0 (ÿ)"
    assert meta["headers"]["user_agent"].encode("latin-1") == b"Caf\xe9/1.0 (\xff)"
    assert meta["headers"]["x_telemetry_agent"] == "Glean/71.0.0 (python on Linux)"
    if edge.kind == "serve":
        assert edge.wait_rows(f"SELECT count(*) FROM {DATASET}.baseline_v1 WHERE document_id = '{doc}'", 1) == 1
        assert edge.query(f"SELECT metadata.header.x_debug_id, metadata.header.x_source_tags, "
                          f"metadata.header.parsed_x_source_tags, metadata.header.user_agent "
                          f"FROM {DATASET}.baseline_v1 WHERE document_id = '{doc}'")[1] == [
            ("café-тест", "automation,тест", ["automation", "тест"], "Café/1.0 (ÿ)")]
        # not a valid tag ([A-Za-z0-9-]{1,20}): listed under _invalid, with the value it carried
        conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=20)
        conn.request("GET", "/debug/api/tags/_invalid")
        listed = json.loads(conn.getresponse().read())
        conn.close()
        assert [(p["tag"], p["document_id"]) for p in listed["pings"]] == [("café-тест", doc)]


def test_the_header_limit_counts_bytes_as_sent(edge):
    """GLEANPIPE_MAX_HEADER_BYTES (1024) counts the bytes on the wire, not the characters of the
    decoded text: 512 × é (1024 bytes) is kept, one byte more is a 431 with a record."""
    ok, over = str(uuid.uuid4()), str(uuid.uuid4())
    body = gzip.compress(orjson.dumps(make_ping(CLIENT)))
    assert send(edge, submit_path("baseline", ok), body, {"User-Agent": ("é" * 512).encode()})[0] == 200
    assert stored(edge, "baseline", ok)[0]["headers"]["user_agent"] == "é" * 512
    status, answer, _ = send(edge, submit_path("baseline", over), body, {"User-Agent": ("é" * 512 + "a").encode()})
    assert (status, answer) == (431, {"error_type": "header_too_large",
                                      "error_message": "User-Agent header is over 1024 bytes (GLEANPIPE_MAX_HEADER_BYTES)"})
    [record] = [r for r in records(edge, "header_too_large") if r["document_id"] == over]
    assert record["headers"]["user_agent"] == "é" * 512 + "a"
    assert stored(edge, "baseline", over, wait=False) is None


# --- 3. a Content-Encoding other than gzip -----------------------------------------------------------

@pytest.mark.parametrize("encoding, encode", [
    ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some clients send "deflate"
    ("br", lambda b: b"\x1b\xe6\x02\x00" + zlib.compress(b)),  # bytes for a brotli body (no brotli module here)
    ("gzip, br", zlib.compress),
])
def test_a_content_encoding_other_than_gzip_says_so(edge, encoding, encode):
    """Before: 400 "body is not UTF-8 text: byte 0x9c at offset 1", which did not say that only
    gzip is taken."""
    doc = str(uuid.uuid4())
    body = encode(orjson.dumps(make_ping(CLIENT)))
    status, answer, _ = send(edge, submit_path("baseline", doc), body, {"Content-Encoding": encoding})
    message = (f'Content-Encoding "{encoding}" is not supported: gleanpipe takes a gzip body '
               "(Content-Encoding: gzip) or plain JSON")
    assert (status, answer) == (400, {"error_type": "content_encoding", "error_message": message})
    [record] = [r for r in records(edge, "content_encoding") if r["document_id"] == doc]
    assert (record["status"], record["error_message"], record["content_encoding"]) == (400, message, encoding)
    assert record["body_bytes_kept"] == len(body)
    assert stored(edge, "baseline", doc, wait=False) is None


def test_what_is_json_or_gzip_is_taken_whatever_the_content_encoding_says(edge):
    """Gzip goes by its magic bytes, so a plain JSON body under another Content-Encoding, gzip
    among them, is still a ping, and so is a gzip body under another."""
    ping = orjson.dumps(make_ping(CLIENT))
    plain, gzipped, labelled = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    assert send(edge, submit_path("baseline", plain), ping, {"Content-Encoding": "br"})[0] == 200
    assert send(edge, submit_path("baseline", gzipped), gzip.compress(ping), {"Content-Encoding": "deflate"})[0] == 200
    assert send(edge, submit_path("baseline", labelled), ping, {"Content-Encoding": "gzip"})[0] == 200
    assert stored(edge, "baseline", plain)[1] == ping and stored(edge, "baseline", gzipped)[1] == ping
    assert stored(edge, "baseline", labelled)[1] == ping


NOT_GZIP = "Content-Encoding says gzip, but the body is neither gzip nor plain JSON: it starts with "


ZLIB = " (a zlib header: zlib/deflate data, not gzip)"


@pytest.mark.parametrize("encoding, encode, starts, note", [
    ("gzip", zlib.compress, "78 9c", ZLIB),
    ("x-gzip", lambda b: zlib.compress(b, 9), "78 da", ZLIB),
    ("gzip", lambda b: b"\x1f{}", "1f 7b 7d", ""),  # half the magic
    ("gzip", lambda b: b"hello world", "68 65 6c 6c", ""),
    ("identity, gzip", lambda b: b"\xff", "ff", ""),
    ("GZIP", zlib.compress, "78 9c", ZLIB),  # coding names are case-insensitive (RFC 9110, 8.4.1)
    ("gzip", lambda b: b"x", "78", ""),  # the first byte of a zlib header, alone: no header
    ("gzip", lambda b: b"\x88\x1c\0\0", "88 1c 00 00", ""),  # check bits right, window over 32 KiB: not zlib
], ids=["zlib", "zlib-x-gzip", "half-gzip-magic", "text", "one-byte", "zlib-upper-case", "one-zlib-byte",
        "window-too-large"])
def test_a_body_that_is_not_gzip_under_content_encoding_gzip_says_so(edge, encoding, encode, starts, note):
    """Before: zlib bytes (what zlib.compress gives, or a client's "deflate") sent as gzip got 400
    "body is not UTF-8 text: byte 0x9c at offset 1", which named neither gzip nor what came."""
    doc = str(uuid.uuid4())
    body = encode(orjson.dumps(make_ping(CLIENT)))
    status, answer, _ = send(edge, submit_path("baseline", doc), body, {"Content-Encoding": encoding})
    shown = " ".join(f"{byte:02x}" for byte in body[:4])  # the first 4 bytes
    assert shown.startswith(starts)
    message = f"{NOT_GZIP}{shown}{note}, where gzip starts with 1f 8b"
    assert (status, answer) == (400, {"error_type": "decompress", "error_message": message})
    [record] = [r for r in records(edge, "decompress") if r["document_id"] == doc]
    assert (record["status"], record["error_message"], record["content_encoding"]) == (400, message, encoding)
    assert base64.b64decode(record["body_base64"]) == body and record["body_bytes_kept"] == len(body)
    assert stored(edge, "baseline", doc, wait=False) is None


def test_broken_json_under_content_encoding_gzip_is_still_a_json_error(edge):
    """A body that begins as JSON does, broken, gets the JSON error under any Content-Encoding:
    it was meant as plain JSON, which is taken under `Content-Encoding: gzip`."""
    for body in (b' \n{"ping_info": ', b"[1, ", b'\t{"ping_info": '):  # JSON's whitespace: space, \n, \r, \t
        doc = str(uuid.uuid4())
        status, answer, _ = send(edge, submit_path("baseline", doc), body, {"Content-Encoding": "gzip"})
        assert (status, answer["error_type"]) == (400, "json"), body
        assert answer["error_message"].startswith("body is not valid JSON: ")


# --- 4. gzip followed by zero padding ----------------------------------------------------------------

@pytest.mark.parametrize("members, padding", [(1, 8), (1, 10_000), (2, 8), (2, 10_000)])
def test_nul_padding_after_the_gzip_stream_is_ignored(edge, members, padding):
    """GNU gzip ignores trailing zeros (tape or block padding). Before: 400 "trailing bytes after
    the gzip stream". 10,000 bytes of padding span several of _members' feed steps."""
    doc = str(uuid.uuid4())
    ping = orjson.dumps(make_ping(CLIENT, metrics={"counter": {"toolbox.launch_count": 2}}))
    half = len(ping) // 2
    body = (gzip.compress(ping) if members == 1 else gzip.compress(ping[:half]) + gzip.compress(ping[half:]))
    status, answer, _ = send(edge, submit_path("baseline", doc), body + b"\0" * padding)
    assert status == 200, answer
    assert stored(edge, "baseline", doc)[1] == ping


# Named ids, and a gzip member with no time in it: the test ids are the same in every pytest-xdist worker.
@pytest.mark.parametrize("tail", [b"\0\0\0x", b"x\0\0", b"\0" * 8 + gzip.compress(b"{}", mtime=0), b"\x1f"],
                         ids=["nul-then-byte", "byte-then-nul", "nul-then-gzip-member", "half-gzip-magic"])
def test_other_bytes_after_the_gzip_stream_stay_a_400(edge, tail):
    doc = str(uuid.uuid4())
    status, answer, _ = send(edge, submit_path("baseline", doc), gzip.compress(orjson.dumps(make_ping(CLIENT))) + tail)
    assert (status, answer["error_type"]) == (400, "decompress")
    assert answer["error_message"] == "trailing bytes after the gzip stream"
    [record] = [r for r in records(edge, "decompress") if r["document_id"] == doc]
    assert record["status"] == 400
    assert stored(edge, "baseline", doc, wait=False) is None


# --- 5. JSON nested deeper than nesting.MAX_JSON_DEPTH (64 levels) ---------------------------------------

def nested(levels: int, leaf=7):
    """A value ``levels`` containers deep: lists, with a dict every tenth level, ``leaf`` at the bottom."""
    value = leaf
    for i in range(levels):
        value = {"d": value} if i % 10 == 9 else [value]
    return value


def nested_path(levels: int, steps: int | None = None) -> str:
    """The path into ``nested(levels)`` from its top, ``steps`` containers down (all the way: to the innermost)."""
    steps = levels - 1 if steps is None else steps
    return "".join(".d" if i % 10 == 9 else "[0]" for i in reversed(range(levels - steps, levels)))


def object_ping(levels: int) -> dict:
    """A valid ping whose JSON nests ``levels`` deep, in an object metric (the ping, metrics and
    metrics.object are 3 of them)."""
    return make_ping(CLIENT, metrics={"object": {"toolbox.deep": nested(levels - 3)}})


def compact(doc) -> bytes:
    """JSON as the SDK writes it (with json: orjson writes at most 254 levels)."""
    return json.dumps(doc, separators=(",", ":")).encode()


def too_deep(where: str) -> str:
    shown = where if len(where) <= 100 else where[:97] + "..."
    return f"body nests JSON deeper than 64 levels, the most a ping may have (MAX_JSON_DEPTH): level 65 begins at {shown}"


def test_json_nested_64_levels_is_taken_and_loads_and_65_is_a_400(edge):
    """63 and 64 levels are taken and load; 65 is a 400 with its reason kept, though the schema
    takes it and it would have loaded (255 levels would not have: stored with 200, never loaded).
    Each has over 64 brackets, so the edge's check runs whole (orjson.dumps in padding), not only
    its count of brackets."""
    for levels in (63, 64):
        body = compact(object_ping(levels))
        assert body.count(b"[") + body.count(b"{") > 64
        doc = str(uuid.uuid4())
        assert send(edge, submit_path("baseline", doc), gzip.compress(body))[:2] == (200, {})
        assert stored(edge, "baseline", doc)[1] == body
        if edge.kind == "serve":  # its row holds the value whole
            where = f"FROM {DATASET}.baseline_v1 WHERE document_id = '{doc}'"
            assert edge.wait_rows(f"SELECT count(*) {where}", 1) == 1
            [(value,)] = edge.query(f"SELECT metrics.object.toolbox_deep {where}")[1]
            assert json.loads(value) == nested(levels - 3)
    doc, body = str(uuid.uuid4()), gzip.compress(compact(object_ping(65)))
    message = too_deep("metrics.object.toolbox.deep" + nested_path(62))
    assert send(edge, submit_path("baseline", doc), body)[:2] == (400, {"error_type": "json", "error_message": message})
    [record] = [r for r in records(edge, "json") if r["document_id"] == doc]
    assert (record["error_message"], record["status"], record["body_bytes_kept"]) == (message, 400, len(body))
    assert stored(edge, "baseline", doc, wait=False) is None


PING_OPEN = compact(make_ping(CLIENT))[:-1]  # a ping with its closing } left off
PAST_ORJSON = PING_OPEN + b',"x":' + b"[" * 1100 + b"]" * 1100 + b"}"


@pytest.mark.parametrize("body, message", [
    # invalid (x is no field of a ping) and 991 levels: a 500 before, from the schema error's repr()
    # of the ping (a RecursionError; under serve from 967 levels)
    (PING_OPEN + b',"x":' + b"[" * 990 + b"]" * 990 + b"}", too_deep("x" + "[0]" * 63)),
    # over 64 KiB, invalid and 300 levels: a 500 before (jsonschema-rs: "Recursion limit reached")
    (compact({**make_ping(CLIENT, metrics={"string": {"toolbox.pad": "p" * 70_000}}), "x": nested(299)}),
     too_deep("x" + nested_path(299, 63))),
    # past the 1024 levels orjson reads: before, "body is not valid JSON: depth limit exceeded: line 1 column
    # 1439 (char 1438)", which named no limit
    (PAST_ORJSON, "body nests JSON deeper than 64 levels, the most a ping may have (MAX_JSON_DEPTH): over 1024 "
                  # orjson's position: just past the [ that opens level 1025 (the ping's { is level 1)
                  f"levels at char {PAST_ORJSON.index(b'[' * 1100) + 1023 + 1}"),
], ids=["990 levels, invalid", "300 levels in 64 KiB", "1100 levels"])
def test_json_nested_far_deeper_is_the_same_400_never_a_500(edge, body, message):
    doc, sent = str(uuid.uuid4()), gzip.compress(body)
    status, answer, _ = send(edge, submit_path("baseline", doc), sent)
    assert (status, answer) == (400, {"error_type": "json", "error_message": message})
    [record] = [r for r in records(edge, "json") if r["document_id"] == doc]
    assert (record["error_message"], record["status"]) == (message, 400)
    assert base64.b64decode(record["body_base64"]) == sent
    assert stored(edge, "baseline", doc, wait=False) is None
    assert "Traceback" not in edge.read_log()
