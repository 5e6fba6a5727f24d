"""SQL from `gleanpipe query` (and the other commands) that reaches `serve` runs read-only.

On BigQuery (``check_bigquery``) a query runs with the caller's own permissions, so it is held
to one statement that starts with SELECT or WITH, which BigQuery cannot make write anything
(DML inside WITH is not BigQuery SQL). This is told from the words themselves, past comments
and quoted text: a dry run would do, but bqemulator carries out some statements it dry-runs.

Without a server, the CLI opens the DuckDB file read-only, so DuckDB itself refuses a CREATE,
INSERT, DROP or COPY. Through serve's admin API the same SQL would run on serve's writable
connection, so a command's meaning would depend on whether serve happens to run. This module
refuses, before running anything, every statement that is not a read. Then
``DuckDBWarehouse.read_query`` runs it in a read-only transaction, which also stops a write
that parses as a SELECT (DuckDB 2 runs DELETE/UPDATE/INSERT ... RETURNING inside WITH).
"""

from __future__ import annotations

import re

import duckdb

# DESCRIBE, SHOW, SUMMARIZE and FROM-first queries parse as SELECT.
SELECT = duckdb.StatementType.SELECT
EXPLAIN = duckdb.StatementType.EXPLAIN
# a PIVOT whose ON has no IN list: DuckDB runs it as several statements, the first of which makes
# a type of the values it finds (even inside a SELECT: `SELECT * FROM (PIVOT ...)`)
MULTI = duckdb.StatementType.MULTI
# EXPLAIN's own words before the statement it explains: ANALYZE, or options in parentheses,
# with blanks and comments between them (DuckDB 2 keeps a statement's leading comment).
_GAP = r"(?:\s|/\*.*?\*/|--[^\n]*(?:\n|$))*"
EXPLAIN_HEAD = re.compile(rf"{_GAP}EXPLAIN\b{_GAP}(?:ANALY[SZ]E\b{_GAP}|\([^)]*\){_GAP})?",
                          re.IGNORECASE | re.DOTALL)

# a statement's first word(s) as written, past blanks and comments: what the user calls it
LEADING_WORDS = re.compile(rf"{_GAP}((?:FORCE\s+)?[A-Za-z]+)", re.IGNORECASE | re.DOTALL)


class SqlRefused(ValueError):
    """SQL refused before it runs: not one statement, or not a read. The query's own fault, as
    DuckDB's errors for a statement that does not parse or bind are."""


class WriteRefused(SqlRefused):
    pass


def _explains_a_select(query: str) -> bool:
    """EXPLAIN ANALYZE runs what it explains, so an EXPLAIN reads only when that is a SELECT (a
    read-only file refuses any EXPLAIN of a write too). What cannot be told apart is refused."""
    head = EXPLAIN_HEAD.match(query)
    try:
        explained = duckdb.extract_statements(query[head.end():]) if head else []
    except duckdb.Error:
        return False
    return len(explained) == 1 and explained[0].type == SELECT


def check(sql: str) -> None:
    """Raise WriteRefused unless every statement of ``sql`` only reads, SqlRefused unless there is
    one statement (a syntax error raises DuckDB's own ParserException, as running it would)."""
    statements = duckdb.extract_statements(sql)
    if not statements:  # ";" or a comment alone: DuckDB would answer with nothing at all
        raise SqlRefused("no statement in this SQL: give a SELECT")
    if len(statements) > 1:  # DuckDB runs them all and returns the last one's rows: the others would vanish
        raise SqlRefused(f"one statement at a time: this SQL has {len(statements)}")
    for statement in statements:
        try:
            kind_of = statement.type
        except ValueError:  # a type this duckdb module has no name for (UPDATE EXTENSIONS: "29 is not a valid ...")
            kind_of = None
        if kind_of == EXPLAIN and not _explains_a_select(statement.query):
            raise WriteRefused("the warehouse is read-only for queries: EXPLAIN is run on a SELECT only "
                               "(EXPLAIN ANALYZE runs the statement it explains)")
        if kind_of == MULTI:  # before: "a SELECT statement is not run (SELECT, ... are)", for SELECT ... (PIVOT ...)
            raise WriteRefused(
                "the warehouse is read-only for queries: DuckDB runs this SQL as several statements, which is not "
                "run (a PIVOT whose ON has no IN list first makes a type of the values it finds): name the values, "
                "PIVOT ... ON name IN ('a', 'b') ...")
        if kind_of not in (SELECT, EXPLAIN):
            kind = _kind(statement.query, kind_of)
            raise WriteRefused(
                f"the warehouse is read-only for queries: {_article(kind)} {kind} statement is not run "
                "(SELECT, DESCRIBE, SHOW, SUMMARIZE and EXPLAIN of a SELECT are)")


def _kind(query: str, kind_of) -> str:
    """The statement's kind as its SQL names it (INSTALL, CHECKPOINT, USE): DuckDB's type lumps
    several together (an INSTALL is a LOAD, a CHECKPOINT a CALL). After a WITH, DuckDB's type."""
    words = LEADING_WORDS.match(query)
    if words and (words[1].upper() != "WITH" or kind_of is None):
        return " ".join(words[1].upper().split())
    return kind_of.name if kind_of is not None else "unknown"


def _article(word: str) -> str:
    if word.upper() == "USE":  # said "yoos": a USE, an UPDATE
        return "a"
    return "an" if word[:1].upper() in "AEIOU" else "a"


def read_only(query):
    """``query(sql, params)`` that runs only reading statements."""

    def run(sql: str, params=None):
        check(sql)
        return query(sql, params)

    return run


def read_only_for(warehouse_url: str, query):
    """``query`` of the warehouse at ``warehouse_url``, run only when it reads: DuckDB's parser
    checks SQL for DuckDB; BigQuery's ``read_query`` makes its own check (``check_bigquery``),
    as DuckDB cannot parse BigQuery's SQL (``ARRAY<INT64>[1, 2]``)."""
    return read_only(query) if warehouse_url.startswith("duckdb://") else query


# BigQuery's lexical pieces that may hold a ";" or a keyword without being one: quoted text
# (raw/bytes prefixes, triple quotes), quoted names, and comments (--, #, /* */).
_BQ_SKIP = re.compile(
    r"[rRbB]{0,2}(?:'{3}.*?'{3}|\"{3}.*?\"{3}|'(?:\\.|[^'\\\n])*'|\"(?:\\.|[^\"\\\n])*\")"
    r"|`(?:\\.|[^`\\])*`|--[^\n]*|#[^\n]*|/\*.*?\*/", re.DOTALL)
_BQ_READS = ("SELECT", "WITH")


def check_bigquery(sql: str) -> None:
    """Raise WriteRefused (SqlRefused for several statements) unless ``sql`` is one BigQuery
    statement that starts with SELECT or WITH (after blanks, comments and opening parentheses)."""
    bare = _BQ_SKIP.sub(" ", sql)
    statements = [part for part in bare.split(";") if part.strip()]
    if len(statements) > 1:
        raise SqlRefused(f"one statement at a time: this SQL has {len(statements)}")
    words = re.findall(r"[A-Za-z_]+", statements[0] if statements else "")
    first = (words[0] if words else "").upper()
    if first not in _BQ_READS:
        what = f"{_article(first)} {first} statement" if first else "SQL with no statement"
        raise WriteRefused(f"the warehouse is read-only for queries: {what} is not run "
                           "(a query starts with SELECT or WITH)")
