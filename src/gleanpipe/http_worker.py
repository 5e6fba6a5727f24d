"""serve's HTTP worker with GLEANPIPE_SPOOL=off: gunicorn's gthread worker, with a wall-clock
limit on reading a request's head (HEAD_TIMEOUT_S).

gunicorn's gthread worker gives each connection a thread of its pool, which waits (up to 5 s)
for the first bytes and then reads the request line and headers from a blocking socket with no
timeout. A client that stopped part-way through its head (``P`` and nothing more: a phone that
lost its network mid-request) held that thread for ever, and with 2 workers x 8 threads, 16 such
clients left nobody else an answer. gunicorn's gevent workers (serve's default, spool on) bound
a head by their keep-alive, 5 s, which serve gives gunicorn (``ggevent``'s ``timeout_ctx`` around
the parse); this worker gives its threads the same bound.

The clock is read_deadline's watcher, the one that bounds bodies (GLEANPIPE_BODY_TIMEOUT_S). It
starts when the head has begun to come and a pool thread has the connection (a kept-alive one
whose next request the poller saw coming, or a new one once its first bytes are there: gunicorn
first waits up to 5 s for them, then hands a quiet new connection back to its poller), so it
bounds how long one thread waits for one head, and a request whose head waited whole in the
queue for a free thread is not cut. (Started before gunicorn's wait for the first bytes, it ran
out with it: a new connection quiet for 5 s was closed unanswered, and a head whose first byte
came at 4.9 s had 0.1 s for the rest.) It stops once the head is parsed, before the app runs:
the app's body read has its own deadline. When it runs out the watcher shuts the socket's read
side down, the blocked read ends (end of stream), gunicorn drops the half-read request as a client
that went away and closes the connection. Nothing is answered and nothing is recorded in the
error store: there is no request yet to answer or record.

A keep-alive connection idle between requests is not a thread's: it waits in the worker's
poller, for gunicorn's keep-alive, as before. serve speaks HTTP/1.1 (no HTTP/2), over TLS with
GLEANPIPE_TLS_CERT (tls.py): the clock then bounds the handshake and the head together.

A stop (SIGTERM) wakes gunicorn's gthread worker at once, but gunicorn (27) keeps its kept-alive
connections open for up to 2 s more (STOP_KEEPALIVE_LINGER), in case a client is sending its next
request already: an idle keep-alive client held each stop of serve 2 s. Here a stopping worker
closes them at its next look at its poller, which first hands on those whose next request has
begun (its bytes make the socket readable): those are answered, with ``Connection: close``. So
are new connections that have sent nothing yet (a browser's preconnect, a port probe): gunicorn's
thread waited up to 5 s for their first byte (_FIRST_BYTES_S) and held the stop that long, and
one given back to the poller waited for its keep-alive; a stop ends the first at once and the
second at the stopping worker's next look at its poller (gunicorn's stop loop looks about once a
second).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time

from gunicorn.workers import gthread
from gunicorn.workers.gthread import ThreadWorker

from . import tls
from .http_errors import JSONParseErrors
from .linger import linger
from .read_deadline import WATCHER

# gunicorn's newer gthread (27 has it): a new connection's thread waits this long for its first bytes, then
# gives it back to the poller (_DEFER). Older gthread workers give a thread only readable sockets.
_DEFER = getattr(gthread, "_DEFER", None)
_FIRST_BYTES_S = getattr(gthread, "DEFAULT_WORKER_DATA_TIMEOUT", 5.0)

HEAD_TIMEOUT_S = 5.0  # as gunicorn's gevent workers bound a head: serve's --keep-alive (serve.KEEPALIVE_S)
# a connection closed after its answer waits this long at most for the client to close its end, in
# the request's own thread (gunicorn's graceful close waits as long, on the worker's main thread)
CLOSE_LINGER_S = 2.0


class HeadTimeoutThreadWorker(JSONParseErrors, ThreadWorker):
    """gunicorn's ThreadWorker whose threads wait at most HEAD_TIMEOUT_S for a request's head
    (and, with HTTPS, for the TLS handshake before it: serve's TLS context, tls.py), and whose
    answer to a request gunicorn cannot parse is JSON (http_errors.py)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cfg.is_ssl:
            self.cfg.set("ssl_context", tls.ssl_context)

    def init_process(self):
        # a pipe that a stop makes readable for good (handle_exit): a thread waiting for a new
        # connection's first byte waits on it too. Here, in the worker's own process, not in
        # __init__ (gunicorn makes the worker object in its master, before the fork)
        self.stop_read, self.stop_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        super().init_process()

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        try:
            os.write(self.stop_write, b"x")
        except OSError:  # written already (a second signal): it stays readable
            pass

    def first_bytes(self, conn) -> bool | None:
        """gunicorn's wait for a new connection's first byte (TConn.wait_for_data), which a stop
        also ends: True once a byte came, None if the stop came first, False at _FIRST_BYTES_S."""
        poll = select.poll()
        poll.register(conn.sock, select.POLLIN)
        poll.register(self.stop_read, select.POLLIN)
        ready = {fd for fd, _ in poll.poll(_FIRST_BYTES_S * 1000)}
        if conn.sock.fileno() in ready:
            conn.data_ready = True
            return True
        return None if ready else False

    def handle(self, conn):
        if _DEFER is not None and not conn.initialized and not conn.data_ready:
            came = self.first_bytes(conn)  # gunicorn's own wait, before the head's clock
            if came is None:  # a stop, and nothing asked on it: closed. Shut first, or gunicorn's
                with contextlib.suppress(OSError):  # lingering close waits up to 2 s for the client's
                    conn.sock.shutdown(socket.SHUT_RDWR)  # end, in the loop the stop runs in
                return False
            if not came:
                return _DEFER
        dup = None
        if self.cfg.is_ssl and not conn.initialized:
            # gunicorn wraps a new connection's socket in TLS (conn.init), which takes its descriptor
            # away from conn.sock (detach): shut down then, it shut nothing, and a client that
            # stalled in its handshake or head held the thread for ever. The clock gets a
            # descriptor of its own on the same connection.
            dup = socket.socket(fileno=socket.dup(conn.sock.fileno()))
        conn.head_deadline = WATCHER.watch(conn.sock if dup is None else dup, HEAD_TIMEOUT_S)
        try:
            kept = super().handle(conn)
        finally:  # a head that never came whole (the deadline, a client that left), an error
            WATCHER.done(conn.head_deadline)
            if dup is not None:
                dup.close()
        if kept is False:
            # closed after its answer (the client asked for it, HTTP/1.0, an error): gunicorn closes it
            # on the worker's main thread, waiting there up to 2 s for the client to close its end
            # (util.close_graceful), and every other connection of the worker waited with it: a client
            # that sent "Connection: close" and held its socket held each ping of that worker 2 s.
            # The wait is here, in this request's thread; both sides shut, gunicorn's ends at once.
            linger(conn.sock, CLOSE_LINGER_S)
        return kept

    def handle_error(self, req, client, addr, exc):
        """A client that went away during its TLS handshake, or that the head's clock cut off in it,
        is a debug line, as gunicorn has it without serve's TLS context and as the gevent worker
        (gevent_worker.py) has it: under OP_IGNORE_UNEXPECTED_EOF (tls.py) OpenSSL reports that end
        as SSLZeroReturnError, not the SSL_ERROR_EOF gunicorn keeps quiet, and each port probe,
        unused browser preconnect or stalled handshake was a WARNING "Invalid request". So was a
        client that reset its connection before its handshake (the ssl module's "Closed before TLS
        handshake with data in recv buffer" as gunicorn wraps the socket)."""
        if req is None and tls.handled_handshake_failure(self.log, client, addr, exc):
            return  # (gunicorn's own answer to a plain-HTTP request, a 403 page inside TLS, was lost)
        super().handle_error(req, client, addr, exc)

    def _cap_keepalive(self, deadline):
        """gunicorn's stopping worker caps its kept-alive connections' keep-alive at ``deadline``
        (2 s on); here they are closed at once, unless a request of theirs has begun (see the
        module). gunicorn's gthread calls this when the stop begins; finish_request, below, for
        each connection kept after an answer given during the stop."""
        now = time.monotonic()
        for conn in self.keepalived_conns:
            conn.timeout = min(conn.timeout, now)
        for conn in getattr(self, "pending_conns", ()):  # new connections given back to the poller (_DEFER)
            conn.timeout = min(conn.timeout, now)

    def finish_request(self, conn, fs):
        super().finish_request(conn, fs)
        if not self.alive:  # stopping: the connection of a request answered now is not kept either
            self._cap_keepalive(time.monotonic())

    def handle_request(self, req, conn):
        """The head is whole: the clock stops before the app reads the body and answers."""
        WATCHER.done(conn.head_deadline)
        if conn.head_deadline.expired:  # it came whole just as the read side was shut: the
            return False  # body cannot be read any more, so the connection is closed unanswered
        return super().handle_request(req, conn)
