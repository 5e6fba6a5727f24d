"""Warehouse backends, chosen by URL."""

from __future__ import annotations

from ..config import Config, SettingError
from .base import LoadError, RowDataError, Warehouse, WarehouseUnavailable, WriteResult

__all__ = ["open_warehouse", "held_by_another", "Warehouse", "WarehouseUnavailable", "RowDataError", "LoadError",
           "WriteResult"]


def held_by_another(exc: WarehouseUnavailable) -> bool:
    """Whether a warehouse could not be opened because another process holds it (DuckDB's file lock),
    rather than for any other reason (not a DuckDB file, a folder, credentials)."""
    return "Conflicting lock" in str(exc) or "Could not set lock" in str(exc)


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
