"""Warehouse backends, chosen by URL."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from ..config import Config, SettingError
from ..serve_state import command_line, has_ended
from .base import LoadError, RowDataError, Warehouse, WarehouseUnavailable, WriteResult

__all__ = ["open_warehouse", "open_when_let_go", "held_by_another", "Warehouse", "WarehouseUnavailable",
           "WarehouseHeld", "RowDataError", "LoadError", "WriteResult"]


class WarehouseHeld(WarehouseUnavailable):
    """Another process holds the DuckDB file (after ``open_when_let_go``'s wait, if any): ``holder``
    names it ("PID n (its command line)"), ``waited`` says whether it was waited for."""

    def __init__(self, message: str, holder: str, waited: bool):
        super().__init__(message)
        self.holder, self.waited = holder, waited


def held_by_another(exc: WarehouseUnavailable) -> bool:
    """Whether a warehouse could not be opened because another process holds it (DuckDB's file lock),
    rather than for any other reason (not a DuckDB file, a folder, credentials)."""
    return "Conflicting lock" in str(exc) or "Could not set lock" in str(exc)


def warehouse_holder(message: str) -> tuple[int, str | None] | None:
    """(pid, its command line or None) of the process that holds a DuckDB file, from DuckDB's lock
    error ``message`` (which names only the interpreter); None when it names no PID."""
    found = re.search(r"\(PID (\d+)\)", message)
    return None if not found else (int(found[1]), command_line(int(found[1])))


def holder_name(holder: tuple[int, str | None] | None) -> str:
    """"PID n (its command line)" of a ``warehouse_holder``, as far as this system tells."""
    if holder is None:
        return "another process"
    pid, command = holder
    return f"PID {pid} ({command})" if command else f"PID {pid}"  # "": a process ending, its memory let go


ENDED_RETRY_S = 1.0  # how long an open is tried again when the holder DuckDB named has ended since


def open_when_let_go(url: str, *, config: Config, read_only: bool = False, wait_s: float = 0.0,
                     wait_for: Callable[[str | None], bool] = lambda command: True,
                     on_wait: Callable[[str], None] = lambda holder: None) -> Warehouse:
    """``open_warehouse``, waiting up to ``wait_s`` while another process holds the DuckDB file and
    ``wait_for(its command line)`` says it will let go (``on_wait(holder)`` once, when the wait
    begins); then WarehouseHeld naming that process, not DuckDB's lines about the interpreter. A
    holder that has ended since DuckDB named it is not asked about: the open is tried again, for up
    to ENDED_RETRY_S when ``wait_s`` is shorter."""
    started = time.monotonic()
    said = False
    while True:
        try:
            return open_warehouse(url, read_only=read_only, config=config)
        except WarehouseHeld:
            raise
        except WarehouseUnavailable as exc:
            if not held_by_another(exc):
                raise
            holder, waited = warehouse_holder(str(exc)), time.monotonic() - started
            # Ending since DuckDB named it: gone, a zombie, or on its way (its memory let go, so /proc gives
            # an empty command line; a process with a file open always has one): its lock is gone or going.
            if holder and (holder[1] == "" or has_ended(holder[0])) and waited < max(wait_s, ENDED_RETRY_S):
                time.sleep(0.05)
                continue
            if waited >= wait_s or not wait_for(holder[1] if holder else None):
                raise WarehouseHeld(str(exc), holder_name(holder), waited >= wait_s > 0) from None
            if not said:
                on_wait(holder_name(holder))
                said = True
            time.sleep(0.2)


def open_warehouse(url: str, *, read_only: bool = False, config: Config | None = None) -> Warehouse:
    """``duckdb://PATH`` (a DuckDB file; ``duckdb://:memory:`` for a throwaway one) or
    ``bigquery://PROJECT/LOCATION`` (a dataset per app in that project). Its settings come from
    ``config`` (None: read from the environment)."""
    scheme = warehouse_scheme(url)
    config = config if config is not None else Config.from_env()
    if scheme == "duckdb":
        from .duckdb import DuckDBWarehouse

        return DuckDBWarehouse(url[len("duckdb://"):], read_only=read_only, memory_limit=config.duckdb_memory_limit)
    from .bigquery import BigQueryWarehouse, parse_url

    project, location = parse_url(url)
    return BigQueryWarehouse(project, location, config, read_only=read_only)


def warehouse_scheme(url: str) -> str:
    """"duckdb" or "bigquery", once the URL is known to be well-formed; SettingError otherwise."""
    scheme, sep, rest = url.partition("://")
    if not sep or not rest:
        raise SettingError(f"warehouse URL must look like duckdb://PATH or bigquery://PROJECT/LOCATION, got {url!r}")
    if scheme not in ("duckdb", "bigquery"):
        raise SettingError(f"unknown warehouse scheme {scheme!r} in {url!r} (use duckdb://PATH or "
                           "bigquery://PROJECT/LOCATION)")
    if scheme == "bigquery":
        from .bigquery import parse_url

        parse_url(url)
    return scheme
