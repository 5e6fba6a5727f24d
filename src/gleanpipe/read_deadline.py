"""A wall-clock limit on reading a request's body (GLEANPIPE_BODY_TIMEOUT_S), and on serve's
gthread worker (GLEANPIPE_SPOOL=off) on reading its head (http_worker.HEAD_TIMEOUT_S).

A socket timeout bounds one ``recv``, not a body: gunicorn's body reader (and Werkzeug's under
the function) calls ``recv`` until the body is whole, so a client that sends a byte a second
never trips it. Instead one watcher per process keeps the deadlines of the bodies being read.
When one passes, it shuts the read side of that connection down, which ends the blocked read
at once (end of stream), and marks the deadline expired, so the edge answers 408 (for a head,
http_worker closes the connection: there is no request to answer). Under gevent
(serve's workers) the watcher is a greenlet, under threads (the function's gthread workers, and
serve's with the spool off) a thread. A body costs a lock and a heap push to watch, and one more lock when it is read.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import ssl
import sys
import threading
import time


_STARTING = threading.Lock()


class Deadline:
    __slots__ = ("at", "sock", "expired")

    def __init__(self, at: float, sock) -> None:
        self.at, self.sock, self.expired = at, sock, False


class Watcher:
    def __init__(self) -> None:
        self._pid = None  # the lock, heap and thread are made on first use in each process (a
        # gunicorn worker is forked, and patched by gevent, after this module may be imported)

    def _start(self) -> None:
        with _STARTING:  # two threads' first bodies must not make two watchers
            if self._pid == os.getpid():
                return
            self._lock = threading.Lock()
            self._wake = threading.Event()
            self._heap: list[tuple[float, int, Deadline]] = []
            self._seq = itertools.count()
            threading.Thread(target=self._run, name="gleanpipe-body-deadlines", daemon=True).start()
            self._pid = os.getpid()  # last: the others wait above until all of it is there

    def watch(self, sock, seconds: float) -> Deadline:
        """Start the clock for one body (or head) read from ``sock``; call ``done`` once it is read."""
        if self._pid != os.getpid():
            self._start()
        deadline = Deadline(time.monotonic() + seconds, sock)
        with self._lock:
            sooner = not self._heap or deadline.at < self._heap[0][0]
            heapq.heappush(self._heap, (deadline.at, next(self._seq), deadline))
        if sooner:
            self._wake.set()
        return deadline

    def done(self, deadline: Deadline) -> None:
        with self._lock:
            deadline.sock = None
            heap = self._heap
            while heap and heap[0][2].sock is None:  # bodies mostly end in the order they began
                heapq.heappop(heap)

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].sock is None or self._heap[0][0] <= now):
                    _, _, deadline = heapq.heappop(self._heap)
                    if deadline.sock is not None:
                        deadline.expired = True
                        try:
                            shut_read(deadline.sock)
                        except OSError:  # the client is gone already
                            pass
                        deadline.sock = None
                wait = self._heap[0][0] - now if self._heap else None
                self._wake.clear()
            self._wake.wait(wait)


def _tls_socket_class(sock):
    """The TLS socket class ``sock`` is an instance of (the standard library's, or gevent's under
    serve's gevent workers, which patch it into ``ssl`` or not), or None for a plain socket."""
    gevent_ssl = sys.modules.get("gevent.ssl")
    for tls in (ssl.SSLSocket, getattr(gevent_ssl, "SSLSocket", None)):
        if tls is not None and isinstance(sock, tls):
            return tls
    return None


def shut_read(sock) -> None:
    """Shut the reading side of the connection under ``sock``, ending a read blocked on it. A TLS
    socket's own shutdown() also drops its TLS layer (the standard library's and gevent's
    SSLSocket both set ``_sslobj`` to None), so the 408 written next went out as plain text inside
    the TLS stream, and the client read it as garbage ("wrong version number"): for a TLS socket
    the socket under it is shut, and its TLS layer stays for the answer."""
    tls = _tls_socket_class(sock)
    if tls is None:
        sock.shutdown(socket.SHUT_RD)
    else:
        super(tls, sock).shutdown(socket.SHUT_RD)


WATCHER = Watcher()
