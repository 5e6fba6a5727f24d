"""`gleanpipe serve`: the whole pipeline on one machine.

One process owns the DuckDB file and runs:
- the submit edge: gunicorn with GLEANPIPE_WORKERS processes as a child process. With
  GLEANPIPE_SPOOL=on (default) it runs ``gleanpipe.wsgi:spool_app`` on gevent workers
  (GLEANPIPE_CONNECTIONS each): the workers append pings to a write-ahead spool whose
  fdatasync runs off the event loop, and the loader thread turns the spool into objects
  (storage/spool.py). With =off it runs ``wsgi:app`` on gthread workers (GLEANPIPE_THREADS
  each, http_worker.py), which write one fsynced object per ping. With GLEANPIPE_TLS_CERT and
  GLEANPIPE_TLS_KEY it speaks HTTPS (gunicorn's TLS, with serve's context and handshakes: tls.py);
- the in-process trigger: a loader thread that, every GLEANPIPE_LOAD_INTERVAL_MS, loads what
  waits (the spool's records, made objects first; with the spool off, the store's inbox of
  objects stored but not yet loaded), at-least-once; what was stored before a crash or stop
  is loaded on the next start;
- the admin API (admin.py) for `query`, `status`, `replay` and `apps add`.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from . import parent_guard
from .admin import AdminServer, BadRequest, field
from .config import Config, SettingError, check_tls
from .load import Loader
from .ports import in_url
from .read_only_sql import read_only_for
from .serve_state import absolute, remove_state, state_room_message, write_state
from .storage import RawStore, StoreError, open_store, store_scheme
from .storage.local import LocalStore
from .storage.spool import largest_payload
from .storage.spool_reader import SpoolReader
from .validation import SCHEMA_ENV, PingValidator, load_schema
from .warehouse import Warehouse, WarehouseHeld, WarehouseUnavailable, open_when_let_go, warehouse_scheme
from .warehouse.base import duckdb_path_refused

log = logging.getLogger("gleanpipe.serve")


MISSING_GRACE_S = 60.0
ADMIN_ANSWER_WAIT_S = 5.0  # at a stop, for the admin requests to get their answers


# gunicorn's own request parsing limits: its defaults, and the most it allows for a request line.
GUNICORN_REQUEST_LINE = 4094
GUNICORN_REQUEST_LINE_MAX = 8190
GUNICORN_FIELD_SIZE = 8190


def http_limits(cfg: Config) -> list[str]:
    """gunicorn's request line and header field limits, raised (never lowered) so that a path or
    header a little over GLEANPIPE_MAX_URI_BYTES / GLEANPIPE_MAX_HEADER_BYTES reaches the edge and
    gets its 414 / 431 with an error record, instead of gunicorn's bare 400. A percent-encoded
    path is up to 3 bytes on the request line per byte checked by the edge."""
    line = min(GUNICORN_REQUEST_LINE_MAX, max(GUNICORN_REQUEST_LINE, 3 * cfg.max_uri_bytes + 64))
    field = max(GUNICORN_FIELD_SIZE, cfg.max_header_bytes + 64)
    return ["--limit-request-line", str(line), "--limit-request-field_size", str(field)]


GRACEFUL_TIMEOUT_S = 10  # gunicorn's time to finish the requests in flight when it is stopped
# gunicorn's --keep-alive: how long a kept-alive connection waits for its next request, and (on
# gevent workers) how long a request's head may take; http_worker.HEAD_TIMEOUT_S is the same on threads
KEEPALIVE_S = 5
# how long a new serve waits for the port of a killed one: its gunicorn gets SIGTERM (parent_guard.py)
KILLED_SERVE_PORT_WAIT_S = GRACEFUL_TIMEOUT_S + 2


def tls_args(cfg: Config) -> list[str]:
    """gunicorn's HTTPS flags for GLEANPIPE_TLS_CERT and GLEANPIPE_TLS_KEY (checked by check_settings);
    none for plain HTTP."""
    if not cfg.tls:
        return []
    return ["--certfile", str(Path(cfg.tls_cert).absolute()), "--keyfile", str(Path(cfg.tls_key).absolute())]


def submit_url(cfg: Config) -> str:
    """Where serve takes pings: ``http://`` or, with GLEANPIPE_TLS_CERT, ``https://``."""
    return f"{'https' if cfg.tls else 'http'}://{in_url(cfg.host)}:{cfg.port}"


# gunicorn reads some variables of its own, which a user's shell may have set for another app. Those
# with a flag get the value serve means: FORWARDED_ALLOW_IPS (whose peers' X-Forwarded-Proto/-Ssl and
# SCRIPT_NAME/PATH_INFO headers gunicorn takes: gunicorn's default, loopback only) and XDG_RUNTIME_DIR
# (where gunicorn puts a control socket for `gunicornc`, the same path for every gunicorn of the user:
# serve's gunicorn took over another app's, and the user's `gunicornc` reached serve's; serve needs none;
# gunicorn before 25.1 has no control socket, nor the flag). PORT and WEB_CONCURRENCY are --bind's and
# --workers' defaults, which serve always gives.
@functools.cache
def gunicorn_pinned() -> tuple[str, ...]:
    try:
        from gunicorn.config import KNOWN_SETTINGS
    except ImportError:  # no gunicorn here (Windows): serve cannot run, but its module is imported
        return ()
    control = any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS)
    return ("--forwarded-allow-ips", "127.0.0.1,::1", *(["--no-control-socket"] if control else []))


# ... and those without a flag are left out of its environment: GUNICORN_CMD_ARGS (flags of another app),
# SCRIPT_NAME (a path prefix: every request outside it was a 500), SENDFILE, and gunicorn's own re-exec
# handoff (GUNICORN_PID, GUNICORN_FD: listening sockets to take in place of --bind)
GUNICORN_UNSET = ("GUNICORN_CMD_ARGS", "SCRIPT_NAME", "SENDFILE", "GUNICORN_PID", "GUNICORN_FD")


def gunicorn_args(cfg: Config, spool: bool) -> list[str]:
    """The app and worker settings serve gives gunicorn (bench/run.py uses the same).

    Spool on: gevent workers. A request waiting for its spool fdatasync is a parked greenlet,
    not a blocked thread, and the fdatasync itself runs in gevent's thread pool, so one worker
    keeps parsing and validating while the disk syncs (storage/spool.py). Spool off: each ping
    is its own fsynced file written by the request, so the workers are threads: gunicorn's
    gthread worker, whose threads wait at most http_worker.HEAD_TIMEOUT_S for a request's head.
    Both answer a request gunicorn cannot parse in JSON, as the edge answers (http_errors.py).
    """
    common = ["--config", "python:gleanpipe.gunicorn_config",  # not a ./gunicorn.conf.py (gunicorn_config.py)
              *gunicorn_pinned(), "--workers", str(cfg.workers), "--log-level", "warning",
              "--keep-alive", str(KEEPALIVE_S), "--graceful-timeout", str(GRACEFUL_TIMEOUT_S), "--timeout", "60",
              *http_limits(cfg), *tls_args(cfg)]
    if spool:  # gevent's worker (gevent_worker.py); with HTTPS, with serve's TLS handshakes
        return ["gleanpipe.wsgi:spool_app", "--worker-class",
                "gleanpipe.gevent_worker.TLSGeventWorker" if cfg.tls else "gleanpipe.gevent_worker.JSONGeventWorker",
                "--worker-connections", str(cfg.connections), *common]
    return ["gleanpipe.wsgi:app", "--worker-class", "gleanpipe.http_worker.HeadTimeoutThreadWorker",
            "--threads", str(cfg.threads), *common]


class LoaderThread(threading.Thread):
    """Drains store.pending() into the warehouse; acks only what was loaded.

    A receipt is written just before its object is linked into place, so the loader can
    see a receipt whose object is not there yet: that receipt stays for the next round.
    Only after MISSING_GRACE_S (a write that failed or crashed half-way, which its client
    retries) is it dropped.
    """

    def __init__(self, store: RawStore, loader: Loader, batch: int, interval_s: float):
        super().__init__(name="gleanpipe-loader", daemon=True)
        self.store, self.loader, self.batch, self.interval = store, loader, batch, interval_s
        self.stopping = threading.Event()
        self.failing: tuple[str, str] | None = None  # (since, reason) while loads fail, for `status`

    def step(self) -> int:
        """Load one batch of pending objects; returns how many receipts were acknowledged."""
        pending = self.store.pending(self.batch)
        if not pending:
            return 0
        result = self.loader.load_keys([key for _, key in pending])
        missing = set(result.missing)
        done = []
        for receipt, key in pending:
            if key in missing:
                if self.store.receipt_age(receipt) < MISSING_GRACE_S:
                    continue
                log.warning("object %s never appeared; its receipt is dropped", key)
            done.append(receipt)
        self.store.ack(done)
        return len(done)

    def run(self) -> None:
        backoff = self.interval
        while not self.stopping.is_set():
            try:
                started = time.monotonic()
                if self.step() < self.batch:  # caught up: let the next batch fill for one interval,
                    took = time.monotonic() - started  # and at least as long as this one took: a load's
                    # cost grows with its tables (each batch's ids are checked against the whole
                    # table), so a trickle of pings into big tables takes at most half a core
                    self.stopping.wait(max(self.interval - took, took))
                backoff, self.failing = self.interval, None
            except Exception as exc:  # transient (locked, disk): keep the inbox, retry later
                if self.stopping.is_set():  # interrupted by the stop (warehouse.close)
                    log.warning("load stopped by the shutdown; its pings load on the next start: %s", exc)
                    return
                log.warning("load failed, will retry: %s", exc)
                since = self.failing[0] if self.failing else datetime.now(timezone.utc).isoformat(timespec="seconds")
                self.failing = (since, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                backoff = min(backoff * 2, 5.0)
                self.stopping.wait(backoff)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


def _unverified_tls():
    """A client TLS context for serve's own readiness check: it asks its own port whether a worker
    answers, not whether a browser would trust the certificate (mkcert's is signed by a CA of the
    user's machine; a self-signed one by none)."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 30, tls: bool = False) -> None:
    """Return once an HTTP worker answers on ``host:port`` (over TLS with ``tls``), not only once
    gunicorn listens: a worker still booting ignores SIGTERM (gevent's patching comes before its
    signal handlers), so a stop in that moment waited out the whole graceful timeout."""
    deadline = time.monotonic() + timeout
    context = _unverified_tls() if tls else None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the HTTP server exited with code {proc.returncode}")
        try:
            raw = socket.create_connection((host, port), timeout=0.5)
            with (context.wrap_socket(raw) if context else raw) as conn:  # the TLS socket takes raw's place
                conn.settimeout(max(0.5, deadline - time.monotonic()))
                conn.sendall(b"GET /submit HTTP/1.0\r\n\r\n")  # any answer will do (it is a 404)
                if conn.recv(16).startswith(b"HTTP/"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the HTTP server did not answer on {host}:{port} within {timeout:.0f}s")


HELD_WAIT_S = 30.0  # how long serve waits for another process to let the warehouse go


def _open_warehouse(url: str, config: Config) -> Warehouse:
    """The warehouse, once no other process holds it, waiting up to HELD_WAIT_S: a `gleanpipe
    query`, `status` or `explore` run while serve was stopped holds the DuckDB file until it
    ends, and serve (restarted by hand or by a supervisor) failed at once and again."""
    def waiting(holder: str) -> None:
        log.warning("the warehouse %s is held by %s; waiting up to %.0f s for it to be let go", url, holder, HELD_WAIT_S)

    try:
        return open_when_let_go(url, config=config, wait_s=HELD_WAIT_S, on_wait=waiting)
    except WarehouseHeld as exc:  # the holder it found, not a list of guesses, nor DuckDB's CLI advice
        raise RuntimeError(f"the warehouse {url.removeprefix('duckdb://')} is still held by {exc.holder} after "
                           f"{HELD_WAIT_S:.0f} s, and serve needs it to itself: stop that process (or let it "
                           "end), or give this serve another --data-dir") from None
    except WarehouseUnavailable as exc:
        raise RuntimeError(str(exc)) from None


def check_settings(config: Config) -> None:
    """SettingError for a setting serve cannot run with, found from the settings alone: said
    before serve takes its data dir's lock or its port (a port in use is not the first news of a
    store it cannot load from), and again by LocalPipeline for callers that start it directly.
    ValueError, in the words of opening it, for a DuckDB warehouse path DuckDB would misread (a
    data dir with a '?'): that was found only once the port was checked, so a port taken in
    between was said instead."""
    largest = largest_payload(config.max_uri_bytes, config.max_header_bytes)
    if config.spool and config.max_payload_bytes > largest:
        raise SettingError(
            f"GLEANPIPE_MAX_PAYLOAD_BYTES={config.max_payload_bytes} is over the largest payload a spool record "
            f"holds ({largest} bytes with these "
            "GLEANPIPE_MAX_URI_BYTES and GLEANPIPE_MAX_HEADER_BYTES): lower it, or set GLEANPIPE_SPOOL=off")
    check_tls(config.tls_cert, config.tls_key)  # a worker that cannot load them would fail to boot
    # a bad GLEANPIPE_SCHEMA_PATH (SettingError): say so here, not as a gunicorn worker that fails to boot
    schema = load_schema(config.schema_path)
    try:
        PingValidator(schema)
    except ValueError as exc:
        raise SettingError(f"{SCHEMA_ENV}: not a valid JSON schema: {str(exc).splitlines()[0]}") from None
    if store_scheme(config.store_url) != "file":  # a malformed URL is told as such first
        raise SettingError(f"GLEANPIPE_STORE_URL (--store-url): serve loads in-process from a file:// store only, "
                           f"not {config.store_url}: with a cloud store run the load function (gs://) or "
                           "`gleanpipe worker` (s3://)")
    if warehouse_scheme(config.warehouse_url) == "duckdb" and (
            refused := duckdb_path_refused(config.warehouse_url.removeprefix("duckdb://"))):
        raise ValueError(refused)


class LocalPipeline:
    def __init__(self, config: Config):
        self.config = config
        check_settings(config)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = open_store(config.store_url, config)
        if isinstance(self.store, LocalStore) and (stale := self.store.remove_stale_tmp()):
            log.warning("removed %d temp files of writes that never finished (a killed writer)", stale)
        if isinstance(self.store, LocalStore):
            # drains the HTTP workers' spool (storage/spool.py), and with the spool off what an
            # earlier serve with it on left there (a crash, or a stop before its loader's next look):
            # acknowledged pings that only a reader of the spool loads
            self.store = SpoolReader(self.store)
        self.warehouse: Warehouse = _open_warehouse(config.warehouse_url, config)
        self.loader = Loader(self.store, self.warehouse)
        self.loader_thread = LoaderThread(self.store, self.loader, config.load_batch,
                                          config.load_interval_ms / 1000)
        self.admin = AdminServer(status=self.status,
                                 query=read_only_for(config.warehouse_url, self.warehouse.read_query_pages),
                                 load_keys=self.load_keys, extra={"/apps/add": self.add_app},
                                 interrupt=getattr(self.warehouse, "interrupt_reads", None),
                                 query_max_bytes=config.query_max_bytes)
        self.http: subprocess.Popen | None = None

    def status(self) -> dict:
        out = self.warehouse.status()
        failing = self.loader_thread.failing
        out["loading_failing"] = {"since": failing[0], "reason": failing[1]} if failing else None
        try:  # counted, not written out as objects: that is the loader's work
            out["pending"] = (self.store.backlog() if isinstance(self.store, SpoolReader)
                              else len(self.store.pending(sys.maxsize)))
        except (StoreError, OSError) as exc:  # a full disk, a folder it may not read: the rest still shows
            out["pending"], out["store_error"] = None, str(exc)
        return out

    def load_keys(self, keys: list[str]) -> dict:
        if isinstance(self.store, SpoolReader):  # not while the spool is writing objects in place
            with self.store.lock:
                return self.loader.load_keys(keys).as_dict()
        return self.loader.load_keys(keys).as_dict()

    def add_app(self, body: dict) -> dict:
        """Store app definitions parsed by `gleanpipe apps add` (this process owns the warehouse).
        Definitions not as `apps add` sends them, or of an app whose dataset the warehouse cannot
        hold, are the request's fault (BadRequest: 400)."""
        from .dictionary.catalog import store_app
        from .dictionary.definitions import DefinitionError, check_parsed
        from .warehouse.base import DatasetUnusable

        app = field(body, "app", dict, "the app's definitions, an object")
        try:
            check_parsed(app)
        except DefinitionError as exc:
            raise BadRequest("the app's definitions are not as `gleanpipe apps add` sends them: "
                             + "; ".join(exc.messages)) from None
        try:
            return store_app(self.warehouse, app)
        except DatasetUnusable as exc:
            raise BadRequest(str(exc)) from exc

    def start(self) -> None:
        cfg = self.config
        self.loader_thread.start()
        env = {**os.environ, **cfg.as_env()}  # each setting as serve took it, flags included
        for name in GUNICORN_UNSET:  # gunicorn's settings are serve's (gunicorn_args), no one else's
            env.pop(name, None)
        cmd = [sys.executable, "-m", "gunicorn", *gunicorn_args(cfg, spool=cfg.spool),
               "--bind", f"{in_url(cfg.host)}:{cfg.port}"]
        # gunicorn stops (gracefully) if this process dies, even by SIGKILL: see parent_guard.py.
        # A session of its own: a terminal's Ctrl-C reaches this process only, which stops gunicorn
        # gracefully (SIGTERM); gunicorn takes a SIGINT of its own as "drop the requests in flight".
        self.http = subprocess.Popen(parent_guard.command(os.getpid(), cmd), env=env, start_new_session=True)
        wait_for_port({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(cfg.host, cfg.host), cfg.port, self.http, tls=cfg.tls)
        self.admin.start()  # after: a port of its own can then not be the submit port (AdminServer.start)
        try:  # in the room the CLI reserved (serve_state.reserve_state): a full disk does not refuse it
            write_state(cfg.data_dir, {
                "pid": os.getpid(), "submit_url": submit_url(cfg), "admin_url": self.admin.url, "token": self.admin.token,
                "warehouse_url": absolute(cfg.warehouse_url), "store_url": absolute(cfg.store_url),
            })
        except OSError as exc:  # no room reserved (LocalPipeline run directly), another file system's refusal
            raise RuntimeError(state_room_message(cfg.data_dir, exc)) from None

    def stop(self) -> None:
        try:
            self._stop()
        finally:  # whatever went wrong, this serve is gone: the next command must not look for it
            remove_state(self.config.data_dir)

    def _stop(self) -> None:
        if self.http and self.http.poll() is None:
            self.http.terminate()
            try:
                self.http.wait(timeout=2)
            except subprocess.TimeoutExpired:
                # A worker that was still booting when SIGTERM came ignored it (gevent patches before
                # the worker sets its signal handlers): once more, to gunicorn's whole process group.
                try:
                    os.killpg(self.http.pid, signal.SIGTERM)
                except ProcessLookupError:  # gone in the meantime
                    pass
                try:
                    self.http.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.http.kill()
        self.loader_thread.stop()
        self.admin.stop()
        try:  # interrupts the queries still running (and a load still running after the loader's wait)
            self.warehouse.close()
        except Exception as exc:  # serve stops all the same; what was committed is in the file
            log.warning("the warehouse did not close cleanly: %s", exc)
        if not self.admin.wait(ADMIN_ANSWER_WAIT_S):  # their clients get "serve is stopping"
            log.warning("an admin request was still being answered when serve stopped")

    def run_forever(self, on_ready=None) -> int:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        try:
            self.start()
            if on_ready:
                on_ready(self)
            while not stop.wait(0.5):
                if self.http.poll() is not None:
                    log.error("the HTTP server exited with code %s", self.http.returncode)
                    return 1
        finally:
            self.stop()
        return 0
