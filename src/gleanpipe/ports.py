"""Is a TCP port free to listen on? Asked before a server starts, so that a busy port is one clear
error instead of a server that says it runs and fails to bind a moment later."""

from __future__ import annotations

import errno
import socket
import time


def ensure_port_free(host: str, port: int, setting: str = "GLEANPIPE_PORT", wait_s: float = 0.0) -> None:
    """Raise RuntimeError if ``host:port`` cannot be bound, naming the flag and ``setting`` that
    choose another. Binding, not connecting: `serve` waits for its gunicorn by connecting, and
    another server on the port would pass for it. ``wait_s``: how long a busy port may take to
    be freed (a killed serve's HTTP server finishing its requests) before that is an error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn and uvicorn bind: TIME_WAIT is free
            try:
                sock.bind((host, port))
                return
            except OSError as exc:
                if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:  # the host, not the port
                    raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (no such address on "
                                       "this machine; the host comes from --host or GLEANPIPE_HOST)") from None
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server on "
                                       f"that port? choose another one with --port or {setting})") from None
        time.sleep(0.1)


def in_url(host: str) -> str:
    """``host`` as it goes into a URL or a gunicorn ``--bind``: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host
