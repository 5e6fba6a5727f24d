"""serve's HTTP worker with GLEANPIPE_SPOOL=on and HTTPS (GLEANPIPE_TLS_CERT): gunicorn's gevent
worker, with serve's TLS context (tls.ssl_context) and each connection's TLS handshake in the
connection's own greenlet, within tls.HANDSHAKE_TIMEOUT_S.

gevent's server did the handshake itself, on accepting the connection: with no time limit (a
client that connected and sent nothing, or stopped half-way through its ClientHello, held one of
the worker's GLEANPIPE_CONNECTIONS for ever) and with a traceback in serve's output for every
failure (a plain-HTTP request to the HTTPS port, a browser that does not trust the certificate,
serve's own readiness check while the worker was still booting). Here a handshake that does not
end in time closes the connection, unanswered, as a head that does not come whole does (gevent
workers bound a head by gunicorn's keep-alive, serve.KEEPALIVE_S); one that fails is a line in
the log, as gunicorn's gthread worker writes it (GLEANPIPE_SPOOL=off), and a client that went
away during it is none. Plain HTTP (no GLEANPIPE_TLS_CERT) runs JSONGeventWorker: gunicorn's own
gevent worker, whose answer to a request gunicorn cannot parse is JSON (http_errors.py), as
TLSGeventWorker's is.
"""

from __future__ import annotations

import ssl

import gevent
from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker

from . import tls
from .http_errors import JSONParseErrors


class JSONGeventWorker(JSONParseErrors, GeventWorker):
    """gunicorn's GeventWorker whose answer to a request gunicorn cannot parse is JSON (http_errors.py)."""


class TLSGeventWorker(JSONGeventWorker):
    """gunicorn's GeventWorker whose TLS handshakes are bounded and quiet (see the module)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cfg.set("ssl_context", tls.gevent_ssl_context)  # its sockets leave the handshake to handle()

    def handle(self, listener, client, addr):
        client.setblocking(1)
        try:
            with gevent.Timeout(tls.HANDSHAKE_TIMEOUT_S):
                client.do_handshake()
        except gevent.Timeout:
            self.log.debug("TLS handshake from %s took over %g s: closed", addr, tls.HANDSHAKE_TIMEOUT_S)
        except OSError as exc:  # SSLError is one
            if tls.handled_handshake_failure(self.log, client, addr, exc):
                pass
            elif isinstance(exc, ssl.SSLError):  # a client that refused the certificate, TLS garbage
                self.log.warning("Invalid request from ip=%s: %s", addr[0] if addr else "", exc)
            else:
                self.log.warning("TLS handshake from %s failed: %s", addr, exc)
        else:
            return super().handle(listener, client, addr)
        util.close(client)
