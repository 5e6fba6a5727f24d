"""SQL from `gleanpipe query` (and the other commands) that reaches `serve` runs read-only.

Without a server, the CLI opens the DuckDB file read-only, so DuckDB itself refuses a CREATE,
INSERT, DROP or COPY. Through serve's admin API the same SQL would run on serve's writable
connection, so a command's meaning would depend on whether serve happens to run. This module
refuses, before running anything, every statement that is not a read.
"""

from __future__ import annotations

import duckdb

# DESCRIBE, SHOW, SUMMARIZE and FROM-first queries parse as SELECT.
READ_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


class WriteRefused(ValueError):
    pass


def check(sql: str) -> None:
    """Raise WriteRefused unless every statement of ``sql`` only reads (a syntax error raises
    DuckDB's own ParserException, as running it would)."""
    for statement in duckdb.extract_statements(sql):
        if statement.type not in READ_STATEMENTS:
            kind = statement.type.name
            raise WriteRefused(
                f"the warehouse is read-only for queries: a {kind} statement is not run "
                "(SELECT, EXPLAIN, DESCRIBE, SHOW and SUMMARIZE are)")


def read_only(query):
    """``query(sql, params)`` that runs only reading statements."""

    def run(sql: str, params=None):
        check(sql)
        return query(sql, params)

    return run
