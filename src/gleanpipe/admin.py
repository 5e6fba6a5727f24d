"""The local admin API of `gleanpipe serve`, and its client.

DuckDB lets one process write a database file. While `serve` runs it owns the file, so
`gleanpipe query`, `status` and `replay` talk to it over this API instead of opening the
file: loopback only, with a random token kept in ``<data dir>/serve.json`` (mode 0600).
When no server is running, the CLI opens the file itself.
"""

from __future__ import annotations

import hmac
import os
import logging
import re
import secrets
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson

from .jsonvalues import dumps, shown_values
from .serve_state import (SERVE_START_WAIT_S, STATE_FILE, foreign_holder, lock_holder, no_state_message,
                          read_state, same_location)

TOKEN_HEADER = "X-Gleanpipe-Token"
# The largest request body the admin API reads. What commands send: `apps add` its parsed
# definitions (JSON about 1.3 times the size of the metrics.yaml; Mozilla's largest are a few MB),
# `replay` a batch of keys (at GLEANPIPE_LOAD_BATCH's most, 100,000 ping keys of at most 179 bytes:
# about 18 MB), `query` its SQL (a command-line argument, at most 128 KiB on Linux). Over it: 413
# at once, the body unread (a Content-Length of 10**15 was a MemoryError, answered 500).
ADMIN_MAX_BODY_BYTES = 64 * 1024 * 1024
# how often the admin server's loop looks whether it is asked to stop (socketserver's default, 0.5 s,
# was up to half a second of each stop of serve); 20 looks a second cost nothing measurable
ADMIN_POLL_S = 0.05
log = logging.getLogger("gleanpipe.admin")


class ServeError(RuntimeError):
    """serve's admin API answered an error, or cannot be reached: every command says it in one line."""


class QueryRefused(ServeError):
    """serve answered 400: the request's own fault (SQL that does not run, a write refused), in the
    words a command without serve shows. Not "serve cannot be reached"."""


class ServeFailed(ServeError):
    """serve answered 500: an error of its own (a bug), not the request's nor its store's or
    warehouse's trouble. serve logged it with its traceback; its message says so."""


class ResultTooLarge(ServeError):
    """A query's answer is over GLEANPIPE_QUERY_MAX_BYTES: serve answers 413, and the client raises
    this again, so that a caller that can ask for less (explore's pages) knows it from other errors."""

    def for_user_of(self, what: str, command: str) -> "ResultTooLarge":
        """This refusal in words for the user of ``command`` (explore, the dictionary), who wrote no
        SQL: what was over, and what to do (serve's own advice, a LIMIT, is no use to them)."""
        over = re.search(r"over (\d+) bytes", str(self))
        limit = f"{over[1]} bytes as JSON, the most" if over else "the most"
        return ResultTooLarge(f"{what} is over {limit} the running serve answers (GLEANPIPE_QUERY_MAX_BYTES): "
                              f"restart serve with a higher GLEANPIPE_QUERY_MAX_BYTES, or stop serve and run "
                              f"{command} (it then reads the DuckDB file itself, with no such limit)")


class RequestTooLarge(ServeError):
    """A request to serve's admin API over ADMIN_MAX_BODY_BYTES, refused before it is sent."""


class BadRequest(ValueError):
    """The request's own fault, answered 400: what the admin API and its handlers raise for a
    request they cannot answer as sent (not a JSON object, a field missing or of another kind, SQL
    that does not run, definitions that cannot be stored). Any other error of a handler is
    serve's (500), or its store's or warehouse's trouble (503)."""


def field(body: dict, name: str, kind, what: str):
    """``body[name]``, BadRequest unless it is a ``kind`` (a field left out is None)."""
    value = body.get(name)
    if not isinstance(value, kind):
        raise BadRequest(f"the request has no {name!r} ({what})" if value is None else
                         f"the request's {name!r} must be {what}, not {type(value).__name__}")
    return value


def serve_failed(exc: BaseException) -> str:
    """The one line a request that failed in serve itself is answered with (500)."""
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (f"{type(exc).__name__}{': ' + said if said else ''} (an error of serve's own, not the request's: "
            "serve's log has its traceback)")


class BodyTooLarge(Exception):
    """A request body declared over ADMIN_MAX_BODY_BYTES: answered 413 without being read."""


class AdminServer:
    """Serves /status, /query, /load (and ``extra``: serve's /apps/add) for the process that owns
    the warehouse. Each answer is a JSON object: 200 with the handler's result; 400 for BadRequest,
    the request's own fault (a handler turns what it knows to be one into it); 413 ResultTooLarge,
    or a body over ADMIN_MAX_BODY_BYTES (not read: the connection is closed after the answer);
    503 for the store's or warehouse's trouble, or serve stopping; 500 for any other error, which is
    serve's own: logged with its traceback, and said to be serve's, not the request's."""

    def __init__(self, *, status, query, load_keys, query_max_bytes: int, extra=None, interrupt=None):
        """``query(sql, params)`` gives the column names, then pages of rows (``read_query_pages``);
        a result over ``query_max_bytes`` of JSON is refused (GLEANPIPE_QUERY_MAX_BYTES).
        ``interrupt(thread)``, if given, stops the reads that ``thread`` runs: those of a request
        whose client hangs up (killed, or gave up) are interrupted instead of running to the end."""
        self.token = secrets.token_urlsafe(24)
        handlers = {"/status": lambda body: status(), "/query": lambda body: _query(query, body, query_max_bytes),
                    "/load": lambda body: load_keys(_keys(body)), **(extra or {})}
        token = self.token
        self._active = 0  # requests being answered
        self._idle = threading.Condition()
        admin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def send_error(self, code, message=None, explain=None):
                """What http.server refuses before any handler runs (another method than POST: its
                501; a request line or header it cannot read), as JSON like every other answer."""
                allow = code == HTTPStatus.NOT_IMPLEMENTED and self.command  # a method it has no do_ for
                if allow:
                    code, message = HTTPStatus.METHOD_NOT_ALLOWED, f"the admin API takes POST only, not {self.command}"
                body = dumps({"error": message or HTTPStatus(code).phrase})
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                if allow:
                    self.send_header("Allow", "POST")
                self.end_headers()
                self.close_connection = True
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_POST(self):
                with admin._idle:
                    admin._active += 1
                try:
                    status, parts = self._answer()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(sum(map(len, parts))))
                    self.end_headers()
                    for part in parts:
                        self.wfile.write(part)
                except (BrokenPipeError, ConnectionResetError):
                    log.warning("admin API: the client of %s went away before its answer", self.path)
                finally:
                    with admin._idle:
                        admin._active -= 1
                        admin._idle.notify_all()

            def _answer(self) -> tuple[int, list[bytes]]:
                """The status and the JSON answer, in parts (a query's comes a page at a time)."""
                if not hmac.compare_digest(self.headers.get(TOKEN_HEADER, ""), token):
                    return 403, [dumps({"error": "bad or missing token"})]
                fn = handlers.get(self.path)
                if fn is None:
                    return 404, [dumps({"error": f"no endpoint {self.path}"})]
                try:
                    body = _body(self.rfile, self.headers.get("Content-Length"))
                    thread = threading.get_ident()
                    with _HangUpWatch(self.connection, interrupt and (lambda: interrupt(thread))):
                        result = fn(body)
                    return 200, result if isinstance(result, Encoded) else [dumps(result)]
                except (ResultTooLarge, BodyTooLarge) as exc:
                    return 413, [dumps({"error": str(exc)})]
                except BadRequest as exc:  # the request's own fault: in the words a command without serve shows
                    return 400, [dumps({"error": str(exc) or type(exc).__name__})]
                except Exception as exc:  # answered instead of dropping the connection
                    from .storage.base import StoreError
                    from .warehouse.base import WarehouseClosing, WarehouseUnavailable

                    # a store or warehouse out of reach, or serve stopping: serve's trouble, in its words
                    if isinstance(exc, (StoreError, WarehouseUnavailable, WarehouseClosing)):
                        return 503, [dumps({"error": str(exc) or type(exc).__name__})]
                    # anything else is an error of serve's own (a bug): logged with its traceback
                    log.error("admin API: %s failed with an error of serve's own", self.path, exc_info=exc)
                    return 500, [dumps({"error": serve_failed(exc)})]

        self._handler = Handler
        self.httpd: ThreadingHTTPServer | None = None
        self.url: str | None = None

    def start(self) -> None:
        """Listen on a free loopback port (``url``) and answer. serve calls it once its submit port
        answers: bound before, the admin API could be given that very port by the kernel, if it
        was free and among the ephemeral ones, and answer the pings' requests with 403s."""
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(ADMIN_POLL_S,), name="gleanpipe-admin",
                         daemon=True).start()

    def stop(self) -> None:
        """Take no more requests (those being answered go on: see ``wait``)."""
        if self.httpd is None:  # never started
            return
        self.httpd.shutdown()
        self.httpd.server_close()

    def wait(self, timeout: float) -> bool:
        """Wait until the requests being answered have had their answers; False after ``timeout``."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)


def _body(rfile, length: str | None) -> dict:
    """The request's JSON object, BadRequest for anything else."""
    digits = (length or "0").strip()
    # digits only: int() also takes "-1" (read(-1) waited for the client to close) and "1_0"
    if not (digits.isascii() and digits.isdigit()):
        raise BadRequest(f"Content-Length {length!r} is not a number of bytes")
    size = int(digits)
    if size > ADMIN_MAX_BODY_BYTES:  # before any read: HTTP/1.0, the connection closes after the answer
        raise BodyTooLarge(f"the request's body is {size} bytes, over the {ADMIN_MAX_BODY_BYTES} bytes serve's "
                           "admin API takes (ADMIN_MAX_BODY_BYTES)")
    try:
        body = orjson.loads(rfile.read(size) or b"{}")
    except orjson.JSONDecodeError:
        raise BadRequest("the request's body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request's body must be a JSON object, not {type(body).__name__}")
    return body


def _keys(body: dict) -> list[str]:
    keys = field(body, "keys", list, "a list of object keys")
    if not all(isinstance(key, str) for key in keys):
        raise BadRequest("the request's 'keys' must be a list of object keys (strings)")
    return keys


class _HangUpWatch:
    """While a request is worked on, calls ``hung_up()`` once its client has closed the
    connection, and every 0.1 s after that until the work ends (an interrupt that comes between
    two statements of a read is forgotten). The client sends its whole request and then only
    waits, so the socket turning readable with nothing to read is the hang-up (a client that
    half-closes its side after the request would count as gone; urllib, the CLI's, does not)."""

    def __init__(self, sock, hung_up):
        self.sock, self.hung_up = sock, hung_up

    def __enter__(self):
        if self.hung_up:
            self.wake_r, self.wake_w = os.pipe()
            self.thread = threading.Thread(target=self._watch, name="gleanpipe-admin-watch", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.hung_up:
            os.write(self.wake_w, b"x")
            self.thread.join()  # before the request's socket is closed (and its number used again)
            os.close(self.wake_r)
            os.close(self.wake_w)

    def _watch(self) -> None:
        waiting = select.poll()  # not select(): it refuses a file number past 1023
        waiting.register(self.wake_r, select.POLLIN)
        waiting.register(self.sock, select.POLLIN)
        if any(fd == self.wake_r for fd, _ in waiting.poll()):
            return
        try:
            if self.sock.recv(1, socket.MSG_PEEK):  # more bytes: the client is still there
                return
        except OSError:  # reset by the peer: gone as well
            pass
        waiting.unregister(self.sock)
        while True:
            self.hung_up()
            if waiting.poll(100):
                return


class Encoded(list):
    """An answer already encoded as JSON, in parts (bytes) sent one after the other."""


def _query(query_pages, body: dict, max_bytes: int) -> Encoded:
    """``{"columns": [...], "rows": [...]}``, each page of rows encoded as it comes, so serve never
    holds a large result as Python values (a 30,000-row SELECT * of a metrics table took serve from
    0.1 to 1.3 GB when fetched whole). Over ``max_bytes`` of JSON: an error, not the answer.

    With ``"lines": true`` in the request: the column names on the first line, then each page of
    rows as a JSON list on a line of its own (JSON text holds no raw newline), so a client can
    read the answer a page at a time (``AdminClient.query_pages``)."""
    from .read_only_sql import SqlRefused
    from .warehouse.base import QueryFailed
    from .warehouse.duckdb import STATEMENT_ERRORS

    lines = body.get("lines") is True
    sql = field(body, "sql", str, "the SQL, a string")
    params = field(body, "params", (list, type(None)), "a list of values")
    try:  # SQL that does not run (a syntax error, a missing table, a value that does not convert, a
        # write): the request's fault. DuckDB's own failures (InternalException...) are serve's.
        return _query_answer(query_pages(sql, params), lines, max_bytes)
    except (SqlRefused, QueryFailed, *STATEMENT_ERRORS) as exc:
        raise BadRequest(str(exc) or type(exc).__name__) from exc


def _query_answer(pages, lines: bool, max_bytes: int) -> Encoded:
    try:
        columns = dumps(next(pages))
        head = b'{"columns":' + columns + b',"rows":['
        parts = Encoded([columns + b"\n" if lines else head])
        size = len(head) + 2  # the answer as one document, with the closing "]}", in either form
        for rows in pages:
            if not rows:
                continue
            encoded = dumps(shown_values(rows))
            joint = b"," if len(parts) > 1 else b""
            parts.append(encoded + b"\n" if lines else joint + encoded[1:-1])  # in a document: rows without [ ]
            size += len(joint) + len(encoded) - 2
            if size > max_bytes:
                raise ResultTooLarge(f"the result is over {max_bytes} bytes as JSON, the most serve answers "
                                     "(GLEANPIPE_QUERY_MAX_BYTES): add a LIMIT or select fewer columns")
        if not lines:
            parts.append(b"]}")
        return parts
    finally:
        pages.close()  # a result not read to its end: its read transaction ends here


class AdminClient:
    def __init__(self, url: str, token: str, store_url: str | None = None, warehouse_url: str | None = None):
        self.url, self.token = url, token
        self.store_url, self.warehouse_url = store_url, warehouse_url  # what that serve runs on

    @classmethod
    def find(cls, data_dir: Path, warehouse_url: str | None = None,
             wait_s: float = SERVE_START_WAIT_S) -> "AdminClient | None":
        """The running server for this data dir, or None (a stale state file is ignored). A serve
        that is starting is waited for, up to ``wait_s``; ServeError if it is not up by then.

        With ``warehouse_url``: only a server loading into that warehouse. A serve owns its
        own DuckDB file; a command aimed at another warehouse opens that one itself.
        """
        deadline = time.monotonic() + wait_s
        while True:
            holder = lock_holder(data_dir)
            if holder is None:  # no serve: a state file is one a serve that is gone left
                return None
            state = read_state(data_dir)
            # The holder's own state file, or it is still starting: serve takes the lock, then
            # removes a killed serve's state file and writes its own once its HTTP server is up.
            # (Only between a new serve's flock and its write of its pid, two system calls apart,
            # does the lock file still name the killed one. The pid is not checked for life: a
            # serve in a container has a pid of its own namespace.)
            pid = state.get("pid") if isinstance(state, dict) else None
            if isinstance(pid, int) and holder in (0, pid):
                break
            if (foreign := foreign_holder(data_dir)) is not None:
                raise ServeError(foreign)
            if time.monotonic() >= deadline:
                raise ServeError(no_state_message(data_dir, holder, wait_s))
            time.sleep(0.05)
        client = cls(state["admin_url"], state["token"], state.get("store_url"), state.get("warehouse_url"))
        if warehouse_url is not None and not same_location(warehouse_url, client.warehouse_url):
            return None
        return client

    def call(self, endpoint: str, payload: dict | None = None, timeout: float = 600):
        with self._open(endpoint, payload, timeout) as resp:
            return self._json(resp.read(), 200)

    def _json(self, body: bytes, status: int) -> dict:
        """An answer of the admin API: a JSON object, or a ServeError saying that what answered
        at this URL is something else (a state file naming a port another server took since)."""
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise ServeError(f"{self.url} does not answer as gleanpipe serve's admin API (HTTP {status}, "
                             f"{body[:60]!r}): does its {STATE_FILE} name a port another server took since?")
        return answer

    def _open(self, endpoint: str, payload: dict | None, timeout: float):
        """The answer of ``endpoint`` to be read; ServeError (or ResultTooLarge) for any other status.
        A body over ADMIN_MAX_BODY_BYTES is not sent (RequestTooLarge): serve would answer 413
        without reading it, and a client still sending gets a broken pipe (or a reset), not that answer."""
        data = dumps(payload or {})
        if len(data) > ADMIN_MAX_BODY_BYTES:
            raise RequestTooLarge(f"this command's request to gleanpipe serve would be {len(data)} bytes, over the "
                                  f"{ADMIN_MAX_BODY_BYTES} bytes its admin API takes (ADMIN_MAX_BODY_BYTES): stop "
                                  "serve and run the command again (it then works on the warehouse file itself, "
                                  "with no such limit)")
        req = urllib.request.Request(
            self.url + endpoint, data=data, method="POST",
            headers={TOKEN_HEADER: self.token, "Content-Type": "application/json"},
        )
        try:
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            detail = self._json(exc.read() or b"{}", exc.code).get("error", exc.reason)
            if exc.code == 400:  # the request's own fault (a bad query...): the words a command without serve shows
                raise QueryRefused(detail) from None
            if exc.code == 413:  # as 400, and a caller may ask for less
                raise ResultTooLarge(detail) from None
            if exc.code == 503:  # serve's own trouble, in its words (the warehouse is being closed...)
                raise ServeError(detail) from None
            if exc.code == 500:  # an error of serve's own, which it logged (its words say so): in one line
                raise ServeFailed(f"gleanpipe serve answered 500: {' '.join(str(detail).split())}") from None
            raise ServeError(f"gleanpipe serve answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:  # it stopped since its state file was read
            raise ServeError(f"cannot reach gleanpipe serve at {self.url}: {exc}") from None

    def query(self, sql: str, params=None):
        out = self.call("/query", {"sql": sql, "params": params})
        return out["columns"], [tuple(r) for r in out["rows"]]

    def query_pages(self, sql: str, params=None, timeout: float = 600):
        """The column names, then the rows a page at a time as serve read them: a client that
        writes each page out holds one page, not the whole answer as Python values."""
        with self._open("/query", {"sql": sql, "params": params, "lines": True}, timeout) as resp:
            try:
                yield orjson.loads(resp.readline())
                while line := resp.readline():
                    yield [tuple(r) for r in orjson.loads(line)]
            except (OSError, orjson.JSONDecodeError) as exc:  # serve stopped half-way through its answer
                raise ServeError(f"gleanpipe serve at {self.url} stopped answering: {exc}") from None
            if resp.length:  # readline gives b"" at a connection closed early: the answer is not all there
                raise ServeError(f"gleanpipe serve at {self.url} stopped answering: {resp.length} bytes of "
                                 "its answer did not come")

    def status(self) -> dict:
        return self.call("/status")

    def load_keys(self, keys: list[str]) -> dict:
        return self.call("/load", {"keys": keys})
