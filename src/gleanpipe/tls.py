"""HTTPS on serve's submit port (GLEANPIPE_TLS_CERT and GLEANPIPE_TLS_KEY): gunicorn's own TLS
(``--certfile``/``--keyfile``, serve.tls_args), with the TLS context serve's workers give it.

serve's workers (http_worker.py, gevent_worker.py) set ``ssl_context`` below as gunicorn's hook
of that name. Its context differs from gunicorn's default in three ways, each for something the edge does:

- it is made once per worker process: gunicorn's gthread worker (GLEANPIPE_SPOOL=off) asked its
  hook for a context for every connection, and the default one reads the PEM files each time;
- ``OP_IGNORE_UNEXPECTED_EOF``: the edge ends a read that takes too long (a body past
  GLEANPIPE_BODY_TIMEOUT_S; with the spool off, a head past http_worker.HEAD_TIMEOUT_S) by
  shutting the reading side of the connection (read_deadline.py). On a thread blocked in
  OpenSSL's read, that is an end of stream without TLS's close_notify, which OpenSSL 3 takes for
  a fatal error: it sent the client a ``decode_error`` alert and would write nothing more, so the
  client never saw its 408. With the option OpenSSL takes it as the end it is, and the 408 goes
  out. (gunicorn already has Python ignore such ends, ``suppress_ragged_eofs``; a request's end
  is known from its framing, not from a close_notify.)
- its sockets leave the handshake to the worker (``do_handshake_on_connect=False``): gevent's
  server (GLEANPIPE_SPOOL=on) otherwise did it on accepting the connection, in a greenlet of its
  own, with no time limit (a client that connected and sent nothing held one of the worker's
  GLEANPIPE_CONNECTIONS for ever) and with a traceback in serve's output for each failure (a
  plain-HTTP request, a browser that does not trust the certificate, a port probe). The gevent
  worker (gevent_worker.TLSGeventWorker) does it within HANDSHAKE_TIMEOUT_S; gunicorn's gthread
  worker does it in the request's thread, under http_worker's head deadline (gunicorn's own
  ``do_handshake`` in its connection's ``init``: its do_handshake_on_connect is off by default).

It is also made again when the certificate or key file changes (a renewal: certbot's, mkcert run
again), for the connections that come after: each worker looks at the files' stat at most once
every CERT_CHECK_S, as it takes a connection. New files that make no context (a key that is not
the new certificate's, half-way through a renewal) leave the context it has, with a warning; a
worker that starts meanwhile (gunicorn restarts one that died) waits up to CERT_WAIT_S for them.
"""

from __future__ import annotations

import errno
import logging
import os
import ssl
import time

from .http_errors import ParseAnswer, answer_bytes

# errors of a client that went away before or during its handshake (a reset, a port probe)
GONE_ERRNOS = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.EBADF)

# The answer to a plain-HTTP request on serve's HTTPS port (``answer_plain_http``): a 503, not the
# 400 nginx gives, since a Glean SDK deletes a ping on any 4xx, and its server_endpoint saying
# http:// by mistake makes no ping bad; with a 5xx it keeps them until the endpoint is fixed. Written
# as serve's answers to what gunicorn cannot parse are (http_errors.answer_bytes): the edge's JSON
# body, Connection: close, and the CORS header every answer on the submit port has (README, The
# submit contract): without it a page's fetch saw a network error instead of the 503 that says why.
PLAIN_HTTP_ANSWER = answer_bytes(ParseAnswer(
    503, "Service Unavailable", "https_only",
    "this port speaks HTTPS (GLEANPIPE_TLS_CERT): send to https://, not http://"))

# serve's log line for it (as gunicorn words a bad request: "Invalid request from ip=")
PLAIN_HTTP_SAID = "Invalid request from ip=%s: plain HTTP on the HTTPS port, answered 503 https_only"

# how long a TLS handshake may take, as long as a request's head may (serve.KEEPALIVE_S)
HANDSHAKE_TIMEOUT_S = 5.0

# how often, at most, a worker looks whether the certificate or key file changed (``_Certificate``),
# and how long a worker that starts while they do not fit (half-way through a renewal) waits for them
CERT_CHECK_S = 1.0
CERT_WAIT_S = 10.0

log = logging.getLogger("gleanpipe.tls")

_CONTEXT = None  # this worker process's (see ssl_context)


def _stamps(files: tuple[str, ...]):
    """What tells a changed file (a new inode: certbot's symlinks; a rewrite: its time or size)."""
    try:
        return tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in map(os.stat, files))
    except OSError:  # gone for a moment, half-way through a renewal: a change, whose context fails
        return None


class _Certificate:
    """This worker's TLS context (gunicorn's default one, from ``--certfile``/``--keyfile``, with
    OP_IGNORE_UNEXPECTED_EOF), made again from the files when they change (see the module's
    docstring). Connections already made keep the context they were made with."""

    __slots__ = ("factory", "files", "stamps", "refused", "checked", "context")

    def __init__(self, conf, factory) -> None:
        self.factory = factory
        self.files = tuple(f for f in (getattr(conf, "certfile", None), getattr(conf, "keyfile", None)) if f)
        self.stamps = _stamps(self.files) if self.files else None
        self.refused = None
        self.checked = time.monotonic()
        # a worker that starts (or restarts) in the middle of a renewal waits for a pair that fits
        deadline = self.checked + CERT_WAIT_S
        while True:
            try:
                self.context = self._made()
                return
            except (OSError, ssl.SSLError, ValueError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def _made(self) -> ssl.SSLContext:
        context = self.factory()
        context.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
        return context

    def current(self) -> ssl.SSLContext:
        now = time.monotonic()
        if not self.files or now - self.checked < CERT_CHECK_S:
            return self.context
        self.checked = now
        stamps = _stamps(self.files)
        if stamps == self.stamps or stamps == self.refused:
            return self.context
        try:
            self.context = self._made()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.refused = stamps  # tried again once the files change again
            log.warning("the certificate or key file changed, but they make no TLS context (%s): serving the "
                        "certificate read before", exc)
        else:
            self.stamps = stamps
            log.info("serving the certificate of %s, which changed", self.files[0])
        return self.context


class _HandshakeLater:
    """A TLS context whose sockets do their handshake when the worker asks (``do_handshake``),
    not when they are made. gunicorn's workers and gevent's server only call ``wrap_socket``."""

    __slots__ = ("certificate",)

    def __init__(self, certificate: _Certificate) -> None:
        self.certificate = certificate

    def wrap_socket(self, sock, **kwargs):
        return self.certificate.current().wrap_socket(sock, **{**kwargs, "do_handshake_on_connect": False})


def ssl_context(conf, default_ssl_context_factory):
    """gunicorn's ``ssl_context`` hook for serve's workers: gunicorn's default context (the
    certificate and key of ``--certfile``/``--keyfile``), made once per worker process (and again
    when those files change), with OpenSSL taking an end of stream without close_notify as an end
    (see the module's docstring)."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = _HandshakeLater(_Certificate(conf, default_ssl_context_factory))
    return _CONTEXT


class _ClientGone:
    """What the gevent worker's handle() gets for a connection whose client reset it before its
    handshake: the ssl module, as it wraps a socket, checks that it is still connected, and that
    check fails ("Closed before TLS handshake with data in recv buffer", a reset). Its
    ``do_handshake`` raises that error, in handle(), which says a client that went away in one
    debug line (gevent_worker.py)."""

    __slots__ = ("sock", "error")

    def __init__(self, sock, error: OSError) -> None:
        self.sock, self.error = sock, error

    def setblocking(self, flag) -> None:
        pass

    def do_handshake(self) -> None:
        raise self.error

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "_ClientGone":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _HandshakeInHandle(_HandshakeLater):
    """serve's TLS context for gevent's server, which wraps each socket before the worker's handle()
    sees it: an error in the wrap went to gevent's hub, a traceback in serve's output for every
    client that reset its connection at once (a port scanner, a health check). It now reaches
    handle() (``_ClientGone``)."""

    __slots__ = ()

    def wrap_socket(self, sock, **kwargs):
        try:
            return super().wrap_socket(sock, **kwargs)
        except OSError as exc:
            # the error without its traceback or the error it arose in, whose frames hold the
            # half-made TLS socket: when the ssl module's check is reset it leaves that socket open,
            # and held by those frames (and by handle()'s raise, a reference cycle) the connection's
            # descriptor stayed open until a garbage collection, in an idle worker for ever
            exc.__context__ = exc.__cause__ = None
            return _ClientGone(sock, exc.with_traceback(None))


def gevent_ssl_context(conf, default_ssl_context_factory):
    """``ssl_context`` for the gevent worker (gevent_worker.py): serve's context (``ssl_context``)
    whose wrap errors reach the worker's handle()."""
    return _HandshakeInHandle(ssl_context(conf, default_ssl_context_factory).certificate)


def is_plain_http(exc: BaseException) -> bool:
    """Whether a handshake failed because the client spoke plain HTTP (OpenSSL saw a request line)."""
    return isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None) == "HTTP_REQUEST"


def went_away(exc: BaseException) -> bool:
    """Whether a handshake failed because the client left: it closed (an end of stream, which
    under OP_IGNORE_UNEXPECTED_EOF OpenSSL reports as SSLZeroReturnError), reset the connection,
    or reset it before the handshake began (the ssl module's "Closed before TLS handshake with
    data in recv buffer", an SSLError with ENOTCONN: ``_ClientGone``). A port probe, a browser's
    unused preconnect, a health check, a handshake the clock cut off."""
    return isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)) or (
        isinstance(exc, OSError) and exc.errno in GONE_ERRNOS)


def handled_handshake_failure(log, sock, addr, exc: BaseException) -> bool:
    """What both of serve's workers do with a failed TLS handshake that is no news or has an answer
    of its own: a client that went away is a debug line; a plain-HTTP request gets its 503
    (``answer_plain_http``) and a warning line. False for any other failure, which the worker
    reports as it does."""
    if went_away(exc):
        log.debug("client %s went away before or during its TLS handshake: %s", addr, exc)
        return True
    if is_plain_http(exc):
        log.warning(PLAIN_HTTP_SAID, addr[0] if addr else "")
        answer_plain_http(sock)
        return True
    return False


def answer_plain_http(sock) -> None:
    """Answer a plain-HTTP request on the HTTPS port in plain HTTP (``PLAIN_HTTP_ANSWER``), as nginx
    does, where the client got a reset or an empty reply ("curl: (52) Empty reply from server")
    and no word why. It is written under the TLS layer, whose handshake failed; then a lingering
    close (linger.py, GLEANPIPE_LINGER_S), since a client that sends its body before it reads
    (http.client, the Python SDK) would otherwise get a reset in place of the answer."""
    from .config import Config
    from .linger import linger

    # to the descriptor: gevent's socket methods call the TLS socket's own send, whose TLS layer
    # failed (an SSLEOFError). A new connection's send buffer takes these 260 bytes at once.
    try:
        if os.write(sock.fileno(), PLAIN_HTTP_ANSWER) != len(PLAIN_HTTP_ANSWER):
            return
    except OSError:  # the client is gone (or, never seen, its buffer is full)
        return
    global _LINGER_S
    if _LINGER_S is None:
        _LINGER_S = Config.from_env().linger_s
    linger(sock, _LINGER_S)


_LINGER_S = None  # GLEANPIPE_LINGER_S, read by this worker process's first answer_plain_http
