"""submit, in process, through functions-framework's own test client and functions/main.py."""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import orjson
import pytest
from functions_framework import create_app

from gleanpipe import rawobject
from gleanpipe.storage.local import LocalStore

from conftest import APP, ROOT, SDK_HEADERS, gz, make_ping, submit_path

CLIENT = "3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


@pytest.fixture
def client(fn_env):
    app = create_app(target="submit", source=str(ROOT / "functions" / "main.py"))
    return app.test_client()


@pytest.fixture
def local_store(fn_env):
    return LocalStore(fn_env / "store")


def raw_keys(store):
    return list(store.list("raw/"))


def error_records(store):
    return [json.loads(store.get(k)) for k in store.list("errors/")]


def test_accepts_gzip_ping_and_stores_exact_payload_with_metadata(client, local_store):
    payload = orjson.dumps(make_ping(CLIENT, metrics={"counter": {"toolbox.launch_count": 3}}))
    doc_id = "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
    headers = {**SDK_HEADERS, "X-Debug-ID": "my-tag", "X-Source-Tags": "automation,ci", "User-Agent": "curl/8"}
    resp = client.post(submit_path("baseline", doc_id), data=gzip.compress(payload), headers=headers)
    assert resp.status_code == 200
    [key] = raw_keys(local_store)
    assert key == f"raw/{APP}/baseline/1/{doc_id}.json"
    meta, stored = rawobject.decode(local_store.get(key))
    assert stored == payload  # exactly as received, decompressed
    assert meta["document_id"] == doc_id and meta["doc_type"] == "baseline" and meta["app_id"] == APP
    assert meta["headers"]["x_debug_id"] == "my-tag"
    assert meta["headers"]["x_source_tags"] == "automation,ci"
    assert meta["headers"]["x_telemetry_agent"] == "Glean/71.0.0 (python on Linux)"
    assert meta["headers"]["user_agent"] == "curl/8"
    assert meta["headers"]["date"] == "Mon, 23 Nov 2026 08:00:00 GMT"
    assert meta["headers"]["content_length"] == str(len(gzip.compress(payload)))
    assert "remote_addr" not in json.dumps(meta) and "127.0.0.1" not in json.dumps(meta)


def test_submission_timestamp_is_server_utc(client, local_store):
    from datetime import datetime, timezone

    before = datetime.now(timezone.utc)
    assert client.post(submit_path(), data=gz(make_ping(CLIENT)), headers=SDK_HEADERS).status_code == 200
    meta, _ = rawobject.decode(local_store.get(raw_keys(local_store)[0]))
    ts = datetime.fromisoformat(meta["submission_timestamp"].replace("Z", "+00:00"))
    assert before <= ts <= datetime.now(timezone.utc)


def stored_as(local_store, app: str, doc_type: str, doc_id: str) -> tuple[dict, bytes]:
    """The metadata and payload stored for one ping, found under the key its path names."""
    key = f"raw/{app}/{doc_type}/1/{doc_id}.json"
    assert key in raw_keys(local_store)
    meta, payload = rawobject.decode(local_store.get(key))
    assert (meta["app_id"], meta["doc_type"], meta["version"], meta["document_id"], meta["key"]) == \
        (app, doc_type, "1", doc_id, key)
    return meta, payload


def as_sent(doc) -> bytes:
    """JSON as a client might write it (indented, not orjson's compact form): a payload stored
    re-serialised instead of as received would differ."""
    return json.dumps(doc, indent=1).encode()


def test_plain_json_and_put_are_accepted(client, local_store):
    doc_id = "5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    payload = as_sent(make_ping(CLIENT, seq=4))
    resp = client.put(submit_path("metrics", doc_id), data=payload, headers={"Content-Type": "application/json"})
    assert resp.status_code == 200
    assert len(raw_keys(local_store)) == 1
    meta, stored = stored_as(local_store, APP, "metrics", doc_id)
    assert stored == payload and meta["content_encoding"] is None


def test_gzip_detected_by_magic_bytes_not_header(client, local_store):
    # gzip body without a Content-Encoding header, and a plain body that claims gzip
    zipped_id, plain_id = "6b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e", "7c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f"
    zipped, plain = as_sent(make_ping(CLIENT, seq=1)), as_sent(make_ping(CLIENT, seq=2))
    assert client.post(submit_path("baseline", zipped_id), data=gzip.compress(zipped), headers={}).status_code == 200
    assert client.post(submit_path("baseline", plain_id), data=plain,
                       headers={"Content-Encoding": "gzip"}).status_code == 200
    assert len(raw_keys(local_store)) == 2
    meta, stored = stored_as(local_store, APP, "baseline", zipped_id)
    assert stored == zipped and meta["content_encoding"] is None  # decompressed, as it was before gzip
    meta, stored = stored_as(local_store, APP, "baseline", plain_id)
    assert stored == plain and meta["content_encoding"] == "gzip"  # the header kept as sent, the body as is


def test_resent_document_id_answers_200_and_writes_nothing_new(client, local_store):
    path = submit_path("baseline", "11111111-2222-4333-8444-555555555555")
    first = client.post(path, data=gz(make_ping(CLIENT, seq=1)), headers=SDK_HEADERS)
    again = client.post(path, data=gz(make_ping(CLIENT, seq=99)), headers=SDK_HEADERS)
    assert (first.status_code, again.status_code) == (200, 200)
    assert first.headers["X-Gleanpipe-Stored"] == "new" and again.headers["X-Gleanpipe-Stored"] == "duplicate"
    [key] = raw_keys(local_store)
    assert json.loads(rawobject.decode(local_store.get(key))[1])["ping_info"]["seq"] == 1
    assert len(local_store.pending(10)) == 1  # one load for one document


def test_uppercase_document_id_is_the_same_document(client, local_store):
    doc_id = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
    first = client.post(submit_path(document_id=doc_id), data=gz(make_ping(CLIENT)), headers=SDK_HEADERS)
    again = client.post(submit_path(document_id=doc_id.upper()), data=gz(make_ping(CLIENT)), headers=SDK_HEADERS)
    assert (first.status_code, again.status_code) == (200, 200)
    assert first.headers["X-Gleanpipe-Stored"] == "new" and again.headers["X-Gleanpipe-Stored"] == "duplicate"
    assert raw_keys(local_store) == [f"raw/{APP}/baseline/1/{doc_id}.json"]


def test_an_upper_case_app_id_is_the_same_app_stored_lower_case(client, local_store):
    """As the README's path table says (the Glean SDK sends app ids lower-case itself): the app id
    is stored lower-case, so `Org-Example-Toolbox` is the app `org-example-toolbox`, and a re-send
    under either spelling is a duplicate."""
    doc_id = "bbbbbbbb-bbbb-4ccc-8ddd-eeeeeeeeeeee"
    first = client.post(f"/submit/{APP.title()}/baseline/1/{doc_id}", data=gz(make_ping(CLIENT)), headers=SDK_HEADERS)
    again = client.post(submit_path(document_id=doc_id), data=gz(make_ping(CLIENT)), headers=SDK_HEADERS)
    assert APP.title() == "Org-Example-Toolbox" and (first.status_code, again.status_code) == (200, 200)
    assert first.headers["X-Gleanpipe-Stored"] == "new" and again.headers["X-Gleanpipe-Stored"] == "duplicate"
    assert raw_keys(local_store) == [f"raw/{APP}/baseline/1/{doc_id}.json"]
    assert rawobject.decode(local_store.get(raw_keys(local_store)[0]))[0]["app_id"] == APP


@pytest.mark.parametrize("path", ["/", "/submit", "/submit/a/b/1", f"/submit/{APP}/baseline/1/x/extra",
                                  "/other/a/b/1/9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "/submit/a/b/1/"])
def test_other_paths_are_404(client, local_store, path):
    resp = client.post(path, data=gz(make_ping(CLIENT)), headers=SDK_HEADERS)
    assert resp.status_code == 404
    assert resp.get_json()["error_type"] == "not_found"
    assert raw_keys(local_store) == [] and error_records(local_store) == []


@pytest.mark.parametrize("method", ["GET", "DELETE", "PATCH", "HEAD"])
def test_other_methods_are_405(client, method):
    resp = client.open(submit_path(), method=method)
    assert resp.status_code == 405
    assert resp.headers["Allow"] == "POST, PUT, OPTIONS"  # OPTIONS: the CORS preflight


BAD_SEGMENTS = [
    ("..", "baseline", "1", "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "app id"),
    (".hidden", "baseline", "1", "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "app id"),
    ("app;DROP TABLE x", "baseline", "1", "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "app id"),
    ("app\"x", "baseline", "1", "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "app id"),
    ("a" * 101, "baseline", "1", "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "app id"),
    (APP, "..", "1", "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "document type"),
    (APP, "base'line", "1", "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "document type"),
    (APP, "Baseline", "1", "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "document type"),
    (APP, "x" * 31, "1", "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "document type"),
    (APP, "baseline", "v1", "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "version"),
    (APP, "baseline", "2", "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "version 2 has no schema"),
    (APP, "baseline", "1", "not-a-uuid", "document id"),
    (APP, "baseline", "1", "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b'--", "document id"),
]


@pytest.mark.parametrize("app,doc_type,version,doc_id,named", BAD_SEGMENTS)
def test_bad_path_segments_are_400_and_kept(client, local_store, app, doc_type, version, doc_id, named):
    resp = client.post(f"/submit/{app}/{doc_type}/{version}/{doc_id}", data=gz(make_ping(CLIENT)),
                       headers=SDK_HEADERS)
    assert resp.status_code == 400
    body = resp.get_json()
    assert body["error_type"] == "uri" and named in body["error_message"]
    assert raw_keys(local_store) == []
    [record] = error_records(local_store)
    assert (record["error_type"], record["error_message"], record["status"]) == ("uri", body["error_message"], 400)
    assert gzip.decompress(base64.b64decode(record["body_base64"])) == orjson.dumps(make_ping(CLIENT))


def test_the_longest_app_id_and_document_type_are_accepted(client, local_store):
    """The limits are 100 characters of app id and 30 of document type (the README's table; one
    more of either is in BAD_SEGMENTS)."""
    app, doc_type, doc_id = "a" * 100, "x" * 30, "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
    resp = client.post(f"/submit/{app}/{doc_type}/1/{doc_id}", data=gz(make_ping(CLIENT)), headers=SDK_HEADERS)
    assert resp.status_code == 200
    assert raw_keys(local_store) == [f"raw/{app}/{doc_type}/1/{doc_id}.json"]


def test_percent_encoded_traversal_never_leaves_the_store(client, fn_env, local_store):
    resp = client.post("/submit/%2e%2e/%2e%2e/1/9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
                       data=gz(make_ping(CLIENT)), headers=SDK_HEADERS)
    assert resp.status_code == 400
    outside = [p for p in fn_env.parent.rglob("*") if fn_env not in p.parents and p != fn_env]
    assert outside == []


def test_empty_body_is_400(client, local_store):
    resp = client.post(submit_path(), data=b"", headers=SDK_HEADERS)
    assert resp.status_code == 400 and resp.get_json()["error_type"] == "empty_body"
    assert [r["error_type"] for r in error_records(local_store)] == ["empty_body"]


def test_invalid_json_is_400(client, local_store):
    resp = client.post(submit_path(), data=gz(b'{"client_info": '), headers=SDK_HEADERS)
    assert resp.status_code == 400 and resp.get_json()["error_type"] == "json"
    assert raw_keys(local_store) == []


def test_a_number_past_a_double_is_400_saying_so_not_invalid_json(client, local_store):
    """A 400-digit integer is valid JSON that orjson reads as infinity: it said "body is not valid
    JSON: number is infinity when parsed as double". No metric holds it, so the ping is refused
    (and kept in the error store), with the reason."""
    body = b'{"metrics": {"counter": {"x.c": 1' + b"0" * 400 + b"}}}"
    sent = gz(body)  # once: two gz() a second apart differ in the gzip header's time
    resp = client.post(submit_path(), data=sent, headers=SDK_HEADERS)
    assert resp.status_code == 400
    assert resp.get_json() == {"error_type": "json", "error_message": "body has a number past the range of a "
                               "64-bit float (about 1.8e308), which no Glean metric can hold, at char 32"}
    [record] = error_records(local_store)
    assert record["error_type"] == "json" and base64.b64decode(record["body_base64"]) == sent


def test_json_that_is_not_an_object_is_400(client):
    resp = client.post(submit_path(), data=gz(b"[1, 2]"), headers=SDK_HEADERS)
    assert resp.status_code == 400 and resp.get_json()["error_type"] == "schema"


def test_truncated_gzip_is_400(client, local_store):
    body = gz(make_ping(CLIENT))
    resp = client.post(submit_path(), data=body[: len(body) // 2], headers=SDK_HEADERS)
    assert resp.status_code == 400
    assert resp.get_json() == {"error_type": "decompress", "error_message": "truncated gzip body"}
    [record] = error_records(local_store)
    assert base64.b64decode(record["body_base64"]) == body[: len(body) // 2]


def test_corrupt_gzip_is_400(client):
    body = bytearray(gz(make_ping(CLIENT)))
    body[12:20] = b"\xff" * 8
    resp = client.post(submit_path(), data=bytes(body), headers=SDK_HEADERS)
    assert resp.status_code == 400 and resp.get_json()["error_type"] == "decompress"


def test_gzip_bomb_is_413_without_inflating_it(client, local_store):
    bomb = gzip.compress(b"{" + b" " * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB inflated
    assert len(bomb) < 1024 * 1024  # passes the wire limit...
    resp = client.post(submit_path(), data=bomb, headers=SDK_HEADERS)
    assert resp.status_code == 413  # ...but not the 8 MiB payload limit
    assert resp.get_json()["error_type"] == "payload_too_large"
    [record] = error_records(local_store)
    assert record["error_type"] == "payload_too_large" and record["body_bytes_kept"] == len(bomb)


def test_decompress_never_holds_more_than_the_limit():
    import tracemalloc

    from gleanpipe.http_edge import Rejected, decompress

    bomb = gzip.compress(b"0" * (32 * 1024 * 1024))
    two_members = bomb + bomb  # the general path (_members), which feeds the body a step at a time
    for body, limit, bound in ((bomb, 1000, 1 << 20), (two_members, 4 << 20, 4 * (4 << 20))):
        tracemalloc.start()
        try:
            with pytest.raises(Rejected) as exc:
                decompress(body, limit)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert exc.value.status == 413
        assert peak < bound, (limit, peak)  # inflated whole: 32 MiB (64 MiB for the two members)
    assert decompress(gzip.compress(b"a") + gzip.compress(b"b"), 10) == b"ab"  # multi-member gzip


def test_many_gzip_members_and_members_across_the_feed_step():
    """Several members are fed GZIP_STEP bytes at a time (52,000 tiny members in 1 MiB took 0.7 s
    when each member copied the rest of the body; 0.05 s now): what comes out must not change."""
    import os

    from gleanpipe.http_edge import GZIP_STEP, Rejected, decompress

    assert decompress(gzip.compress(b"") * 20_000 + gzip.compress(b'{"a":1}'), 100) == b'{"a":1}'
    noise = os.urandom(3 * GZIP_STEP)  # does not compress: each member spans several steps
    parts = [noise, b"-", noise[::-1], b"z" * 50_000]
    assert decompress(b"".join(gzip.compress(p) for p in parts), 10**6) == b"".join(parts)
    with pytest.raises(Rejected) as exc:  # the limit holds across members, inside the last one
        decompress(b"".join(gzip.compress(p) for p in parts), len(noise) * 2 + 1 + 100)
    assert exc.value.status == 413
    with pytest.raises(Rejected) as exc:  # a member cut short after others
        decompress(gzip.compress(noise) + gzip.compress(noise)[:-5], 10**6)
    assert (exc.value.status, exc.value.message) == (400, "truncated gzip body")
    with pytest.raises(Rejected) as exc:
        decompress(gzip.compress(b"a") + gzip.compress(b"b") + b"junk", 10)
    assert exc.value.message == "trailing bytes after the gzip stream"


@pytest.mark.parametrize("body, message", [
    (b'{"a": "\xff"}', "body is not UTF-8 text: byte 0xff at offset 7 (invalid start byte)"),
    ('{"a": 1}'.encode("utf-16"), "body is not UTF-8 text: byte 0xff at offset 0 (invalid start byte)"),
    (b'{"a": "\xc3"}', "body is not UTF-8 text: byte 0xc3 at offset 7 (invalid continuation byte)"),
])
def test_a_body_that_is_not_utf8_says_so(client, body, message):
    """Before: orjson's "str is not valid UTF-8: surrogates not allowed: line 1 column 1", for a
    body with neither a str nor a surrogate in it."""
    resp = client.post(submit_path(), data=body, headers={"Content-Type": "application/json"})
    assert (resp.status_code, resp.get_json()) == (400, {"error_type": "json", "error_message": message})


def test_oversized_body_is_413_and_kept_bounded(client, local_store):
    body = b"x" * (1024 * 1024 + 1)
    resp = client.post(submit_path(), data=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and resp.get_json()["error_type"] == "body_too_large"
    [record] = error_records(local_store)
    assert record["body_truncated"] is True
    assert len(base64.b64decode(record["body_base64"])) <= 1024 * 1024


def test_oversized_plain_payload_is_413(client, fn_env, monkeypatch):
    from gleanpipe import functions

    monkeypatch.setenv("GLEANPIPE_MAX_PAYLOAD_BYTES", "100")
    functions.submit_handler.cache_clear()
    resp = client.post(submit_path(), data=orjson.dumps(make_ping(CLIENT)), headers={})
    assert resp.status_code == 413 and resp.get_json()["error_type"] == "payload_too_large"


def test_long_uri_is_414(client):
    resp = client.post("/submit/" + "a" * 600, data=b"{}", headers={})
    assert resp.status_code == 414


def test_oversized_header_is_431(client, local_store):
    resp = client.post(submit_path(), data=gz(make_ping(CLIENT)),
                       headers={**SDK_HEADERS, "X-Source-Tags": "t" * 1025})
    assert resp.status_code == 431
    assert error_records(local_store)[0]["error_type"] == "header_too_large"


def test_schema_errors_are_all_collected_compactly(client, local_store):
    ping = make_ping(CLIENT, metrics={"counter": {"toolbox.a": "x", "toolbox.b": 1.5}, "bogus_type": {}})
    del ping["client_info"]["os"]
    resp = client.post(submit_path(), data=gz(ping), headers=SDK_HEADERS)
    assert resp.status_code == 400
    body = resp.get_json()
    assert body["error_type"] == "schema"
    msg = body["error_message"]
    for fragment in ("client_info: 'os' is a required property", "metrics.counter.toolbox.a:",
                     "metrics.counter.toolbox.b:", "bogus_type"):
        assert fragment in msg
    assert len(msg) <= 1024
    assert raw_keys(local_store) == []


def test_a_ping_named_events_stream_is_stored(client, local_store):
    """Not loadable (its table would be the per-event table: a load error), but not refused: a 4xx
    made the Glean SDK delete it for good."""
    doc_id = "8d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a"
    payload = as_sent(make_ping(CLIENT, events=[{"timestamp": 0, "category": "toolbox", "name": "opened"}]))
    resp = client.post(submit_path("events-stream", doc_id), data=gzip.compress(payload), headers=SDK_HEADERS)
    assert resp.status_code == 200
    assert len(raw_keys(local_store)) == 1
    assert stored_as(local_store, APP, "events-stream", doc_id)[1] == payload


def test_ping_without_info_sections_is_accepted(client, local_store):
    doc_id = "9e5f6a7b-8c9d-4e0f-9a1b-2c3d4e5f6a7b"
    payload = as_sent({"metrics": {"counter": {"toolbox.x": 1}}})
    resp = client.post(submit_path("no-info", doc_id), data=gzip.compress(payload), headers=SDK_HEADERS)
    assert resp.status_code == 200
    assert len(raw_keys(local_store)) == 1
    assert stored_as(local_store, APP, "no-info", doc_id)[1] == payload


def test_store_failure_is_503_so_the_sdk_retries(client, fn_env, local_store):
    # A real fault: the app's folder in the store is a file, so the write cannot happen.
    (fn_env / "store" / "raw").mkdir(parents=True, exist_ok=True)
    (fn_env / "store" / "raw" / APP).write_text("not a folder")
    resp = client.post(submit_path(), data=gz(make_ping(CLIENT)), headers=SDK_HEADERS)
    assert resp.status_code == 503
    # why (a folder, a key) is for the operator's log, not for whoever sent the ping
    assert resp.get_json() == {"error_type": "store_unavailable",
                               "error_message": "could not store the ping, retry later (the server's log says why)"}
    assert resp.headers["Retry-After"] == "5"


def test_error_store_failure_is_503_not_a_silent_400(client, fn_env, local_store):
    (fn_env / "store" / "errors").write_text("not a folder")
    resp = client.post(submit_path(), data=gz(b"not json"), headers=SDK_HEADERS)
    assert resp.status_code == 503
    assert resp.get_json() == {"error_type": "store_unavailable", "error_message":
                               "could not record the rejection, retry later (the server's log says why)"}


def test_unsafe_keys_are_refused_by_the_store(local_store):
    for key in ("../x", "raw/../../x", "/etc/passwd", ".inbox/x", "raw/a b"):
        with pytest.raises(ValueError):
            local_store.put_new(key, b"x")


def test_zlib_stream_is_not_gzip(client):
    resp = client.post(submit_path(), data=zlib.compress(orjson.dumps(make_ping(CLIENT))), headers=SDK_HEADERS)
    assert resp.status_code == 400 and resp.get_json()["error_type"] == "decompress"
    assert resp.get_json()["error_message"].startswith("Content-Encoding says gzip, but the body is neither gzip "
                                                       "nor plain JSON: it starts with 78 9c ")


def test_error_record_keeps_at_most_max_error_bytes(client, fn_env, monkeypatch, local_store):
    from gleanpipe import functions

    monkeypatch.setenv("GLEANPIPE_MAX_ERROR_BYTES", "100")
    functions.submit_handler.cache_clear()
    body = b"{" + b"x" * 499
    resp = client.post(submit_path(), data=body, headers={})
    assert resp.status_code == 400
    [record] = error_records(local_store)
    assert base64.b64decode(record["body_base64"]) == body[:100]
    assert record["body_truncated"] is True and record["body_bytes_kept"] == 100


def test_limits_are_settings(fn_env, monkeypatch, client):
    from gleanpipe import functions

    monkeypatch.setenv("GLEANPIPE_MAX_WIRE_BYTES", "50")
    functions.submit_handler.cache_clear()
    assert client.post(submit_path(), data=b"x" * 51, headers={}).status_code == 413
    monkeypatch.setenv("GLEANPIPE_MAX_URI_BYTES", "20")
    functions.submit_handler.cache_clear()
    assert client.post(submit_path(), data=b"{}", headers={}).status_code == 414


@pytest.mark.parametrize("env", [{"GLEANPIPE_MAX_WIRE_BYTES": "1MB"}, {"GLEANPIPE_STORE_URL": "ftp://somewhere"}])
def test_a_bad_setting_in_the_function_is_a_503_the_sdk_retries(fn_env, monkeypatch, client, caplog, env):
    """Before: the framework's HTML 500 page. The ping is fine, so it must not be a 4xx; the reason
    goes to the log, not to the client."""
    from gleanpipe import functions

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    functions.submit_handler.cache_clear()
    resp = client.post(submit_path(), data=gz(make_ping(CLIENT)), headers=SDK_HEADERS)
    assert (resp.status_code, resp.get_json()) == (503, {
        "error_type": "misconfigured",
        "error_message": "the server cannot take pings now (see its log), retry later"})
    assert resp.headers["Retry-After"] == "60"  # a fix needs a redeploy: no point in asking sooner
    [logged] = [r.getMessage() for r in caplog.records if r.name == "gleanpipe.functions"]
    assert logged.startswith("submit cannot take pings until its settings are fixed: ")
    assert list(env)[0] in logged or "ftp://somewhere" in logged
    assert not (fn_env / "store").exists()  # nothing written
    for name in env:
        monkeypatch.delenv(name)
    functions.submit_handler.cache_clear()  # fixed (a redeploy): the next try is stored
    assert client.post(submit_path(), data=gz(make_ping(CLIENT)), headers=SDK_HEADERS).status_code == 200


def test_bad_setting_is_a_clear_error():
    from gleanpipe.config import Config

    with pytest.raises(ValueError, match="GLEANPIPE_MAX_WIRE_BYTES must be a whole number"):
        Config.from_env(environ={"GLEANPIPE_MAX_WIRE_BYTES": "1MB"})
    with pytest.raises(ValueError, match="GLEANPIPE_PORT must be positive"):
        Config.from_env(environ={"GLEANPIPE_PORT": "-1"})
    cfg = Config.from_env(environ={})
    assert (cfg.max_wire_bytes, cfg.max_payload_bytes, cfg.port) == (1024 * 1024, 8 * 1024 * 1024, 8080)
    assert cfg.store_url == "file://data/store" and cfg.warehouse_url == "duckdb://data/warehouse.duckdb"


def test_store_recovers_when_a_folder_is_removed_under_it(local_store):
    import shutil

    assert local_store.put_new("raw/a/b/1/x.json", b"1")
    shutil.rmtree(local_store.root / "raw" / "a")
    assert local_store.put_new("raw/a/b/1/y.json", b"2")
    assert local_store.get("raw/a/b/1/y.json") == b"2"
    assert [k for _, k in local_store.pending(10)] == ["raw/a/b/1/x.json", "raw/a/b/1/y.json"]


def test_failed_write_leaves_no_inbox_receipt(local_store):
    import shutil

    from gleanpipe.storage import StoreError

    assert local_store.put_new("raw/a/b/1/x.json", b"1")
    local_store.ack([r for r, _ in local_store.pending(10)])
    shutil.rmtree(local_store.root / "raw" / "a" / "b")
    (local_store.root / "raw" / "a" / "b").write_text("not a folder")  # the link into place fails
    with pytest.raises(StoreError, match="cannot write raw/a/b/1/y.json"):
        local_store.put_new("raw/a/b/1/y.json", b"2")
    assert local_store.pending(10) == []
    assert list((local_store.root / ".tmp").iterdir()) == []


def test_error_record_keeps_a_non_ascii_path_as_written(client, local_store):
    """WSGI gives a path's bytes one character each (latin-1): the record said /submit/cafÃ©/...
    for /submit/café/... (bytes that are not UTF-8, over real HTTP: test_limits)."""
    path = "/submit/café/baseline/1/0b6e7c1e-7d4f-4d8a-9a57-3c2d5c0a1b2c"
    resp = client.post(path, data=gz(make_ping()), headers=SDK_HEADERS)
    assert resp.status_code == 400 and resp.get_json()["error_type"] == "uri"
    assert [r["uri"] for r in error_records(local_store)] == [path]


def test_error_record_key_is_errors_day_type_uuid(client, local_store):
    """README: a rejection is kept as errors/<YYYY-MM-DD>/<error_type>/<uuid>.json (status parses the type from it)."""
    import re
    import uuid

    resp = client.post(submit_path(), data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    [key] = list(local_store.list("errors/"))
    record = json.loads(local_store.get(key))
    day = record["submission_timestamp"][:10]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", day)
    match = re.fullmatch(rf"errors/{day}/json/([0-9a-f-]{{36}})\.json", key)
    assert match, key
    assert str(uuid.UUID(match.group(1))) == match.group(1)


def test_a_plain_payload_one_byte_over_its_limit_is_413(client, fn_env, monkeypatch, local_store):
    """A plain (not gzip) body of exactly GLEANPIPE_MAX_PAYLOAD_BYTES is taken; one byte more is 413
    (the payload limit set below the wire limit)."""
    from gleanpipe import functions

    monkeypatch.setenv("GLEANPIPE_MAX_PAYLOAD_BYTES", "100")
    functions.submit_handler.cache_clear()
    at = client.post(submit_path(), data=b"{}" + b" " * 98, headers={"Content-Type": "application/json"})
    assert at.status_code == 200
    over = client.post(submit_path(), data=b"{}" + b" " * 99, headers={"Content-Type": "application/json"})
    assert (over.status_code, over.get_json()) == (413, {
        "error_type": "payload_too_large", "error_message": "payload is over 100 bytes (GLEANPIPE_MAX_PAYLOAD_BYTES)"})
    assert len(raw_keys(local_store)) == 1


def test_a_client_disconnect_under_werkzeug_is_an_incomplete_body(client, local_store):
    """Under functions-framework a body that ends before its Content-Length makes werkzeug's
    LimitedStream raise ClientDisconnected (not an OSError): 400 incomplete_body, not body_framing."""
    import io

    body = gz(make_ping(CLIENT))
    resp = client.post(submit_path(), input_stream=io.BytesIO(body), headers=SDK_HEADERS,
                       environ_overrides={"CONTENT_LENGTH": str(len(body) + 1)})
    assert (resp.status_code, resp.get_json()) == (400, {
        "error_type": "incomplete_body", "error_message": f"the connection ended after {len(body)} bytes of the body"})
    [record] = error_records(local_store)
    assert (record["error_type"], record["body_bytes_kept"]) == ("incomplete_body", len(body))
    assert raw_keys(local_store) == []


def test_a_gzip_payload_of_exactly_its_limit_is_taken_in_several_members_too(client, fn_env, monkeypatch, local_store):
    """README: 413 for a payload *over* GLEANPIPE_MAX_PAYLOAD_BYTES. A gzip body of several
    members (decompress's general path, _members) whose payload is exactly the limit is taken,
    as one member and a plain body are; one byte more is 413 and kept in the error store."""
    from gleanpipe import functions

    monkeypatch.setenv("GLEANPIPE_MAX_PAYLOAD_BYTES", "100")
    functions.submit_handler.cache_clear()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    payload = b"{}" + b" " * 98
    at = client.post(submit_path(), data=gzip.compress(payload[:60]) + gzip.compress(payload[60:]), headers=headers)
    assert (at.status_code, at.headers["X-Gleanpipe-Stored"]) == (200, "new")
    [key] = raw_keys(local_store)
    assert rawobject.decode(local_store.get(key))[1] == payload
    over = client.post(submit_path(), data=gzip.compress(payload[:60]) + gzip.compress(payload[60:] + b" "),
                       headers=headers)
    assert (over.status_code, over.get_json()) == (413, {
        "error_type": "payload_too_large",
        "error_message": "payload is over 100 bytes after decompression (GLEANPIPE_MAX_PAYLOAD_BYTES)"})
    assert [r["error_type"] for r in error_records(local_store)] == ["payload_too_large"]
    assert len(raw_keys(local_store)) == 1


def test_a_bug_in_the_handler_is_not_answered_as_storage_trouble(fn_env, local_store):
    """503 means "the store failed" (its reason goes to the log in one line, the SDK retries);
    any other exception is a bug and must surface as one (the server's 500 and its traceback),
    not be taken for storage trouble. A validator that raises stands in for such a bug."""
    from gleanpipe.config import Config
    from gleanpipe.http_edge import SubmitHandler
    from gleanpipe.validation import PingValidator

    class Broken(PingValidator):
        def validate(self, doc, size=0):
            raise KeyError("a bug")

    handler = SubmitHandler(Config.from_env(), local_store, validator=Broken())
    headers = {k.lower(): v for k, v in {**SDK_HEADERS, "Content-Encoding": "gzip"}.items()}
    with pytest.raises(KeyError, match="a bug"):
        handler.handle("POST", submit_path(), headers, gz(make_ping(CLIENT)))
    assert raw_keys(local_store) == [] and error_records(local_store) == []
