"""Every setting gleanpipe reads, from environment variables with documented defaults.

The CLI flags accept the same variables (click ``envvar=``), so ``GLEANPIPE_PORT=9000
gleanpipe serve`` and ``gleanpipe serve --port 9000`` mean the same thing. The README
lists each setting; keep that table in step with ``SETTINGS`` below.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

MIB = 1024 * 1024


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    help: str


SETTINGS: dict[str, Setting] = {
    s.env: s
    for s in (
        Setting("GLEANPIPE_DATA_DIR", "./data", "Folder for local mode: raw store, DuckDB file, server state."),
        Setting("GLEANPIPE_STORE_URL", "", "Raw store URL (file://PATH). Empty: file://<data dir>/store."),
        Setting(
            "GLEANPIPE_WAREHOUSE_URL",
            "",
            "Warehouse URL (duckdb://PATH). Empty: duckdb://<data dir>/warehouse.duckdb.",
        ),
        Setting("GLEANPIPE_HOST", "127.0.0.1", "Address `serve` listens on (0.0.0.0 to accept other hosts)."),
        Setting("GLEANPIPE_PORT", "8080", "Port `serve` listens on for /submit."),
        Setting("GLEANPIPE_WORKERS", "2", "HTTP worker processes `serve` starts for submit."),
        Setting("GLEANPIPE_THREADS", "8", "Threads per HTTP worker (more threads share more of each spool fdatasync)."),
        Setting("GLEANPIPE_MAX_WIRE_BYTES", str(1 * MIB), "Largest request body accepted as sent (413 above)."),
        Setting(
            "GLEANPIPE_MAX_PAYLOAD_BYTES",
            str(8 * MIB),
            "Largest payload after gzip decompression; enforced while decompressing (413 above).",
        ),
        Setting(
            "GLEANPIPE_MAX_ERROR_BYTES",
            str(1 * MIB),
            "Bytes of a rejected request's body kept in the error store (the rest is cut off and flagged).",
        ),
        Setting("GLEANPIPE_MAX_URI_BYTES", "512", "Longest request path accepted (414 above)."),
        Setting("GLEANPIPE_MAX_HEADER_BYTES", "1024", "Longest kept header value accepted (431 above)."),
        Setting("GLEANPIPE_LOAD_BATCH", "1000", "Objects loaded into the warehouse per write."),
        Setting("GLEANPIPE_LOAD_INTERVAL_MS", "50", "How often `serve`'s loader looks for new objects."),
        Setting(
            "GLEANPIPE_SPOOL",
            "on",
            "`serve` only: `on` = HTTP workers append accepted pings to a write-ahead spool, one shared "
            "fdatasync per batch, and serve turns them into objects; `off` = one fsynced object per ping.",
        ),
        Setting("GLEANPIPE_SPOOL_SEGMENT_BYTES", str(16 * MIB), "A worker starts a new spool file after this many bytes."),
        Setting("GLEANPIPE_SPOOL_SEGMENT_SECONDS", "30", "A worker starts a new spool file after this many seconds."),
    )
}


def _get(env: str, environ: os._Environ | dict | None = None) -> str:
    source = os.environ if environ is None else environ
    value = source.get(env, "")
    return value if value != "" else SETTINGS[env].default


def _int(env: str, environ=None) -> int:
    raw = _get(env, environ)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{env} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{env} must be positive, got {value}")
    return value


def _on_off(env: str, environ=None) -> bool:
    raw = _get(env, environ).strip().lower()
    if raw not in ("on", "off"):
        raise ValueError(f"{env} must be on or off, got {raw!r}")
    return raw == "on"


@dataclass(frozen=True)
class Config:
    data_dir: Path
    store_url: str
    warehouse_url: str
    host: str
    port: int
    workers: int
    threads: int
    max_wire_bytes: int
    max_payload_bytes: int
    max_error_bytes: int
    max_uri_bytes: int
    max_header_bytes: int
    load_batch: int
    load_interval_ms: int
    spool: bool
    spool_segment_bytes: int
    spool_segment_seconds: int

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "Config":
        """Read every setting; keyword overrides (from CLI flags) win when not None."""
        data_dir = Path(overrides.pop("data_dir", None) or _get("GLEANPIPE_DATA_DIR", environ))
        store_url = overrides.pop("store_url", None) or _get("GLEANPIPE_STORE_URL", environ)
        warehouse_url = overrides.pop("warehouse_url", None) or _get("GLEANPIPE_WAREHOUSE_URL", environ)
        values = dict(
            data_dir=data_dir,
            store_url=store_url or f"file://{data_dir / 'store'}",
            warehouse_url=warehouse_url or f"duckdb://{data_dir / 'warehouse.duckdb'}",
            host=_get("GLEANPIPE_HOST", environ),
            port=_int("GLEANPIPE_PORT", environ),
            workers=_int("GLEANPIPE_WORKERS", environ),
            threads=_int("GLEANPIPE_THREADS", environ),
            max_wire_bytes=_int("GLEANPIPE_MAX_WIRE_BYTES", environ),
            max_payload_bytes=_int("GLEANPIPE_MAX_PAYLOAD_BYTES", environ),
            max_error_bytes=_int("GLEANPIPE_MAX_ERROR_BYTES", environ),
            max_uri_bytes=_int("GLEANPIPE_MAX_URI_BYTES", environ),
            max_header_bytes=_int("GLEANPIPE_MAX_HEADER_BYTES", environ),
            load_batch=_int("GLEANPIPE_LOAD_BATCH", environ),
            load_interval_ms=_int("GLEANPIPE_LOAD_INTERVAL_MS", environ),
            spool=_on_off("GLEANPIPE_SPOOL", environ),
            spool_segment_bytes=_int("GLEANPIPE_SPOOL_SEGMENT_BYTES", environ),
            spool_segment_seconds=_int("GLEANPIPE_SPOOL_SEGMENT_SECONDS", environ),
        )
        known = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise TypeError(f"unknown setting {key!r}")
            if value is not None:
                values[key] = value
        return cls(**values)
