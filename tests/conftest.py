"""Shared fixtures: real stores, real DuckDB files, a real `gleanpipe serve` on loopback."""

from __future__ import annotations

import contextlib
import copy
import gzip
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest

from gleanpipe import functions as gp_functions
from gleanpipe.admin import AdminClient
from gleanpipe.serve_state import STATE_FILE
from gleanpipe.config import Config
from gleanpipe.emulate import free_port
from gleanpipe.storage.local import LocalStore
from gleanpipe.warehouse.duckdb import DuckDBWarehouse

pytest_plugins = ["emulators", "bq_emulator"]  # fake-gcs-server, moto, Pub/Sub (tests/emulators.py); bqemulator (tests/bq_emulator.py)

ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    """The project's ../shared (the upstream schema samples): beside this checkout, or, for a clone
    made elsewhere (CI clones main), beside the local repository it was cloned from."""
    here = ROOT.parent / "shared"
    if here.is_dir():
        return here
    try:
        origin = subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return here
    if origin.startswith("file://"):
        origin = origin[len("file://"):]
    if origin.startswith("/") and (Path(origin).parent / "shared").is_dir():
        return Path(origin).parent / "shared"
    return here


SHARED = _shared_dir()
APP = "org-example-toolbox"
DATASET = "org_example_toolbox"

CLIENT_INFO = {
    "app_build": "42",
    "app_channel": "beta-3",
    "app_display_version": "1.2.3",
    "architecture": "x86_64",
    "first_run_date": "2026-11-22+00:00",
    "os": "Linux",
    "os_version": "6.1.0-13-amd64",
    "telemetry_sdk_build": "71.0.0",
    "locale": "en-US",
}


def make_ping(client_id: str | None = None, metrics: dict | None = None, events: list | None = None,
              seq: int = 0, **extra) -> dict:
    """A ping shaped like the ones the Glean SDK sends (see shared/docs/glean-wire-format.md)."""
    client_info = copy.deepcopy(CLIENT_INFO)
    if client_id:
        client_info["client_id"] = client_id
    ping = {
        "client_info": client_info,
        "ping_info": {"seq": seq, "start_time": "2026-11-22T12:34:25.443+00:00",
                      "end_time": "2026-11-22T12:40+00:00", "reason": "active"},
    }
    if metrics is not None:
        ping["metrics"] = metrics
    if events is not None:
        ping["events"] = events
    ping.update(extra)
    return ping


def gz(doc) -> bytes:
    return gzip.compress(orjson.dumps(doc) if not isinstance(doc, bytes) else doc)


def submit_path(doc_type: str = "baseline", document_id: str | None = None, app: str = APP) -> str:
    return f"/submit/{app}/{doc_type}/1/{document_id or uuid.uuid4()}"


SDK_HEADERS = {
    "Content-Type": "application/json; charset=utf-8",
    "Content-Encoding": "gzip",
    "Date": "Mon, 23 Nov 2026 08:00:00 GMT",
    "X-Telemetry-Agent": "Glean/71.0.0 (python on Linux)",
}


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def config(data_dir) -> Config:
    return Config.from_env(environ={}, data_dir=data_dir)


@pytest.fixture
def store(config) -> LocalStore:
    return LocalStore(config.store_url[len("file://"):])


@pytest.fixture
def warehouse(config):
    wh = DuckDBWarehouse(config.warehouse_url[len("duckdb://"):])
    yield wh
    wh.close()


@pytest.fixture
def fn_env(monkeypatch, data_dir):
    """Environment for functions/main.py: local defaults under a temp data dir."""
    for name in list(os.environ):
        if name.startswith("GLEANPIPE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GLEANPIPE_DATA_DIR", str(data_dir))
    gp_functions.submit_handler.cache_clear()
    gp_functions.loader.cache_clear()
    yield data_dir
    if gp_functions.loader.cache_info().currsize:
        gp_functions.loader().warehouse.close()
    gp_functions.submit_handler.cache_clear()
    gp_functions.loader.cache_clear()


class ServeProcess:
    """`gleanpipe serve` as a user runs it, in a subprocess on a free loopback port."""

    def __init__(self, data_dir: Path, port: int | None = None, env: dict | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "ServeProcess":
        self.log = open(self.data_dir.parent / f"serve-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gleanpipe.cli", "serve", "--data-dir", str(self.data_dir),
             "--port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
        )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"serve exited with {self.proc.returncode}: {self.read_log()}")
                if AdminClient.find(self.data_dir) and self._state_pid() == self.proc.pid:
                    return self  # its own state: a killed serve's stays until the new one has the lock
                time.sleep(0.05)
            raise RuntimeError(f"serve did not start: {self.read_log()}")
        except BaseException:  # not started (or find refused it): the test never gets it to stop
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            raise

    def _state_pid(self) -> int | None:
        try:
            return json.loads((self.data_dir / STATE_FILE).read_text()).get("pid")
        except (OSError, ValueError):
            return None

    def read_log(self) -> str:
        return (self.data_dir.parent / f"serve-{self.port}.log").read_text(errors="replace")

    @property
    def admin(self) -> AdminClient:
        return AdminClient.find(self.data_dir)

    def query(self, sql: str):
        return self.admin.query(sql)

    def try_query(self, sql: str):
        """Rows of `sql`, or None while its table does not exist yet."""
        try:
            return self.query(sql)[1]
        except RuntimeError as exc:
            if "does not exist" in str(exc):
                return None
            raise

    def wait_rows(self, sql: str, expected: int, timeout: float = 10):
        """Poll until `sql` (a count query) returns `expected`; returns the last value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            got = self.try_query(sql)
            value = got[0][0] if got else None
            if value == expected:
                return value
            time.sleep(0.05)
        return value

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def serve(data_dir):
    data_dir.mkdir(parents=True, exist_ok=True)
    server = ServeProcess(data_dir).start()
    yield server
    server.stop()


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """The running children of ``pid``."""
    out = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid == pid and running(int(name)):
            out.append(int(name))
    return out


def wait_gone(pids: list[int], timeout: float = 20) -> list[int]:
    """Wait until none of ``pids`` runs. Returns those still running after ``timeout``, killed
    with SIGKILL first: a failing test must not leave processes behind."""
    deadline = time.monotonic() + timeout
    while any(running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in pids if running(p)]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it went in the meantime; still reported as late
            pass
    return left


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`gleanpipe <args>` as a user runs it, with no GLEANPIPE_* variable from the caller's
    environment (only those in ``env``)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    return subprocess.run([sys.executable, "-m", "gleanpipe.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**clean, **(env or {})})


def post(url: str, body: bytes, headers: dict | None = None, method: str = "POST"):
    """(status, json body or None, headers) for one request, without raising on 4xx/5xx."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method, headers=headers or SDK_HEADERS)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
    return status, (json.loads(raw) if raw else None), hdrs


@contextlib.contextmanager
def taken_port():
    """A loopback port a socket of this test listens on, for a serve that must refuse to start
    before it looks at its port: a free_port() could be taken by another process before serve
    checks it (seen under a soak), and a refusal said only after the port check would be "Address
    already in use" here, not the refusal the test expects."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@contextlib.contextmanager
def duckdb_held_elsewhere(path: Path):
    """Another process holds ``path`` open in DuckDB (its write lock: a real lock, not a mock)
    until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, sys; con = duckdb.connect({str(path)!r}); "
                               "print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


@contextlib.contextmanager
def small_disk(tmp_path: Path, size: str = "1m"):
    """A real small disk for full-disk tests: a tmpfs of ``size`` mounted under ``tmp_path``
    (the test is skipped where none can be mounted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)  # lazy: a failed test may leave a file open


def fill_disk(path: Path) -> None:
    """Write the file ``path`` until its disk has not one byte left."""
    import errno

    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def until(condition, what: str, timeout: float = 10) -> None:
    """Poll ``condition()`` until it is true; fail saying ``what`` was never seen."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never saw: {what}"
        time.sleep(0.005)


def read_all(sock) -> bytes:
    """What comes on ``sock`` until the server closes the connection."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def host_refusal(host: str, server: str = "serve") -> dict:
    """The JSON body of a 403 host_not_allowed (host_check.py) to the Host ``host``, from ``server``
    ("serve", or "explore's Datasette"), both on 127.0.0.1."""
    return {"error_type": "host_not_allowed",
            "error_message": f"Host {host!r} is not allowed here: {server} listens on loopback (127.0.0.1) and "
                             "answers its pages only to a loopback Host (localhost, 127.0.0.1, [::1]) or a name of "
                             "GLEANPIPE_ALLOWED_HOSTS, so that a web page cannot read them through DNS rebinding"}


def thread_at_line(thread: threading.Thread, function, text: str) -> bool:
    """Whether ``thread`` is running (or blocked in) the line of ``function`` that holds ``text``,
    seen in its current frame (sys._current_frames: the real thread's state, nothing patched)."""
    lines, first = inspect.getsourcelines(function)
    line = first + next(i for i, ln in enumerate(lines) if text in ln)
    frame = sys._current_frames().get(thread.ident)
    return frame is not None and frame.f_code is function.__code__ and frame.f_lineno == line


def holds_open(pid: int, path) -> bool:
    """Whether process ``pid`` has ``path`` open (Linux /proc)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # an fd closed while we looked, or the process ended
        return False


def ctrl_c_when_open(args: list[str], path, delay: float) -> subprocess.CompletedProcess:
    """``gleanpipe args`` (no GLEANPIPE_* variables), and SIGINT to its process group, as a terminal
    sends Ctrl-C, ``delay`` seconds after it opened ``path``: the Ctrl-C comes in the middle of its work."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    proc = subprocess.Popen([sys.executable, "-m", "gleanpipe.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        until(lambda: holds_open(proc.pid, path) or proc.poll() is not None, f"gleanpipe {args[0]} opening {path}", 30)
        assert proc.poll() is None, proc.communicate()  # still working
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def put_many_unsynced(store, n: int) -> None:
    """``n`` baseline pings of the test app (seq 0 to n-1) straight into ``store``, unsynced: quick
    to write, for tests that need many objects and not their durability."""
    from gleanpipe import rawobject
    from gleanpipe.naming import DocumentPath

    for i in range(n):
        path = DocumentPath(APP, "baseline", "1", str(uuid.UUID(int=i + 1, version=4)))
        meta = {"submission_timestamp": "2026-11-23T08:00:00.000000Z", "headers": {}, "app_id": path.app_id,
                "doc_type": "baseline", "version": "1", "document_id": path.document_id, "key": path.key}
        store.put_unsynced(path.key, rawobject.encode(meta, json.dumps(make_ping(seq=i)).encode()))


# --- headless Chromium (Debian's, which `make test` installs) through Playwright -----------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for a module's tests (Playwright never downloads a browser here)."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed: run `make test` (it installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@contextlib.contextmanager
def web_origin(pages: dict[str, tuple[bytes, str]]):
    """A web app's own origin for the browser tests: a local HTTP server on a port of its own
    (another origin than serve's) that answers GET of each path in ``pages`` with its (body,
    content type), and 404 otherwise. Yields its URL, ``http://localhost:<port>/``."""
    import http.server

    class Pages(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path not in pages:
                self.send_error(404)
                return
            body, kind = pages[self.path]
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
