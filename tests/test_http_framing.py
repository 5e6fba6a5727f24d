"""Bodies that do not arrive whole, on raw sockets, against both ways the edge runs: `gleanpipe
serve` (gunicorn, gevent workers, spool) and the `submit` function under functions-framework
(gunicorn, gthread). Both must answer the same, with the JSON error body and a kept reason, and
never a 500 or a connection held for ever."""

from __future__ import annotations

import base64
import http.client
import contextlib
import json
import selectors
import socket
import struct
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import SDK_HEADERS, ServeProcess, gz, make_ping, post, read_all, submit_path, until
from gleanpipe.config import Config
from gleanpipe.http_worker import HEAD_TIMEOUT_S
from gleanpipe.serve import KEEPALIVE_S
from test_functions_framework import start
CLIENT = "0b7c3d9e-2a4f-4b6c-8d1e-3f5a7b9c1d2e"
TIMEOUT_S = "1"  # GLEANPIPE_BODY_TIMEOUT_S for these servers


class Function:
    """`functions-framework --target=submit` on a free port, its log in a file."""

    def __init__(self, data_dir: Path, env: dict):
        self.data_dir = data_dir
        self.log_path = data_dir.parent / "function.log"
        self.proc, self.url = start("submit", data_dir.parent, env={**env, "GLEANPIPE_DATA_DIR": str(data_dir)},
                                    log=self.log_path)
        self.port = int(self.url.rsplit(":", 1)[1])

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)


EDGES = ["serve", "serve-threads", "function"]  # serve's gevent workers (spool on), its gthread ones, the function


def edge_server(kind: str, data_dir: Path, env: dict):
    """One of EDGES on ``data_dir`` with the settings ``env``, started: a ServeProcess ("serve-threads":
    GLEANPIPE_SPOOL=off) or a Function. Stop it with ``stop()``."""
    if kind == "function":
        return Function(data_dir, env)
    return ServeProcess(data_dir, env={**env, **({"GLEANPIPE_SPOOL": "off"} if kind == "serve-threads" else {})}).start()


@pytest.fixture(params=["serve", "function"])
def server(request, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {"GLEANPIPE_BODY_TIMEOUT_S": TIMEOUT_S}
    if request.param == "serve":
        srv = ServeProcess(data_dir, env=env).start()
    else:
        srv = Function(data_dir, env)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.read_log()  # each case below is handled, not crashed through


def head(path: str, length: int | None, **extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json; charset=utf-8",
             "Content-Encoding: gzip", f"X-Telemetry-Agent: {SDK_HEADERS['X-Telemetry-Agent']}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_head(sock: socket.socket, timeout: float = 20, headers: dict | None = None) -> tuple[bytes, bytes]:
    """(the response's status line and header lines, what the server sent after them so far); the
    headers (lower-case names) go into ``headers`` when given."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without an answer: {buf!r}"
        buf += chunk
    top, rest = buf.split(b"\r\n\r\n", 1)
    if headers is not None:
        headers.update((k.strip().lower().decode(), v.strip().decode())
                       for k, v in (line.split(b":", 1) for line in top.split(b"\r\n")[1:]))
    return top, rest


def read_response(sock: socket.socket, timeout: float = 20, headers: dict | None = None) -> tuple[int, dict | None, bytes]:
    """(status, JSON body or None, anything the server sent after that response); the response's
    headers (lower-case names) go into ``headers`` when given."""
    top, rest = read_head(sock, timeout, headers)
    status = int(top.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in top.split(b"\r\n")[1:]
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        rest += sock.recv(65536)
    body, after = rest[:length], rest[length:]
    return status, (json.loads(body) if body.startswith(b"{") else None), after


def closed_after(sock: socket.socket, timeout: float = 1) -> bool:
    """True once the server closes the connection (it cannot know where the next request starts)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def records(data_dir: Path, error_type: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in (data_dir / "store" / "errors").rglob(f"*/{error_type}/*.json")]


def raw_objects(data_dir: Path) -> list[Path]:
    raw = data_dir / "store" / "raw"
    return list(raw.rglob("*.json")) if raw.exists() else []


def test_a_body_cut_short_is_incomplete_not_a_bad_gzip(server):
    """Before: the half that came was judged as the whole ping (400 "truncated gzip body"), so a
    client that half-closed was told to delete a good ping, and a network cut read as a bad ping."""
    body = gz(make_ping(CLIENT))
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head(submit_path(), len(body)) + body[: len(body) // 2])
        sock.shutdown(socket.SHUT_WR)
        headers = {}
        status, answer, _ = read_response(sock, headers=headers)
        assert closed_after(sock)
    assert (status, answer["error_type"]) == (400, "incomplete_body")
    assert headers["connection"] == "close"
    assert answer["error_message"] == f"the body ended after {len(body) // 2} of its {len(body)} bytes (Content-Length)"
    [record] = records(server.data_dir, "incomplete_body")
    assert record["body_bytes_kept"] == len(body) // 2 and record["status"] == 400
    assert records(server.data_dir, "decompress") == [] and raw_objects(server.data_dir) == []


@pytest.mark.parametrize("missing", [20, 1])  # 1: the boundary
def test_a_body_shorter_than_its_content_length_is_not_stored(server, missing):
    """Before: a whole gzip ping under a Content-Length 20 bytes too long got 200 and was stored.
    It is 400 incomplete_body, down to a Content-Length just 1 byte too long."""
    body = gz(make_ping(CLIENT))
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head(submit_path(), len(body) + missing) + body)
        sock.shutdown(socket.SHUT_WR)
        status, answer, _ = read_response(sock)
    assert (status, answer) == (400, {"error_type": "incomplete_body", "error_message":
                                      f"the body ended after {len(body)} of its {len(body) + missing} bytes (Content-Length)"})
    [record] = records(server.data_dir, "incomplete_body")
    assert record["body_bytes_kept"] == len(body)
    assert raw_objects(server.data_dir) == []


def test_a_body_that_stalls_gets_408_and_others_are_served(server):
    """Before: a client that sent all but the end of its body held the connection for ever
    (75 s seen), and 8 of them took every thread of the function."""
    body = gz(make_ping(CLIENT))
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head(submit_path(), len(body)) + body[:-10])
        headers = {}
        status, answer, _ = read_response(sock, timeout=20, headers=headers)
        assert (status, answer["error_type"]) == (408, "body_timeout")
        # before: "Connection: keep-alive", and then the server closed it
        assert headers["connection"] == "close"
        assert answer["error_message"] == f"the body did not arrive within {TIMEOUT_S} s (GLEANPIPE_BODY_TIMEOUT_S)"
        assert closed_after(sock)
    [record] = records(server.data_dir, "body_timeout")
    assert record["status"] == 408  # and it keeps what came: test_a_body_that_times_out_keeps_what_came
    status, _, headers = post(server.url + submit_path(), body)
    assert status == 200 and headers["X-Gleanpipe-Stored"] == "new"


def test_a_body_that_trickles_in_gets_408_at_the_deadline(server):
    """A byte every 0.3 s: each read gets its byte, so a socket timeout never fires. Before: no
    answer while the client kept it up (12 s seen), a connection and a thread held all along."""
    body = gz(make_ping(CLIENT))
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head(submit_path(), len(body)))
        stop = threading.Event()

        def trickle():
            for byte in body:
                if stop.wait(0.3):
                    return
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    return

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            status, answer, _ = read_response(sock, timeout=10)  # deadline 1 s; the body needs 80 s
        finally:
            stop.set()
            sender.join()
    assert (status, answer["error_type"]) == (408, "body_timeout")
    status, _, headers = post(server.url + submit_path(), body)
    assert status == 200 and headers["X-Gleanpipe-Stored"] == "new"


@pytest.mark.parametrize("chunks", [b"zz\r\nab\r\n0\r\n\r\n", b"-5\r\nab\r\n0\r\n\r\n"], ids=["hex-garbage", "negative"])
def test_broken_chunked_framing_is_a_400_with_its_reason(server, chunks):
    """Before: the function answered Flask's 500 page with a traceback (the SDK would retry for
    ever), serve gunicorn's HTML 400 with no record."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head(submit_path(), None, Transfer_Encoding="chunked") + chunks)
        headers = {}
        status, answer, _ = read_response(sock, headers=headers)
        assert (status, answer["error_type"]) == (400, "body_framing")
        assert headers["connection"] == "close"  # before: keep-alive, and then closed
        assert answer["error_message"].startswith("the body cannot be read: InvalidChunkSize: ")
        assert closed_after(sock)
    assert len(records(server.data_dir, "body_framing")) == 1


def test_a_chunked_body_over_the_wire_limit_keeps_none_of_it(server):
    """README: nothing is kept of a body over GLEANPIPE_MAX_WIRE_BYTES. Before: 1 MiB of a chunked one."""
    data = b"x" * (1024 * 1024 + 100)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (data[:600_000], data[600_000:])) + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head(submit_path(), None, Transfer_Encoding="chunked") + chunked)
        headers = {}
        status, answer, _ = read_response(sock, headers=headers)
        # the rest of the body is left unread: the function's server closed the connection at
        # once while it said "keep-alive" (it drains at most 64 KiB); both close it now
        assert headers["connection"] == "close" and closed_after(sock)
    assert (status, answer["error_type"]) == (413, "body_too_large")
    [record] = records(server.data_dir, "body_too_large")
    assert (record["body_bytes_kept"], record["body_base64"], record["body_truncated"]) == (0, "", True)


def test_a_leading_double_slash_is_the_same_submit_path_on_both(server):
    """Once, the function stored `//submit/...` as `/submit/...` (Flask drops the empty segment) and
    serve said 404; then both said 404, which lost every ping of an SDK whose server_endpoint ends
    in "/". Now both take it, from the path WSGI gives (test_edge_input has the other forms)."""
    doc_id = str(uuid.uuid4())
    status, answer, _ = post(server.url + "/" + submit_path(document_id=doc_id), gz(make_ping(CLIENT)))
    assert (status, answer) == (200, None)
    until(lambda: raw_objects(server.data_dir), "the raw object")  # serve writes it from its spool
    assert [p.name for p in raw_objects(server.data_dir)] == [f"{doc_id}.json"]


def test_a_body_declared_over_the_limit_is_refused_unread(server):
    """Before: after its 413 the function read the whole declared body into memory first
    (functions-framework's after_request hook), and only then answered: 200 MB declared
    meant 250 MB of memory, and a client that sends nothing more never got its answer."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head(submit_path(), 200 * 1024 * 1024) + b"x" * 1024)
        headers = {}
        status, answer, _ = read_response(sock, headers=headers)
        assert headers["connection"] == "close" and closed_after(sock)  # not left to wait for 200 MB
    assert (status, answer["error_type"]) == (413, "body_too_large")


def test_a_rejected_whole_body_keeps_the_connection(server):
    """The other side of the Connection: close answers: a 400 for a body that came whole says
    keep-alive, and the next request on the connection is answered."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        for _ in range(2):
            sock.sendall(head(submit_path(), len(b"{not json")) + b"{not json")
            headers = {}
            status, answer, _ = read_response(sock, headers=headers)
            assert (status, answer["error_type"], headers["connection"]) == (400, "json", "keep-alive")


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_of_exactly_the_wire_limit_keeps_the_connection(server, chunked):
    """A body of exactly GLEANPIPE_MAX_WIRE_BYTES (1 MiB) was read whole: its answer keeps the
    connection, which takes the next request. Nothing pinned the bound: closing at the limit
    itself (a ">=" for ">") passed every test."""
    data = b"x" * (1024 * 1024)
    if chunked:
        request = head(submit_path(), None, Transfer_Encoding="chunked") + b"".join(
            b"%x\r\n%s\r\n" % (len(part), part) for part in (data[:600_000], data[600_000:])) + b"0\r\n\r\n"
    else:
        request = head(submit_path(), len(data)) + data
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request)
        headers = {}
        status, answer, _ = read_response(sock, headers=headers)  # x... is not the gzip its head says
        assert (status, answer["error_type"], headers["connection"]) == (400, "decompress", "keep-alive")
        sock.sendall(head(submit_path(), len(b"{not json")) + b"{not json")  # the same connection
        status, answer, _ = read_response(sock)
        assert (status, answer["error_type"]) == (400, "json")


def test_head_gets_the_405_headers_only(server):
    """Before: serve's log got "WSGI app sent body bytes on a no-body response" for every HEAD.
    The warning would come after the headers went out, so the test does not wait a while and
    look: a second request on the same connection (the same worker, handled only after the HEAD
    is done) logs a 503 line, and once that line is in the log, a warning for the HEAD would be too."""
    (server.data_dir / "store").mkdir(exist_ok=True)
    (server.data_dir / "store" / "errors").write_text("not a folder")  # so a rejection logs "503 for"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"HEAD {submit_path()} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        top = read_head(sock, 10)
        assert top[0].startswith(b"HTTP/1.1 405 ") and top[1] == b""
        sock.sendall(head(submit_path(), len(b"{not json")) + b"{not json")  # not gzip: rejected
        status, answer, _ = read_response(sock)
    assert (status, answer["error_type"]) == (503, "store_unavailable")
    deadline = time.monotonic() + 20
    while "503 for" not in server.read_log():
        assert time.monotonic() < deadline, f"the 503 was never logged: {server.read_log()}"
        time.sleep(0.05)
    assert "no-body response" not in server.read_log()


def test_a_rejection_that_cannot_be_recorded_is_a_503_with_one_log_line(server):
    """Before: under serve each failed write to errors/ also printed gevent's thread-pool
    traceback (two per request), though the edge handles it: a 503 and one warning line."""
    (server.data_dir / "store").mkdir(exist_ok=True)
    (server.data_dir / "store" / "errors").write_text("not a folder")
    status, answer, _ = post(server.url + submit_path(), b"{not json")
    assert (status, answer["error_type"]) == (503, "store_unavailable")
    time.sleep(0.2)
    [line] = [ln for ln in server.read_log().splitlines() if "503 for" in ln]
    assert "rejected json, reason not kept" in line


def test_a_misconfigured_function_answers_503_without_reading_the_body(tmp_path):
    """Before: after its 503, functions-framework read the whole declared body (200 MB here),
    so a client that sends nothing more never got the answer."""
    (tmp_path / "data").mkdir()
    function = Function(tmp_path / "data", {"GLEANPIPE_STORE_URL": "nowhere://x"})
    try:
        with socket.create_connection(("127.0.0.1", function.port)) as sock:
            sock.sendall(head(submit_path(), 200 * 1024 * 1024) + b"x" * 1024)
            headers = {}
            status, answer, _ = read_response(sock, headers=headers)
            assert headers["connection"] == "close" and closed_after(sock)  # before: keep-alive, closed 5 s later
        assert (status, answer["error_type"]) == (503, "misconfigured")
        # a client that sends its whole body before it reads gets its 503 too, not a reset: the
        # function lingers (GLEANPIPE_LINGER_S's default, as its settings are not taken) on that close
        conn = http.client.HTTPConnection("127.0.0.1", function.port, timeout=30)
        try:
            conn.request("POST", submit_path(), body=bytes(16 << 20), headers=SDK_HEADERS)
            resp = conn.getresponse()
            assert (resp.status, json.loads(resp.read())["error_type"]) == (503, "misconfigured")
        finally:
            conn.close()
    finally:
        function.stop()


def test_the_deadline_watcher_cuts_only_late_reads():
    """read_deadline.py on its own, with real sockets and threads: 8 threads start watching
    (one heap); a read still going at its deadline is cut (end of stream) and marked expired,
    one that ended in time is not touched."""
    from gleanpipe.read_deadline import Watcher

    watcher = Watcher()
    pairs = [socket.socketpair() for _ in range(8)]
    deadlines: dict[int, object] = {}
    starters = [threading.Thread(target=lambda i=i: deadlines.__setitem__(i, watcher.watch(pairs[i][0], 0.5)))
                for i in range(8)]
    [t.start() for t in starters]
    [t.join() for t in starters]
    try:
        assert len(watcher._heap) == 8
        watcher.done(deadlines[0])  # read in time
        for i in range(1, 8):
            pairs[i][0].settimeout(5)
            assert pairs[i][0].recv(1) == b""  # blocked until the cut at 0.5 s
            assert deadlines[i].expired
        pairs[0][1].sendall(b"x")
        pairs[0][0].settimeout(5)
        assert pairs[0][0].recv(1) == b"x" and not deadlines[0].expired
        assert watcher._heap == []
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_serve_on_threads_says_close_too(tmp_path):
    """`gleanpipe serve` with GLEANPIPE_SPOOL=off runs gthread workers, as the function does:
    its closing answers say so too (a broken chunked body, a body over the wire limit)."""
    (tmp_path / "data").mkdir()
    srv = ServeProcess(tmp_path / "data", env={"GLEANPIPE_SPOOL": "off"}).start()
    try:
        for request, want in ((head(submit_path(), None, Transfer_Encoding="chunked") + b"zz\r\nab\r\n0\r\n\r\n",
                               (400, "body_framing")),
                              (head(submit_path(), 2 * 1024 * 1024) + b"x" * 300_000, (413, "body_too_large"))):
            with socket.create_connection(("127.0.0.1", srv.port)) as sock:
                sock.sendall(request)
                headers = {}
                status, answer, _ = read_response(sock, headers=headers)
                assert (status, answer["error_type"], headers["connection"]) == (*want, "close")
                assert closed_after(sock)
    finally:
        srv.stop()
    assert "Traceback" not in srv.read_log()


# --- request heads that do not arrive whole: serve with GLEANPIPE_SPOOL=off (http_worker.py) ----------------

class CloseWatch(threading.Thread):
    """Records when the server closes each of ``socks`` (end of stream or a reset), and whether
    it sent anything on one first, for up to ``timeout`` s."""

    def __init__(self, socks: list[socket.socket], timeout: float):
        super().__init__(daemon=True)
        self.socks, self.timeout = socks, timeout
        self.closed: dict[int, float] = {}
        self.sent: dict[int, bytes] = {}

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        for i, sock in enumerate(self.socks):
            sel.register(sock, selectors.EVENT_READ, i)
        end = time.monotonic() + self.timeout
        while sel.get_map() and (left := end - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if data:
                    self.sent[key.data] = self.sent.get(key.data, b"") + data
                else:
                    self.closed[key.data] = time.monotonic()
                    sel.unregister(key.fileobj)
        sel.close()


def test_stalled_request_heads_do_not_hold_serves_threads(tmp_path):
    """Before: with GLEANPIPE_SPOOL=off, a client that sent "P" and nothing more (a phone that lost
    its network mid-request) held a thread of gunicorn's gthread worker for ever, as did one that
    trickled its head: with as many of them as threads, every other ping timed out. Now a thread
    waits at most http_worker.HEAD_TIMEOUT_S for a head (one that trickles in counts whole, not
    per read), the connection is then closed without an answer, the ping queued behind them is
    answered, and keep-alive still works. One worker, so that every stalled connection lands on
    the threads of the same worker (with two, the kernel splits the connections unevenly)."""
    env = {"GLEANPIPE_SPOOL": "off", "GLEANPIPE_WORKERS": "1"}
    config = Config.from_env(environ=env)
    threads = config.workers * config.threads
    (tmp_path / "data").mkdir()
    srv = ServeProcess(tmp_path / "data", env=env).start()
    stalled, opened = [], []
    stop = threading.Event()
    try:
        trickler = socket.create_connection(("127.0.0.1", srv.port))
        stalled.append(trickler)
        request = head(submit_path(), 100)

        def trickle():  # a byte of the head every 0.2 s: never a read that waits 5 s
            for i in range(len(request)):
                if stop.wait(0.2):
                    return
                try:
                    trickler.sendall(request[i:i + 1])
                except OSError:
                    return

        trickler.sendall(request[:1])
        opened.append(time.monotonic())
        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        for _ in range(threads):  # with the trickler, one more than the threads: one waits behind them
            sock = socket.create_connection(("127.0.0.1", srv.port))
            sock.sendall(b"P")
            opened.append(time.monotonic())
            stalled.append(sock)
        watch = CloseWatch(stalled[:threads], timeout=HEAD_TIMEOUT_S + 5)
        watch.start()

        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=HEAD_TIMEOUT_S + 5)
        try:
            sent = time.monotonic()
            conn.request("POST", submit_path(), body=gz(make_ping(CLIENT)), headers=SDK_HEADERS)
            resp = conn.getresponse()
            assert (resp.status, resp.getheader("X-Gleanpipe-Stored")) == (200, "new")
            resp.read()
            answered = time.monotonic() - sent
            assert answered <= HEAD_TIMEOUT_S + 2  # once the threads were let go, not never
            first = conn.sock
            time.sleep(1)  # kept alive, idle: in the poller, no thread's head clock runs
            conn.request("POST", submit_path(), body=gz(make_ping(CLIENT)), headers=SDK_HEADERS)
            resp = conn.getresponse()
            assert resp.status == 200 and conn.sock is first
            resp.read()
        finally:
            conn.close()

        watch.join()
        assert watch.sent == {}  # no answer: there is no request to answer
        assert sorted(watch.closed) == list(range(threads)), "a stalled connection was never closed"
        held = [watch.closed[i] - opened[i] for i in range(threads)]
        assert all(HEAD_TIMEOUT_S - 0.25 <= s <= HEAD_TIMEOUT_S + 1.5 for s in held), held
    finally:
        stop.set()
        for sock in stalled:
            sock.close()
        srv.stop()
    assert "Traceback" not in srv.read_log()
    assert not (tmp_path / "data" / "store" / "errors").exists()  # nothing to record
    fixed = (Path(__file__).parent.parent / "README.md").read_text().split("### Fixed limits\n", 1)[1].split("\n## ", 1)[0]
    assert HEAD_TIMEOUT_S == KEEPALIVE_S == 5 and "| 5 s for the whole head" in fixed and "`http_worker.HEAD_TIMEOUT_S`" in fixed


def answer_to_a_slow_sender(tmp_path, env: dict, send, timeout: float) -> tuple[int, str | None]:
    """(status, X-Gleanpipe-Stored) of one ping whose request ``send(sock, head, body)`` writes, as
    slowly as it likes, on one connection to a serve with the spool off, one HTTP worker and
    ``env``; serve's log holds no traceback."""
    (tmp_path / "data").mkdir()
    srv = ServeProcess(tmp_path / "data", env={"GLEANPIPE_SPOOL": "off", "GLEANPIPE_WORKERS": "1", **env}).start()
    try:
        body = gz(make_ping(CLIENT))
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
        try:
            send(sock, head(submit_path(), len(body)), body)
            headers: dict = {}
            status, _, _ = read_response(sock, headers=headers)
        finally:
            sock.close()
    finally:
        srv.stop()
    assert "Traceback" not in srv.read_log()
    return status, headers.get("x-gleanpipe-stored")


def test_a_new_connection_quiet_at_first_gets_its_whole_head_time_once_it_begins(tmp_path):
    """Before: serve's gthread worker (spool off) started a new connection's head clock before
    gunicorn's own wait of up to 5 s for its first bytes, so the two ran out together. A
    connection opened and quiet for 4.5 s (a client's pool, a browser's preconnect) had 0.5 s left
    for its whole head, and a head that then took a second was cut: closed, unanswered. Now the
    clock starts when the head begins, and the ping is answered."""
    def send(sock, request_head: bytes, body: bytes) -> None:
        request = request_head + body
        time.sleep(HEAD_TIMEOUT_S - 0.5)
        sock.sendall(request[:1])
        time.sleep(1)  # past HEAD_TIMEOUT_S since the connection opened; 1 s into the head
        sock.sendall(request[1:])

    assert answer_to_a_slow_sender(tmp_path, {}, send, timeout=HEAD_TIMEOUT_S + 5) == (200, "new")


def test_a_body_that_takes_longer_than_the_head_time_is_read_whole_and_answered(tmp_path):
    """serve's gthread worker (spool off) stops a request's head clock (http_worker.HEAD_TIMEOUT_S)
    once the head is whole: the body has its own, GLEANPIPE_BODY_TIMEOUT_S. A body that comes
    slowly, one part a second, for longer than HEAD_TIMEOUT_S since its head (a phone on a poor
    network) is read whole and stored; a head clock still running would shut the read side under
    the app's body read part-way through."""
    def send(sock, request_head: bytes, body: bytes) -> None:
        parts = int(HEAD_TIMEOUT_S) + 3
        cut = [len(body) * i // parts for i in range(parts + 1)]
        sock.sendall(request_head)
        for i in range(parts):
            time.sleep(1)
            sock.sendall(body[cut[i]:cut[i + 1]])

    env = {"GLEANPIPE_BODY_TIMEOUT_S": "60"}
    assert answer_to_a_slow_sender(tmp_path, env, send, timeout=HEAD_TIMEOUT_S + 20) == (200, "new")


def test_quiet_new_connections_wait_on_the_poller_without_holding_threads_or_being_closed(tmp_path):
    """gthread (spool off), one worker of 2 threads, 3 new connections that send nothing: each
    thread waits at most gunicorn's 5 s for first bytes, then hands its connection back to the
    poller (not closed: it waits there up to the keep-alive). So a ping on a 4th connection is
    answered within those 5 s, and a quiet connection that begins its request at 6.5 s is answered."""
    env = {"GLEANPIPE_SPOOL": "off", "GLEANPIPE_WORKERS": "1", "GLEANPIPE_THREADS": "2"}
    (tmp_path / "data").mkdir()
    srv = ServeProcess(tmp_path / "data", env=env).start()
    quiet = []
    try:
        request = head(submit_path(), len(body := gz(make_ping(CLIENT)))) + body
        opened = time.monotonic()
        quiet = [socket.create_connection(("127.0.0.1", srv.port), timeout=15) for _ in range(3)]
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(request)
            status, _, _ = read_response(sock, timeout=8)
        assert status == 200 and time.monotonic() - opened < 7
        time.sleep(max(0.0, opened + 6.5 - time.monotonic()))
        quiet[0].sendall(request)
        assert read_response(quiet[0], timeout=5)[0] == 200
    finally:
        for sock in quiet:
            sock.close()
        srv.stop()
    assert "Traceback" not in srv.read_log()


# --- the lingering close (linger.py): the answer before a reset ---------------------------------------------

LINGER_S = 0.5  # GLEANPIPE_LINGER_S for these servers


@pytest.fixture(scope="module", params=EDGES)
def lingering_server(request, tmp_path_factory):
    """Each way the edge runs: serve's gevent workers, serve's gthread workers (spool off), and the
    function under functions-framework (gthread), with GLEANPIPE_LINGER_S = LINGER_S; each one
    started once for the tests below."""
    data_dir = tmp_path_factory.mktemp(f"linger-{request.param}") / "data"
    data_dir.mkdir()
    srv = edge_server(request.param, data_dir, {"GLEANPIPE_LINGER_S": str(LINGER_S)})
    yield srv
    srv.stop()
    assert "Traceback" not in srv.read_log()


def test_a_client_that_sends_a_big_body_before_it_reads_gets_its_413(lingering_server):
    """http.client sends the whole body, then reads the answer (no Expect: 100-continue). Before:
    the edge answered a body over GLEANPIPE_MAX_WIRE_BYTES unread and closed at once, the kernel
    reset the connection for the data still coming, and from 4 MiB on the client got
    ConnectionResetError instead of its 413. Chunked bodies too (read up to the limit only)."""
    srv = lingering_server
    before = len(records(srv.data_dir, "body_too_large"))
    sizes = (4, 16, 64)
    for mib in sizes:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            conn.request("POST", submit_path(), body=bytes(mib << 20), headers=SDK_HEADERS)
            resp = conn.getresponse()
            assert (resp.status, json.loads(resp.read())["error_type"], resp.getheader("Connection")) \
                == (413, "body_too_large", "close"), mib
        finally:
            conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("POST", submit_path(), body=iter([bytes(1 << 20)] * 16), headers=SDK_HEADERS,
                     encode_chunked=True)
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())["error_type"]) == (413, "body_too_large")
    finally:
        conn.close()
    kept = records(srv.data_dir, "body_too_large")
    assert len(kept) == before + len(sizes) + 1 and {r["body_bytes_kept"] for r in kept} == {0}
    status, _, headers = post(srv.url + submit_path(), gz(make_ping(CLIENT)))  # and it goes on serving
    assert status == 200 and headers["X-Gleanpipe-Stored"] == "new"


def test_a_client_that_keeps_sending_is_cut_off_at_the_linger_bound(lingering_server):
    """A client that declares 1 GiB and sends 512 bytes every 20 ms gets its 413, and is cut off
    (its sends fail) GLEANPIPE_LINGER_S after it, not later: under gthread, gunicorn's own
    graceful close (64 KiB or 2 s, on the worker's main thread) must not add its 2 s. Meanwhile
    and after, the server answers others."""
    srv = lingering_server
    before = len(records(srv.data_dir, "body_too_large"))
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(head(submit_path(), 1 << 30) + b"x" * 1024)
        stop, cut_at = threading.Event(), []

        def keep_sending():
            while not stop.wait(0.02):
                try:
                    sock.sendall(b"x" * 512)
                except OSError:
                    cut_at.append(time.monotonic())
                    return

        sender = threading.Thread(target=keep_sending)
        sender.start()
        try:
            headers = {}
            status, answer, _ = read_response(sock, headers=headers)
            answered = time.monotonic()
            assert (status, answer["error_type"], headers["connection"]) == (413, "body_too_large", "close")
            assert post(srv.url + submit_path(), gz(make_ping(CLIENT)))[0] == 200  # while it lingers
            sender.join(timeout=LINGER_S + 5)
        finally:
            stop.set()
            sender.join()
    assert cut_at, "the client was never cut off"
    assert LINGER_S - 0.15 <= cut_at[0] - answered <= LINGER_S + 1.0
    assert post(srv.url + submit_path(), gz(make_ping(CLIENT)))[0] == 200
    assert len(records(srv.data_dir, "body_too_large")) == before + 1


def test_an_http_1_0_client_that_sends_a_big_body_before_it_reads_gets_its_413(lingering_server):
    """HTTP/1.0 is HTTP/1 too: a client of that version that sends its whole body over the wire
    limit before it reads is lingered for as an HTTP/1.1 one is, and reads its 413, not a reset."""
    srv = lingering_server
    before = len(records(srv.data_dir, "body_too_large"))
    size = 16 << 20
    request = head(submit_path(), size).replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.settimeout(30)
        sock.sendall(request + bytes(size))  # all of it, then the answer
        status, answer, after = read_response(sock)
        assert (status, answer["error_type"], after) == (413, "body_too_large", b"")
        assert closed_after(sock, timeout=LINGER_S + 5)
    assert len(records(srv.data_dir, "body_too_large")) == before + 1


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


def test_linger_stops_at_its_byte_and_time_bounds_and_when_the_client_closes():
    """linger.py on its own, on real loopback TCP sockets: it reads what comes until the client
    closes; a client that sends more than the byte bound, or sends nothing and stays, is let go
    at the bound."""
    from gleanpipe.linger import linger

    server, client = _tcp_pair()  # the client sends 300 KB and closes: all of it is read
    with server, client:
        client.sendall(b"x" * 300_000)
        client.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        assert linger(server, 5) == 300_000 and time.monotonic() - started < 1
        assert client.recv(10) == b""  # the server's side was shut: the client sees the end

    server, client = _tcp_pair()  # more than the byte bound: reading stops there
    with server, client:
        def send():
            with contextlib.suppress(OSError):  # reset once the server closes
                client.sendall(b"x" * 4_000_000)

        sender = threading.Thread(target=send)
        sender.start()
        assert linger(server, 5, max_bytes=1_000_000) == 1_000_000
        server.close()  # what gunicorn does next: the client is reset
        sender.join(timeout=5)
        assert not sender.is_alive()

    server, client = _tcp_pair()  # a client that sends nothing and never closes: the time bound
    with server, client:
        started = time.monotonic()
        assert linger(server, 0.3) == 0
        assert 0.25 <= time.monotonic() - started < 1.5


def test_only_http1_answers_under_gunicorn_linger():
    """Another server gives no socket: nothing to linger on. Over HTTP/2 (gunicorn serves it only
    when told to) the socket carries other streams, which shutting it would cut."""
    from gleanpipe.linger import Lingering, lingering

    body = [b"answer"]
    server, client = _tcp_pair()
    with server, client:
        assert lingering(body, {"SERVER_PROTOCOL": "HTTP/1.1"}, 1) is body
        assert lingering(body, {"gunicorn.socket": server, "SERVER_PROTOCOL": "HTTP/2.0"}, 1) is body
        wrapped = lingering(body, {"gunicorn.socket": server, "SERVER_PROTOCOL": "HTTP/1.1"}, 1)
        assert isinstance(wrapped, Lingering) and list(wrapped) == body
        assert isinstance(lingering(body, {"gunicorn.socket": server, "SERVER_PROTOCOL": "HTTP/1.0"}, 1), Lingering)


def test_a_lingering_answer_closes_its_body_then_lingers_and_a_deadline_already_past_reads_nothing():
    """Lingering.close closes the answer's own iterable first (PEP 3333: the server calls close()
    once, and it must reach the app's iterable), then lingers. And linger() with no time left (its
    deadline passed while it read) stops at once, without an error: real loopback TCP sockets."""
    from gleanpipe.linger import Lingering, linger

    closed = []

    class Body(list):
        def close(self):
            closed.append(time.monotonic())

    server, client = _tcp_pair()
    with server, client:
        client.sendall(b"x" * 1000)
        client.shutdown(socket.SHUT_WR)
        wrapped = Lingering(Body([b"answer"]), server, 5)
        assert list(wrapped) == [b"answer"]
        wrapped.close()
        assert len(closed) == 1
        assert client.recv(10) == b""  # and it lingered: the server's sending side is shut

    for seconds in (0, 1e-9):
        server, client = _tcp_pair()
        with server, client:
            client.sendall(b"x" * 1000)
            started = time.monotonic()
            assert linger(server, seconds) == 0 and time.monotonic() - started < 0.5
            client.settimeout(5)
            assert client.recv(10) == b""


# --- what an error record keeps of a body that did not arrive whole -----------------------------------------

MAX_ERROR_BYTES = 16384  # GLEANPIPE_MAX_ERROR_BYTES for these servers


@pytest.fixture(scope="module", params=EDGES)
def recording_server(request, tmp_path_factory):
    """Each way the edge runs (serve's gevent workers with the spool, serve's gthread workers, the
    function under functions-framework), with GLEANPIPE_BODY_TIMEOUT_S = TIMEOUT_S and
    GLEANPIPE_MAX_ERROR_BYTES = MAX_ERROR_BYTES, started once for the tests below (each looks for
    its own document id in the error records)."""
    data_dir = tmp_path_factory.mktemp(f"record-{request.param}") / "data"
    data_dir.mkdir()
    srv = edge_server(request.param, data_dir, {"GLEANPIPE_BODY_TIMEOUT_S": TIMEOUT_S,
                                                "GLEANPIPE_MAX_ERROR_BYTES": str(MAX_ERROR_BYTES),
                                                "GLEANPIPE_MAX_WIRE_BYTES": str(4 << 20)})  # over gunicorn's 1 MiB read step
    yield srv
    srv.stop()
    assert "Traceback" not in srv.read_log()


def record_of(srv, error_type: str, doc_id: str, timeout: float = 20) -> dict:
    """The one error record of ``doc_id``, waiting for it (a client that reset reads no answer)."""
    found = []
    until(lambda: found.extend(r for r in records(srv.data_dir, error_type) if r["document_id"] == doc_id) or found,
          f"the {error_type} record of {doc_id}", timeout=timeout)
    [record] = found
    return record


def kept(record: dict) -> bytes:
    body = base64.b64decode(record["body_base64"])
    assert record["body_bytes_kept"] == len(body)
    return body


def test_a_body_that_times_out_keeps_what_came(recording_server):
    """Before: with the spool on (gevent workers), the body_timeout record kept none of the bytes
    that had come; with it off, and under the function, it kept them."""
    srv, doc = recording_server, str(uuid.uuid4())
    body = gz(make_ping(CLIENT))
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(head(submit_path(document_id=doc), len(body)) + body[:-10])
        status, answer, _ = read_response(sock)
    assert (status, answer["error_type"]) == (408, "body_timeout")
    record = record_of(srv, "body_timeout", doc)
    assert (record["status"], kept(record), record["body_truncated"]) == (408, body[:-10], False)


@pytest.mark.parametrize("sent", [200, 20_000])
def test_a_client_that_resets_mid_body_is_recorded_with_what_it_sent(recording_server, sent):
    """A client that sends part of its body, then resets the connection (SO_LINGER 0): before, the
    record said "after 0 bytes" and kept nothing, whatever had come. It keeps what came up to
    GLEANPIPE_MAX_ERROR_BYTES, and the message counts all of it."""
    srv, doc = recording_server, str(uuid.uuid4())
    data = bytes(range(256)) * 100
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(head(submit_path(document_id=doc), 30_000) + data[:sent])
    time.sleep(0.3)  # the server has read them
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset
    record = record_of(srv, "incomplete_body", doc)
    assert (record["status"], record["error_message"]) == (400, f"the connection ended after {sent} bytes of the body")
    assert kept(record) == data[:min(sent, MAX_ERROR_BYTES)]
    assert record["body_truncated"] is (sent > MAX_ERROR_BYTES)


def test_a_client_that_resets_past_a_mebibyte_of_body_is_counted_whole(recording_server):
    """gunicorn 27 reads a large body in steps of 1 MiB into its Body's own buffer: a reset after
    1.5 MiB leaves the first MiB there and the rest in the socket reader's buffer. The record counts
    both and keeps the first GLEANPIPE_MAX_ERROR_BYTES."""
    srv, doc = recording_server, str(uuid.uuid4())
    data = bytes(range(256)) * (6 << 10)  # 1.5 MiB
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(head(submit_path(document_id=doc), 3 << 20) + data)
    time.sleep(0.5)  # the server has read them
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset
    record = record_of(srv, "incomplete_body", doc)
    assert record["error_message"] == f"the connection ended after {len(data)} bytes of the body"
    assert (kept(record), record["body_truncated"]) == (data[:MAX_ERROR_BYTES], True)


def test_broken_chunked_framing_keeps_the_chunks_before_it(recording_server):
    """Before: a chunked body whose framing broke after good chunks kept none of them."""
    srv, doc = recording_server, str(uuid.uuid4())
    data = bytes(range(256)) * 40
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (data[:4000], data[4000:])) + b"zz\r\nab\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(head(submit_path(document_id=doc), None, Transfer_Encoding="chunked") + chunks)
        status, answer, _ = read_response(sock)
    assert (status, answer["error_type"]) == (400, "body_framing")
    record = record_of(srv, "body_framing", doc)
    assert record["error_message"].startswith("the body cannot be read: InvalidChunkSize: ")
    assert kept(record) == data


@pytest.mark.parametrize("kind", ["serve", "serve-threads"])
def test_a_client_that_asks_for_close_and_holds_its_socket_holds_no_other_ping(tmp_path, kind):
    """A client sends a ping with "Connection: close", reads its 200 and keeps its socket open. With
    the spool off, gunicorn's gthread worker closed such a connection on its main thread, waiting
    there up to 2 s for the client to close its end (util.close_graceful): every other connection
    of the worker waited with it, and a ping sent meanwhile took about 1.95 s to be answered. Now
    the wait is in the request's own thread (http_worker.CLOSE_LINGER_S), the other ping is answered
    at once (about 3 ms; bound 1 s), and the holding client still sees its answer end (EOF)."""
    server = edge_server(kind, tmp_path / "data", {"GLEANPIPE_WORKERS": "1"})
    try:
        body = gz(make_ping(CLIENT))
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", server.port), timeout=20) as holder:
                holder.sendall(f"POST {submit_path()} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                               f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                answer = read_all(holder)  # the answer, then the end of the connection
                assert answer.startswith(b"HTTP/1.1 200 ") and b"X-Gleanpipe-Stored: new" in answer, answer
                asked = time.monotonic()
                status, _, headers = post(f"http://127.0.0.1:{server.port}{submit_path()}", body)
                took = time.monotonic() - asked
                assert (status, headers["X-Gleanpipe-Stored"]) == (200, "new")
                assert took < 1.0, (kind, took)
    finally:
        server.stop()
