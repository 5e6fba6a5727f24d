"""serve's HTTP worker with GLEANPIPE_SPOOL=on: gunicorn's gevent worker, with a prompt stop, and
with HTTPS (GLEANPIPE_TLS_CERT) serve's TLS context (tls.ssl_context) and each connection's TLS
handshake in the connection's own greenlet, within tls.HANDSHAKE_TIMEOUT_S.

A stop: gunicorn's gevent worker looked whether it had been asked to stop (SIGTERM, which serve's
stop sends gunicorn, and gunicorn its workers) once a second, and once stopping, whether its
connections had ended, once a second too; a connection kept alive between two requests counted,
so an idle client held the stop until its keep-alive (serve.KEEPALIVE_S, 5 s) ran out. Each
Ctrl-C of serve took 1-6 s, and each test that starts and stops serve paid it. Here (StopPromptly)
the stop signal wakes the worker's loop at once; the worker stops listening, ends at once each
connection that waits for a request of which no byte has come, and waits, up to gunicorn's
graceful timeout, only for those whose request has begun: a request in flight is answered (with
``Connection: close``), and its 200 still means its ping is on disk.

gevent's server did the handshake itself, on accepting the connection: with no time limit (a
client that connected and sent nothing, or stopped half-way through its ClientHello, held one of
the worker's GLEANPIPE_CONNECTIONS for ever) and with a traceback in serve's output for every
failure (a plain-HTTP request to the HTTPS port, a browser that does not trust the certificate,
serve's own readiness check while the worker was still booting). Here a handshake that does not
end in time closes the connection, unanswered, as a head that does not come whole does (gevent
workers bound a head by gunicorn's keep-alive, serve.KEEPALIVE_S); one that fails is a line in
the log, as gunicorn's gthread worker writes it (GLEANPIPE_SPOOL=off), and a client that went
away during it is none. Plain HTTP (no GLEANPIPE_TLS_CERT) runs JSONGeventWorker: gunicorn's
gevent worker with the prompt stop, whose answer to a request gunicorn cannot parse is JSON
(http_errors.py), as TLSGeventWorker's is.
"""

from __future__ import annotations

import fcntl
import functools
import socket
import ssl
import struct
import sys
import termios
import time

import gevent
import gevent.event
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn import util
from gunicorn.sock import ssl_context
from gunicorn.workers.ggevent import GeventWorker

from . import tls
from .http_errors import JSONParseErrors

HEARTBEAT_S = 1.0  # how often a worker tells gunicorn's master that it lives, while it serves and while it stops


def _unread(client) -> int | None:
    """How many bytes the kernel holds for ``client``'s socket, not read yet (FIONREAD); None once
    the socket is closed (fileno -1). Never blocks."""
    try:
        return struct.unpack("i", fcntl.ioctl(client.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return None


def request_waiting(client) -> bool:
    """Whether bytes the client sent wait on ``client``, not read yet: the start of a request it
    has sent (on a TLS socket, also what was decrypted but not taken). Never blocks."""
    if client is None:
        return False
    pending = getattr(client, "pending", None)  # ssl sockets
    if pending is not None and pending():
        return True
    return (_unread(client) or 0) > 0


def bytes_taken(client) -> int | None:
    """How many bytes of the connection ``client`` has read from the kernel: those TCP received
    (Linux's TCP_INFO, tcpi_bytes_received, at offset 128) less those not read yet; None where the
    kernel does not say. A wait that began at n has seen a request begin once more than n came,
    read already (the parser takes a head's bytes as they come, and waits for the rest) or not."""
    try:
        info = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 136)
    except (OSError, ValueError, AttributeError):  # closed, not TCP, no TCP_INFO (not Linux)
        return None
    unread = _unread(client)
    if len(info) < 136 or unread is None:
        return None
    return struct.unpack_from("Q", info, 128)[0] - unread


def request_begun(client, taken: int | None) -> bool:
    """Whether a byte came on ``client`` since it had read ``taken`` (bytes_taken at a wait's start)."""
    if request_waiting(client):
        return True
    now = bytes_taken(client) if taken is not None else None
    return now is not None and now > taken


class HeadWait:
    """A connection's wait for the head of its next request (gunicorn's timeout_ctx around the
    parse), or for a TLS handshake (TLSGeventWorker): gunicorn's own bound, a gevent.Timeout of
    the keep-alive that ends the connection quietly, which a stopping worker also fires at once
    (StopPromptly.end_if_idle) unless a byte has come since the wait began."""

    def __init__(self, worker: StopPromptly, seconds: float, client=None):
        self.worker, self.timeout, self.greenlet = worker, gevent.Timeout(seconds, False), None
        self.client, self.taken = client, None

    def __enter__(self) -> HeadWait:
        self.greenlet = gevent.getcurrent()
        if self.client is None:
            self.client = self.worker.clients.get(self.greenlet)
        self.taken = bytes_taken(self.client) if self.client is not None else None
        self.worker.head_waits[self.greenlet] = self
        self.timeout.start()
        if self.worker.stopping:  # a request answered during the stop: no next one is waited for
            self.worker.end_when_idle(self)
        return self

    def __exit__(self, kind, value, traceback) -> bool:
        self.worker.head_waits.pop(self.greenlet, None)
        return bool(self.timeout.__exit__(kind, value, traceback))  # True: its own timeout, swallowed


class ListenerName:
    """What gunicorn's handle takes of the listening socket a connection came on: its name, read
    here once, when the worker begins to listen. A stop closes that socket (StreamServer.close)
    while the open connections go on; a connection whose handle read the name after it (over
    HTTPS: one whose TLS handshake ended during the stop) met a closed socket, OSError EBADF: a
    traceback in serve's log, and its request unanswered."""

    def __init__(self, sock):
        self.name = sock.getsockname()

    def getsockname(self):
        return self.name


class StopPromptly(GeventWorker):
    """gunicorn's GeventWorker that stops as soon as it is asked and as soon as its requests in
    flight are answered (see the module). Its run() is a loop of its own, which differs from
    gunicorn's in three points: it waits for the stop signal (an event the signal sets), not a
    second at a time; once stopping it ends the connections that wait for a request with none
    begun (gunicorn's waited for their keep-alive to run out); and it waits for the others by
    joining their greenlets, not by looking once a second. As gunicorn's, it tells the master it
    lives every HEARTBEAT_S, serves each listening socket with a gevent StreamServer whose pool
    holds GLEANPIPE_CONNECTIONS (gunicorn's worker_connections) connections, and at the end of
    gunicorn's graceful timeout kills the connections still open."""

    def init_signals(self):
        # here, not in __init__: the worker object is made in gunicorn's master, before the fork and
        # before gevent is set up for the worker's process (GeventWorker.init_process)
        self.exit_asked = gevent.event.Event()
        self.stopping = False
        self.head_waits: dict = {}  # greenlet -> its HeadWait, while it waits for a request's head
        self.clients: dict = {}  # greenlet -> the socket of its connection
        super().init_signals()

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)  # alive = False
        self.exit_asked.set()  # gevent runs the handler at once, in the loop: run() wakes

    def handle(self, listener, client, addr):
        me = gevent.getcurrent()
        self.clients[me] = client
        try:
            super().handle(listener, client, addr)
        finally:
            self.clients.pop(me, None)

    def timeout_ctx(self):
        return HeadWait(self, self.cfg.keepalive)

    def end_when_idle(self, wait: HeadWait) -> None:
        """End ``wait``'s connection if no byte of a request has come on it since the wait began
        (read by the parser or not: a head half sent is answered once whole), from gevent's loop:
        there the check and the end are one step, with the connection's greenlet still in its wait."""
        gevent.get_hub().loop.run_callback(self.end_if_idle, wait)

    def end_if_idle(self, wait: HeadWait) -> None:
        if self.head_waits.get(wait.greenlet) is not wait or request_begun(wait.client, wait.taken):
            return  # its head was read meanwhile, or a request has begun: it is answered
        try:
            wait.greenlet.throw(wait.timeout)  # as if the keep-alive ran out: the connection is closed
        except BaseException:  # noqa: BLE001 - as gevent's own kill reports a greenlet's error
            gevent.get_hub().handle_error(wait.greenlet, *sys.exc_info())

    def listen(self, sock) -> StreamServer:
        sock.setblocking(1)
        extra = {"ssl_context": ssl_context(self.cfg)} if self.cfg.is_ssl else {}
        handle = functools.partial(self.handle, ListenerName(sock))
        server = StreamServer(sock, handle=handle, spawn=Pool(self.worker_connections), **extra)
        if self.cfg.workers > 1:
            server.max_accept = 1  # one connection per wake-up: the other workers get theirs
        server.start()
        return server

    def run(self):
        servers = [self.listen(sock) for sock in self.sockets]
        while self.alive:
            self.notify()
            self.exit_asked.wait(HEARTBEAT_S)
        for server in servers:
            server.close()  # no new connection; the open ones go on
        self.stopping = True
        for wait in list(self.head_waits.values()):
            self.end_when_idle(wait)
        deadline = time.monotonic() + self.cfg.graceful_timeout
        pools = [server.pool for server in servers]
        while any(len(pool) for pool in pools):
            left = deadline - time.monotonic()
            if left <= 0:
                self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
                for server in servers:
                    server.stop(timeout=1)
                return
            self.notify()
            for pool in pools:
                pool.join(timeout=min(left, HEARTBEAT_S))


class JSONGeventWorker(JSONParseErrors, StopPromptly):
    """gunicorn's GeventWorker, stopping promptly (StopPromptly), whose answer to a request gunicorn
    cannot parse is JSON (http_errors.py)."""


class TLSGeventWorker(JSONGeventWorker):
    """gunicorn's GeventWorker whose TLS handshakes are bounded and quiet (see the module)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cfg.set("ssl_context", tls.gevent_ssl_context)  # its sockets leave the handshake to handle()

    def handle(self, listener, client, addr):
        client.setblocking(1)
        shaken = False
        try:
            # a HeadWait: a stop ends at once a connection none of whose handshake has come
            with HeadWait(self, tls.HANDSHAKE_TIMEOUT_S, client):
                client.do_handshake()
                shaken = True
        except OSError as exc:  # SSLError is one
            if tls.handled_handshake_failure(self.log, client, addr, exc):
                pass
            elif isinstance(exc, ssl.SSLError):  # a client that refused the certificate, TLS garbage
                self.log.warning("Invalid request from ip=%s: %s", addr[0] if addr else "", exc)
            else:
                self.log.warning("TLS handshake from %s failed: %s", addr, exc)
        else:
            if shaken:
                return super().handle(listener, client, addr)
            self.log.debug("TLS handshake from %s took over %g s or none came as serve stopped: closed", addr,
                           tls.HANDSHAKE_TIMEOUT_S)
        util.close(client)
