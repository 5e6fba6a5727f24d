"""Mount extra WSGI apps beside submit, by path prefix (`/debug`, `/dictionary`, ...).

    app = PrefixDispatcher(submit_app, {"/debug": debug_app})

A request whose path is ``<prefix>`` or starts with ``<prefix>/`` goes to that app, with the
prefix moved from PATH_INFO to SCRIPT_NAME (as WSGI mounts do), so the mounted app sees
paths relative to its mount point and can build links from SCRIPT_NAME. Every other request
goes to the default app untouched: the submit hot path pays one string check per mount.

    app = PrefixDispatcher(submit_app, mounts, guard, is_submit_path)

With a ``guard`` (host_check.HostGuard), every request to a mounted app, and every request to the
default app whose path ``open_path`` does not take, is first given to the guard, whose answer (a
refusal) is the answer when it is not None. The guard decides on the path that is routed, so no
spelling of a path reaches a mounted app past it; a path ``open_path`` takes (submit's) pays one
more call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]
Guard = Callable[[dict, Callable], "Iterable[bytes] | None"]


class PrefixDispatcher:
    def __init__(self, default: WSGIApp, mounts: Mapping[str, WSGIApp] | None = None,
                 guard: Guard | None = None, open_path: Callable[[str], bool] = lambda path: False):
        self.default = default
        self.guard, self.open_path = guard, open_path
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
                if self.guard is not None and (refused := self.guard(environ, start_response)) is not None:
                    return refused
                environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "").rstrip("/") + prefix
                environ["PATH_INFO"] = path[len(prefix):]
                return app(environ, start_response)
        if self.guard is not None and not self.open_path(path):
            refused = self.guard(environ, start_response)
            if refused is not None:
                return refused
        return self.default(environ, start_response)
