"""The local admin API of `gleanpipe serve`, and its client.

DuckDB lets one process write a database file. While `serve` runs it owns the file, so
`gleanpipe query`, `status` and `replay` talk to it over this API instead of opening the
file: loopback only, with a random token kept in ``<data dir>/serve.json`` (mode 0600).
When no server is running, the CLI opens the file itself.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import math
import os
import logging
import secrets
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from datetime import date, datetime, time as clock_time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from uuid import UUID

import orjson

STATE_FILE = "serve.json"
LOCK_FILE = "serve.lock"  # held by a running serve: a state file without it is stale
# How long a command waits for a serve that holds the data dir's lock to write its state file: its
# start (gunicorn's boot; after a kill, up to serve.KILLED_SERVE_PORT_WAIT_S for the old port)
SERVE_START_WAIT_S = 30.0
PID_WIDTH = 10  # the lock file holds its holder's pid, right-aligned in this many characters
TOKEN_HEADER = "X-Gleanpipe-Token"
log = logging.getLogger("gleanpipe.admin")


def to_jsonable(value):
    """orjson default= for warehouse values (Decimal, UUID, bytes, ...)."""
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


class ServeError(RuntimeError):
    """serve's admin API answered an error, or cannot be reached: every command says it in one line."""


class QueryRefused(ServeError):
    """serve answered 400: the request's own fault (SQL that does not run, a write refused), in the
    words a command without serve shows. Not "serve cannot be reached"."""


class ResultTooLarge(ServeError):
    """A query's answer is over GLEANPIPE_QUERY_MAX_BYTES: serve answers 413, and the client raises
    this again, so that a caller that can ask for less (explore's pages) knows it from other errors."""


def shown_values(value):
    """``value`` (a query row, a cell) with every inf, -inf and nan as DuckDB prints it, every
    whole number past 64 bits (HUGEINT, a large SUM) as its digits, every TIMETZ as DuckDB prints
    it (``12:00:00+05``), and every MAP key as a text when orjson cannot write it as one. JSON has
    no inf or nan: orjson would turn them into null, and a query would show them as NULL; and
    orjson refuses integers past 64 bits, a time with a time zone, and a key that is a Decimal,
    bytes or any such type (``default=`` is not asked for these), which made the query fail."""
    if isinstance(value, float):
        return value if math.isfinite(value) else "nan" if value != value else "inf" if value > 0 else "-inf"
    if isinstance(value, int) and not -2**63 <= value < 2**64:
        return str(value)
    if isinstance(value, clock_time) and value.tzinfo is not None:
        return _timetz_text(value)
    if isinstance(value, (list, tuple)):
        return [shown_values(v) for v in value]
    if isinstance(value, dict):
        return {_shown_key(k): shown_values(v) for k, v in value.items()}
    return value


def _shown_key(key):
    """A MAP key as orjson's OPT_NON_STR_KEYS writes it, or as text (what ``to_jsonable`` makes of
    the same value) for a key it refuses."""
    key = shown_values(key)
    if key is None or isinstance(key, (str, int, float, date, clock_time, UUID)):  # bool is an int
        return key
    return to_jsonable(key)


def _timetz_text(value: clock_time) -> str:
    """A TIMETZ as DuckDB prints it: ``12:00:00.5+05:30``, ``08:00:00-00:30:15``, ``12:00:00+00``."""
    offset = int(value.utcoffset().total_seconds())
    hours, rest = divmod(abs(offset), 3600)
    minutes, seconds = divmod(rest, 60)
    zone = f"{'-' if offset < 0 else '+'}{hours:02}" + (f":{minutes:02}" if minutes or seconds else "") \
        + (f":{seconds:02}" if seconds else "")
    text = value.replace(tzinfo=None).isoformat()
    return (text.rstrip("0") if "." in text else text) + zone


def dumps(obj) -> bytes:
    return orjson.dumps(obj, default=to_jsonable, option=orjson.OPT_NON_STR_KEYS)


class AdminServer:
    """Serves /status, /query, /load (and ``extra``: serve's /apps/add) for the process that owns
    the warehouse."""

    def __init__(self, *, status, query, load_keys, query_max_bytes: int, extra=None, interrupt=None):
        """``query(sql, params)`` gives the column names, then pages of rows (``read_query_pages``);
        a result over ``query_max_bytes`` of JSON is refused (GLEANPIPE_QUERY_MAX_BYTES).
        ``interrupt(thread)``, if given, stops the reads that ``thread`` runs: those of a request
        whose client hangs up (killed, or gave up) are interrupted instead of running to the end."""
        self.token = secrets.token_urlsafe(24)
        handlers = {"/status": lambda body: status(), "/query": lambda body: _query(query, body, query_max_bytes),
                    "/load": lambda body: load_keys(body["keys"]), **(extra or {})}
        token = self.token
        self._active = 0  # requests being answered
        self._idle = threading.Condition()
        admin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

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
                    body = orjson.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                    thread = threading.get_ident()
                    with _HangUpWatch(self.connection, interrupt and (lambda: interrupt(thread))):
                        result = fn(body)
                    return 200, result if isinstance(result, Encoded) else [dumps(result)]
                except ResultTooLarge as exc:
                    return 413, [dumps({"error": str(exc)})]
                except Exception as exc:  # report to the CLI instead of dropping the connection
                    from .storage.base import StoreError
                    from .warehouse.base import WarehouseClosing, WarehouseUnavailable

                    # a store or warehouse out of reach, or serve stopping, is serve's trouble (503),
                    # not the request's (400)
                    status = 503 if isinstance(exc, (StoreError, WarehouseUnavailable, WarehouseClosing)) else 400
                    return status, [dumps({"error": str(exc) or type(exc).__name__})]

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
        threading.Thread(target=self.httpd.serve_forever, name="gleanpipe-admin", daemon=True).start()

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
    lines = body.get("lines") is True
    pages = query_pages(body["sql"], body.get("params"))
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


def write_state(data_dir: Path, state: dict) -> Path:
    path = Path(data_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)
    return path


def take_serve_lock(data_dir: Path) -> int | None:
    """Hold the data dir's serve lock for as long as this process lives, or None when a running
    serve holds it. The kernel drops the lock on any exit, kill -9 included, so the state file a
    killed serve leaves is known to be stale even when its PID is in use again (a serve that is
    PID 1 of a container, restarted, has the dead one's PID)."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(data_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    for _ in range(20):  # a command looking for serve holds it shared for a moment: ask again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            time.sleep(0.05)
            continue
        # who holds it: a state file is this serve's only if it has this pid (a killed serve's
        # stays until this one removes it)
        # (one fixed-width write: a reader sees the old pid or the new one, never a mix)
        os.pwrite(fd, f"{os.getpid():>{PID_WIDTH}}\n".encode(), 0)
        return fd
    os.close(fd)
    return None


def lock_holder(data_dir: Path) -> int | None:
    """The pid of the serve holding the data dir's lock (0 if its lock file does not say: a serve
    from before it did, or one that has only just taken it), or None when no serve holds it."""
    try:
        fd = os.open(Path(data_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # not held (the shared lock this took goes with the close)
        except BlockingIOError:
            pass
        text = os.pread(fd, PID_WIDTH + 1, 0).strip()
        return int(text) if text.isdigit() else 0
    finally:
        os.close(fd)


def lock_owner(data_dir: Path) -> tuple[int, str] | None:
    """(pid, command line) of the process that holds the data dir's lock, as /proc/locks tells,
    whatever program it is (the lock file's own pid is only ever written by a serve); None when
    /proc does not tell (no /proc, a holder in another PID namespace). The command line is "" when
    it cannot be read."""
    try:
        st = os.stat(Path(data_dir) / LOCK_FILE)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2318356 0 EOF" ("->" lines wait for it)
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == where and parts[4].isdigit() and int(parts[4]):
            pid = int(parts[4])
            return pid, command_line(pid) or ""
    return None


def command_line(pid: int) -> str | None:
    """Process ``pid``'s command line, as far as /proc tells (None when it does not), cut at 200."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return None


def foreign_holder(data_dir: Path) -> str | None:
    """Why no serve can run on or be found for the data dir, said at once, when /proc tells that
    the process holding its lock is not a gleanpipe serve (`flock data/serve.lock ...`, another
    program): waiting for it to write a serve.json, as for a serve still starting, is no use.
    None when the holder is a gleanpipe process, or /proc does not tell."""
    owner = lock_owner(data_dir)
    if not owner or not owner[1] or "gleanpipe" in owner[1]:
        return None
    return (f"another process, pid {owner[0]} ({owner[1]}), holds {Path(data_dir) / LOCK_FILE}, the lock of a "
            "gleanpipe serve: stop it")


def _no_state(data_dir: Path, holder: int, wait_s: float) -> str:
    """Why no serve could be found though the data dir's lock is held, naming its holder: a
    gleanpipe serve only when it is one (another program holding the file was "pid 0")."""
    lock, owner = Path(data_dir) / LOCK_FILE, lock_owner(data_dir)
    late = f"no {STATE_FILE} was written after {wait_s:.0f} s"
    if owner and "gleanpipe" in owner[1]:
        return (f"a gleanpipe serve (pid {owner[0]}) holds {lock} but {late}: it is still starting (see its output), "
                "or the file was removed (restart that serve)")
    if owner:
        return (f"another process, pid {owner[0]} ({owner[1] or 'command line unknown'}), holds {lock}, the lock "
                f"of a gleanpipe serve, and {late}: stop it")
    named = f"its lock file names pid {holder}" if holder else "its lock file names no pid"
    return (f"a process this system does not name holds {lock} ({named}) but {late}: a gleanpipe serve still "
            "starting (see its output), one whose file was removed (restart it), or another program holding the "
            "lock (stop it)")


def remove_state(data_dir: Path) -> bool:
    """Remove serve's state file (on a clean stop, or a killed serve's when the next one has the
    lock); False if there was none."""
    try:
        (Path(data_dir) / STATE_FILE).unlink()
    except FileNotFoundError:
        return False
    return True


def absolute(url: str) -> str:
    """A store or warehouse URL with its local path, if any, made absolute (from this process's
    folder): serve's state file says where it runs whatever folder the CLI is run from."""
    for scheme in ("duckdb://", "file://"):
        if url.startswith(scheme):
            return scheme + str(Path(url[len(scheme):]).resolve())
    return url


def same_location(a: str | None, b: str | None) -> bool:
    """Whether two store or warehouse URLs name the same place (``duckdb://data/w.duckdb`` and
    ``duckdb:///abs/data/w.duckdb`` do, when run from the folder holding ``data``)."""
    if a is None or b is None:
        return a == b
    return absolute(a) == absolute(b)


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
            try:
                state = json.loads((Path(data_dir) / STATE_FILE).read_text())
            except (OSError, ValueError):
                state = None
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
                raise ServeError(_no_state(data_dir, holder, wait_s))
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
        """The answer of ``endpoint`` to be read; ServeError (or ResultTooLarge) for any other status."""
        req = urllib.request.Request(
            self.url + endpoint, data=dumps(payload or {}), method="POST",
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
