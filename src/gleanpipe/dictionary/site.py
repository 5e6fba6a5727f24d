"""The dictionary's URL space, shared by the WSGI app and the static build.

    index.html                                  api/apps.json
    apps/<dataset>/index.html                   api/apps/<dataset>.json
    apps/<dataset>/pings/<ping>.html            api/apps/<dataset>/pings/<ping>.json
    apps/<dataset>/metrics/<metric id>.html     api/apps/<dataset>/metrics/<metric id>.json
"""

from __future__ import annotations

import re

from . import pages
from .catalog import Catalog

SEG = f"({pages.PAGE_ID_RE.pattern})"  # the names build.py writes pages for
ROUTES = [
    (re.compile(r"(?:index\.html)?"), "index"),
    (re.compile(rf"apps/{SEG}/(?:index\.html)?"), "app"),
    (re.compile(rf"apps/{SEG}/pings/{SEG}\.html"), "ping"),
    (re.compile(rf"apps/{SEG}/metrics/{SEG}\.html"), "metric"),
    (re.compile(r"api/apps(?:\.json)?"), "api:index"),
    (re.compile(rf"api/apps/{SEG}\.json"), "api:app"),
    (re.compile(rf"api/apps/{SEG}/pings/{SEG}\.json"), "api:ping"),
    (re.compile(rf"api/apps/{SEG}/metrics/{SEG}\.json"), "api:metric"),
]


def route(rel: str) -> tuple[str, tuple[str, ...]] | None:
    """Path below the dictionary root -> (page kind, arguments), or None."""
    for pattern, kind in ROUTES:
        m = pattern.fullmatch(rel)
        if m:
            return kind, m.groups()
    return None


def data_for(catalog: Catalog, kind: str, args: tuple[str, ...]):
    name = kind.split(":")[-1]
    if name == "index":
        return catalog.apps()
    if name == "app":
        return catalog.app(args[0])
    if name == "ping":
        return catalog.ping(args[0], args[1])
    return catalog.metric(args[0], args[1])


RENDER = {"index": pages.render_index, "app": pages.render_app, "ping": pages.render_ping,
          "metric": pages.render_metric}
