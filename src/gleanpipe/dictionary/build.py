"""`gleanpipe dictionary build --out DIR`: every page and its JSON as static files.

The same templates and URL layout as /dictionary in `serve` (see site.py); links are
relative, so the copy works from file:// or any static server.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..jsonvalues import dumps
from .catalog import Catalog
from .pages import PAGE_ID_RE
from .site import RENDER


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build(query, out: Path) -> dict:
    """Write the site under ``out``; returns counts of what was written."""
    catalog = Catalog(query)
    out = Path(out)
    counts = {"apps": 0, "pings": 0, "metrics": 0, "files": 0}

    def emit(kind: str, rel_html: str, rel_json: str, data) -> None:
        _write(out / rel_html, RENDER[kind](data).encode())
        _write(out / "api" / rel_json, dumps(data))
        counts["files"] += 2

    apps = catalog.apps()
    emit("index", "index.html", "apps.json", apps)
    for a in apps:
        ds = a["dataset"]
        app = catalog.app(ds)
        emit("app", f"apps/{ds}/index.html", f"apps/{ds}.json", app)
        counts["apps"] += 1
        for p in app["pings"]:
            if PAGE_ID_RE.fullmatch(p["name"]):
                emit("ping", f"apps/{ds}/pings/{p['name']}.html", f"apps/{ds}/pings/{p['name']}.json",
                     catalog.ping(ds, p["name"]))
                counts["pings"] += 1
        for m in app["metrics"]:
            if PAGE_ID_RE.fullmatch(m["id"]):
                emit("metric", f"apps/{ds}/metrics/{m['id']}.html", f"apps/{ds}/metrics/{m['id']}.json",
                     catalog.metric(ds, m["id"]))
                counts["metrics"] += 1
    return counts
