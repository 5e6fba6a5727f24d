"""serve's pages answer only a loopback Host while serve listens on loopback (DNS rebinding).

`gleanpipe serve` listens on 127.0.0.1 by default, and besides /submit it serves pages with the
developer's data: the debug ping viewer (/debug: raw pings, client ids) and the data dictionary
(/dictionary). A web page the developer visits could read them through DNS rebinding: once its
own name (evil.example) resolves to 127.0.0.1, its script reads ``http://evil.example:8080/debug/...``
as its own origin. What gives that away is the Host header: a browser sends the page's name. So,
while serve listens on a loopback address, a request to any path but submit's whose Host is not a
loopback name (``localhost``, ``*.localhost``, ``127.x.x.x``, ``[::1]``, with any port) or a name of
GLEANPIPE_ALLOWED_HOSTS gets a 403 ``host_not_allowed`` in the edge's error shape, and no data.

Submit is left as it is for any Host: the SDK's endpoint may be any name that leads to loopback
(a hosts-file entry), submit takes anonymous pings from any origin (CORS ``*``) and its answers say
nothing but what became of the ping. A request without a Host is no browser's (a browser always
sends one): HTTP/1.0 may leave it out, and is let through; HTTP/1.1 requires it, and is refused.
A serve that listens on another address was exposed on purpose: no check (``HostGuard.for_bind``
gives None).

The check runs where the PrefixDispatcher (wsgi_mounts.py) sends a request to a mounted app, or
to the submit app for a path that is not submit's: a submit request never reaches it. `gleanpipe
explore`'s Datasette, on 127.0.0.1 over a copy of the warehouse, gets the same check through a
Datasette plugin (datasette_plugins/host_check_plugin.py), on every path.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable

from .http_edge import error_body, shown

# a Host header: a name or IPv4 address, or an IPv6 address in brackets, then an optional port
_HOST = re.compile(r"(\[[0-9A-Za-z:.%]*\]|[^:\[\]]*)(?::([0-9]*))?")


def _loopback_ip(text: str) -> bool | None:
    """Whether ``text`` is a loopback IP address (an IPv4-mapped one too); None when it is no IP address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _localhost(name: str) -> bool:
    """``localhost`` or a name under it (RFC 6761: they all lead to loopback; browsers resolve them so
    without asking DNS, so no page on the internet has such a name)."""
    return name == "localhost" or name.endswith(".localhost")


def listens_on_loopback(bind_host: str) -> bool:
    """Whether serve, bound to ``bind_host`` (GLEANPIPE_HOST), takes connections from this machine
    only: a loopback address, ``localhost``, or a name whose every address is loopback (Debian's
    own host name leads to 127.0.1.1). ``0.0.0.0``, ``::`` and other addresses: no."""
    host = bind_host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    loopback = _loopback_ip(host.partition("%")[0])
    if loopback is not None:
        return loopback
    if _localhost(host.lower().rstrip(".")):
        return True
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):  # gunicorn cannot listen on it either
        return False
    return bool(infos) and all(_loopback_ip(str(info[4][0]).partition("%")[0]) for info in infos)


def host_name(value: str) -> str | None:
    """The host of a Host header, lower case, without its port or brackets' content changed
    (``[::1]`` stays so); None when the value is not ``host[:port]``."""
    found = _HOST.fullmatch(value.strip())
    if found is None or not found.group(1):
        return None
    return found.group(1).lower()


def allowed_host(name: str, allowed: tuple[str, ...] = ()) -> bool:
    """Whether a Host's host (``host_name``) is a loopback name, or one of ``allowed``
    (GLEANPIPE_ALLOWED_HOSTS: a name, or ``.name`` for it and every name under it)."""
    if name.startswith("["):
        return bool(_loopback_ip(name[1:-1]))
    name = name.rstrip(".")  # the absolute form of a name (localhost.) is the same name
    if _localhost(name) or _loopback_ip(name):
        return True
    return any(name == entry or (entry.startswith(".") and (name == entry[1:] or name.endswith(entry)))
               for entry in allowed)


class HostGuard:
    """The check of a request's Host for serve's pages (see the module); ``for_bind`` makes one
    only when serve listens on loopback. ``server`` names, in the refusal, who listens: explore's
    Datasette has the same check (datasette_plugins/host_check_plugin.py)."""

    def __init__(self, bind_host: str, allowed: tuple[str, ...] = (), server: str = "serve"):
        self.bind_host = bind_host
        self.allowed = tuple(allowed)
        self.server = server

    @classmethod
    def for_bind(cls, bind_host: str, allowed: tuple[str, ...] = (), server: str = "serve") -> "HostGuard | None":
        return cls(bind_host, allowed, server) if listens_on_loopback(bind_host) else None

    def refusal(self, environ: dict) -> str | None:
        """Why this request's Host is refused (one line), or None when it is allowed."""
        value = environ.get("HTTP_HOST")
        if value is None:
            if environ.get("SERVER_PROTOCOL", "HTTP/1.1").upper() == "HTTP/1.0":
                return None  # no browser sends that
            said = "a request without a Host header (HTTP/1.1 requires one)"
        else:
            name = host_name(value)
            if name is not None and allowed_host(name, self.allowed):
                return None
            said = f"Host {shown(value)}"
        return (f"{said} is not allowed here: {self.server} listens on loopback ({self.bind_host}) and answers its pages "
                "only to a loopback Host (localhost, 127.0.0.1, [::1]) or a name of GLEANPIPE_ALLOWED_HOSTS, so "
                "that a web page cannot read them through DNS rebinding")

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes] | None:
        """The 403 answer to a request whose Host is refused, or None to let it through."""
        message = self.refusal(environ)
        if message is None:
            return None
        body = error_body("host_not_allowed", message)
        start_response("403 Forbidden", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                         ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")])
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

