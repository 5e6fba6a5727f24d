"""Mount extra WSGI apps beside submit, by path prefix (`/debug`, `/dictionary`, ...).

    app = PrefixDispatcher(submit_app, {"/debug": debug_app})

A request whose path is ``<prefix>`` or starts with ``<prefix>/`` goes to that app, with the
prefix moved from PATH_INFO to SCRIPT_NAME (as WSGI mounts do), so the mounted app sees
paths relative to its mount point and can build links from SCRIPT_NAME. Every other request
goes to the default app untouched: the submit hot path pays one string check per mount.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


class PrefixDispatcher:
    def __init__(self, default: WSGIApp, mounts: Mapping[str, WSGIApp] | None = None):
        self.default = default
        self.mounts: list[tuple[str, WSGIApp]] = []
        for prefix, app in (mounts or {}).items():
            self.mount(prefix, app)

    def mount(self, prefix: str, app: WSGIApp) -> None:
        if not prefix.startswith("/") or prefix.endswith("/") or prefix == "/":
            raise ValueError(f"mount prefix must look like /name, got {prefix!r}")
        if any(p == prefix for p, _ in self.mounts):
            raise ValueError(f"{prefix} is mounted twice")
        self.mounts.append((prefix, app))
        self.mounts.sort(key=lambda m: len(m[0]), reverse=True)  # longest prefix wins

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        for prefix, app in self.mounts:
            if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
                environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "").rstrip("/") + prefix
                environ["PATH_INFO"] = path[len(prefix):]
                return app(environ, start_response)
        return self.default(environ, start_response)
