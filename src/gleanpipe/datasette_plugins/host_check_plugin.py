"""A Datasette plugin: `gleanpipe explore`'s Datasette answers only a loopback Host (DNS rebinding).

explore runs Datasette on 127.0.0.1 over a copy of the whole warehouse. A web page the developer
visits could read it as `serve`'s pages could be read: once the page's own name resolves to
127.0.0.1, its script reads ``http://evil.example:8001/<app>.json?sql=...`` as its own origin. So
Datasette gets serve's check (host_check.py: the same loopback names, the same
GLEANPIPE_ALLOWED_HOSTS, the same 403 ``host_not_allowed``), through Datasette's ``asgi_wrapper``
hook: explore starts it with ``--plugins-dir`` on this folder, which Datasette loads by file (not
as a package: hence the absolute imports). Every path is checked, Datasette having no submit.

What the check needs, explore writes into the metadata file it gives Datasette
(``plugins`` -> ``gleanpipe-host-check``: ``bind_host``, ``allowed_hosts``). Without it (the folder
given to a Datasette explore did not start) the check assumes 127.0.0.1 and no allowed names.
"""

from __future__ import annotations

from datasette import hookimpl

from gleanpipe.host_check import HostGuard

PLUGIN = "gleanpipe-host-check"  # its key in the metadata's "plugins"
SERVER = "explore's Datasette"  # who listens, as the refusal says


def guard_for(config: dict | None) -> HostGuard | None:
    """The check explore's settings ask for; None when Datasette does not listen on loopback."""
    config = config or {}
    return HostGuard.for_bind(str(config.get("bind_host") or "127.0.0.1"),
                              tuple(config.get("allowed_hosts") or ()), SERVER)


def environ_of(scope: dict) -> dict:
    """What HostGuard reads of a request (a WSGI environ's keys), from an ASGI scope. Two Host
    headers are joined with a comma, as a WSGI server joins them: no single name, so refused."""
    hosts = [value.decode("latin-1") for name, value in scope.get("headers", ()) if name.lower() == b"host"]
    environ = {"SERVER_PROTOCOL": "HTTP/" + str(scope.get("http_version", "1.1")),
               "REQUEST_METHOD": str(scope.get("method", "GET")).upper()}
    if hosts:
        environ["HTTP_HOST"] = ",".join(hosts)
    return environ


def wrap(app, guard: HostGuard):
    async def checked(scope, receive, send):
        if scope["type"] not in ("http", "websocket"):  # lifespan
            return await app(scope, receive, send)
        answer = []
        body = guard(environ_of(scope), lambda status, headers: answer.append((status, headers)))
        if body is None:
            return await app(scope, receive, send)
        if scope["type"] == "websocket":  # refused before it is accepted: the server answers 403
            await send({"type": "websocket.close", "code": 1008})
            return
        status, headers = answer[0]
        await send({"type": "http.response.start", "status": int(status.split()[0]),
                    "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]})
        await send({"type": "http.response.body", "body": b"".join(body)})

    return checked


@hookimpl
def asgi_wrapper(datasette):
    guard = guard_for(datasette.plugin_config(PLUGIN))
    if guard is None:  # listens on another address: exposed on purpose, as serve's check says
        return lambda app: app
    return lambda app: wrap(app, guard)
