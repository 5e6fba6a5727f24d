"""Warehouse backends, chosen by URL."""

from __future__ import annotations

from .base import LoadError, RowDataError, Warehouse, WarehouseUnavailable, WriteResult

__all__ = ["open_warehouse", "Warehouse", "WarehouseUnavailable", "RowDataError", "LoadError", "WriteResult"]


def open_warehouse(url: str, *, read_only: bool = False) -> Warehouse:
    """``duckdb://PATH`` (a DuckDB file; ``duckdb://:memory:`` for a throwaway one)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not rest:
        raise ValueError(f"warehouse URL must look like duckdb://PATH, got {url!r}")
    if scheme == "duckdb":
        from .duckdb import DuckDBWarehouse

        return DuckDBWarehouse(rest, read_only=read_only)
    if scheme == "bigquery":
        raise ValueError("bigquery:// warehouses are not available in this version of gleanpipe (use duckdb://)")
    raise ValueError(f"unknown warehouse scheme {scheme!r} in {url!r} (use duckdb://PATH)")
