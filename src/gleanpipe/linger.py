"""A lingering close, for answers given while the client may still be sending its body.

The edge answers a body over GLEANPIPE_MAX_WIRE_BYTES (413) without reading it, and closes the
connection. A client that does not wait for ``Expect: 100-continue`` (Python's http.client and
requests, for example) is still sending then, and reads the answer only once its body is out.
Closing a TCP socket with data unread makes the kernel answer with a reset, and the reset
throws away the answer the client had not read yet: from about 4 MiB on loopback, the client
got "Connection reset by peer" instead of its 413.

So, as Apache and nginx do, once the answer is written the connection's sending side is shut
(the client sees the answer end), and what the client still sends is read and thrown away
until it closes its side, for at most ``seconds`` (GLEANPIPE_LINGER_S) and LINGER_MAX_BYTES;
only then does the server close the socket. At the bound the reading side is shut too: Linux
then resets the connection at the client's next segment, and the graceful close gthread workers
do next (gunicorn's util.close_graceful: up to 2 s or 64 KiB more, on the worker's main thread,
where it stalls the worker's other connections) ends at once.

On an HTTPS connection (serve with GLEANPIPE_TLS_CERT) the socket's shutdown() also drops its
TLS layer (ssl.SSLSocket sets ``_sslobj`` to None): the answer is out by then, and what comes
after is read as the encrypted records it is and thrown away undecrypted, which is all linger
wants of it.

gunicorn calls the close() of the app's iterable after it has written the answer and before it
closes the socket, in the request's own greenlet (gevent) or thread (gthread), so ``Lingering``
does the work there. Only closing answers get one: the answers that keep the connection, pings
among them, are the plain list they were.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable

LINGER_MAX_BYTES = 128 * 1024 * 1024  # read and thrown away after a closing answer, at most
_CHUNK = 256 * 1024  # one recv; a 64 MiB body is 256 of them


def linger(sock, seconds: float, max_bytes: int = LINGER_MAX_BYTES) -> int:
    """Shut ``sock``'s sending side, then read and drop what comes until the peer closes, for at
    most ``seconds`` and ``max_bytes``; then shut its reading side. Returns the bytes dropped.
    The caller (gunicorn) closes the socket."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:  # the client is gone already
        return 0
    buf = bytearray(min(_CHUNK, max_bytes))
    dropped = 0
    deadline = time.monotonic() + seconds
    try:
        while dropped < max_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            n = sock.recv_into(buf, min(len(buf), max_bytes - dropped))
            if not n:  # the client closed its side: all it sent is read
                break
            dropped += n
    except OSError:  # the time is up (socket.timeout is an OSError), or the client reset
        pass
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    return dropped


class Lingering:
    """A WSGI answer's iterable whose close() lingers on the connection's socket (``linger``)."""

    __slots__ = ("body", "sock", "seconds")

    def __init__(self, body: Iterable[bytes], sock, seconds: float) -> None:
        self.body, self.sock, self.seconds = body, sock, seconds

    def __iter__(self):
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            linger(self.sock, self.seconds)


def lingering(body: Iterable[bytes], environ: dict, seconds: float) -> Iterable[bytes]:
    """``body``, lingering when it is closed if the server gave the socket (gunicorn's
    ``gunicorn.socket`` in the environ); as it is under another server, and over HTTP/2 (which
    gunicorn serves only when told to), where the socket carries other requests' streams too."""
    sock = environ.get("gunicorn.socket")
    if sock is None or not environ.get("SERVER_PROTOCOL", "").startswith("HTTP/1"):
        return body
    return Lingering(body, sock, seconds)
