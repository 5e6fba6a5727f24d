"""Mount WSGI apps by path prefix in front of the submit edge (one string test per request).

As WSGI mounts do, the prefix moves from PATH_INFO to SCRIPT_NAME for the mounted app.
"""

from __future__ import annotations

from typing import Callable


def mount(default: Callable, prefixes: dict[str, Callable]) -> Callable:
    """Requests whose path is ``prefix`` or starts with ``prefix + "/"`` go to that app."""
    routes = sorted(prefixes.items(), key=lambda kv: -len(kv[0]))

    def app(environ: dict, start_response: Callable):
        path = environ.get("PATH_INFO", "")
        for prefix, target in routes:
            if path == prefix or path.startswith(prefix + "/"):
                environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "").rstrip("/") + prefix
                environ["PATH_INFO"] = path[len(prefix):]
                return target(environ, start_response)
        return default(environ, start_response)

    return app
