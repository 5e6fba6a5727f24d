"""``duckdb://PATH``: one DuckDB file; a schema per app (the BigQuery dataset), a table per ping.

Writes go through newline-delimited JSON read by DuckDB's ``read_json`` with the table's
own column types, so nested STRUCT/LIST values are parsed in C++, not row by row in
Python. Each ``write`` is one transaction: tables created or widened, rows inserted once
per document_id (anti-join), deletion requests carried out, errors recorded, and the derived
views (views.py) of the schemas it made or reshaped created, so none is ever seen without them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from ..naming import UnsafeIdentifier, parse_key, view_name
from ..naming import quote_ident as q
from ..table_schema import EVENTS_STREAM_COLUMNS, EVENTS_STREAM_TABLE, EVENTS_STREAM_VIEW, METRIC_TYPES, PING_COLUMNS
from ..transform import PingRow
from ..views import refresh
from . import missing_table
from .base import (DELETION_TABLE, EVENTS_KEY, META, QUERY_PAGE_ROWS, DatasetUnusable, DeletionAttempt, LoadError,
                   QueryFailed, RowDataError, Warehouse, WarehouseClosing, WarehouseUnavailable, WriteResult,
                   dedup_view_query, duckdb_path_refused, first_per_document, in_pages, loaded_keys, needed_metrics,
                   without_deleted)
log = logging.getLogger("gleanpipe.warehouse")


class _ViewsRefused(Exception):
    """DuckDB refused a derived view inside a transaction (which that aborted)."""


INTERNAL_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {META};
CREATE TABLE IF NOT EXISTS {META}.errors (
    object_key VARCHAR, app_id VARCHAR, doc_type VARCHAR, document_id VARCHAR,
    error_type VARCHAR, error_message VARCHAR, failed_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS {META}.deletions (
    dataset VARCHAR, client_id VARCHAR, document_id VARCHAR, requested_at TIMESTAMPTZ,
    executed_at TIMESTAMPTZ, rows_deleted BIGINT);
ALTER TABLE {META}.deletions ADD COLUMN IF NOT EXISTS attempts BIGINT;
ALTER TABLE {META}.deletions ADD COLUMN IF NOT EXISTS last_error VARCHAR;
ALTER TABLE {META}.deletions ADD COLUMN IF NOT EXISTS recorded_at TIMESTAMPTZ;
"""

# Versions before 2026-12-04 recorded a deletion request again each time its ping was loaded again
# (by `replay`): one record per request stays, with the rows all its loads deleted and its first
# execution. Records without a document id (none are written now) are left as they are.
MERGE_DELETIONS = f"""
CREATE TEMP TABLE deletion_copies AS
    SELECT dataset, document_id, min(rowid) AS keep, sum(rows_deleted) AS rows_deleted,
           min(executed_at) AS executed_at, sum(attempts) AS attempts
    FROM {META}.deletions WHERE document_id IS NOT NULL GROUP BY dataset, document_id HAVING count(*) > 1;
UPDATE {META}.deletions AS d SET rows_deleted = c.rows_deleted, executed_at = c.executed_at, attempts = c.attempts,
    last_error = CASE WHEN c.executed_at IS NULL THEN d.last_error END
    FROM deletion_copies AS c WHERE d.rowid = c.keep;
DELETE FROM {META}.deletions AS d USING deletion_copies AS c
    WHERE d.dataset = c.dataset AND d.document_id = c.document_id AND d.rowid <> c.keep;
DROP TABLE deletion_copies;
"""

# Files written before events_stream became a view: the table takes its new name.
RENAME_EVENTS_TABLE = f"""
SELECT schema_name FROM duckdb_tables() WHERE table_name = '{EVENTS_STREAM_VIEW}' AND schema_name <> '{META}'
"""

# A write these refuse is refused for its rows (the loader halves the batch down to them, and they
# become load errors): values that do not fit, and names that cannot be columns, a name quote_ident
# refuses or two that DuckDB takes for one (it ignores case: a table with A_b from an older load and
# a ping's a_b). Never transient trouble (IO, locks, memory): that is retried.
DATA_ERRORS = (duckdb.ConversionException, duckdb.InvalidInputException, duckdb.TypeMismatchException,
               duckdb.OutOfRangeException, duckdb.BinderException, UnsafeIdentifier)
# What DuckDB raises for a statement's own fault, in SQL from a user (``read_query_pages``: `gleanpipe
# query`, serve's admin API, which answers it 400): the SQL does not parse or bind (ProgrammingError:
# Parser, Binder, Catalog, InvalidInput such as error() or a division by zero, ...), a value does not
# convert or is out of range (DataError), DuckDB does not do what it asks (NotImplementedException),
# a file it reads is not there (IOException), currval() of a sequence not used (SequenceException),
# it needs more than the memory limit (OutOfMemoryException, whose message says to ask for less), or
# its client hung up (InterruptException: ``interrupt_reads``; serve stopping is WarehouseClosing).
# A statement that needs an extension DuckDB does not have is its own fault too (read_query_pages
# raises ExtensionUnavailable, a QueryFailed). Not DuckDB's own failures (InternalException,
# FatalException: a bug, which can invalidate the database), nor a lost connection or a transaction
# that fails otherwise than by a write refused.
STATEMENT_ERRORS = (duckdb.ProgrammingError, duckdb.DataError, duckdb.NotSupportedError, duckdb.IOException,
                    duckdb.SequenceException, duckdb.OutOfMemoryException, duckdb.InterruptException)
# DuckDB's words for a statement that needs an extension it does not have and may not fetch
# (autoinstall is off, ``__init__``): a file on https://, s3:// or hf:// (httpfs), on azure://,
# sqlite_scan() (sqlite_scanner). The Python module raises these as its base duckdb.Error (DuckDB's
# AUTOLOAD and MISSING_EXTENSION errors have no class of their own there), so they are told by
# their words: the first is DuckDB's with autoloading on (gleanpipe's), the second with it off.
EXTENSION_MISSING = re.compile(r"An error occurred while trying to automatically install the required extension '"
                               r"|[^\n]* requires the extension [^\n]* to be loaded")
DUCKDB_INSTALL_ADVICE = re.compile(r'^Install it first using "INSTALL (\w+)"\.$', re.M)
# DuckDB's words for a write on a file opened read-only (`gleanpipe query` with serve stopped): it
# checks that before the transaction's own read-only mode, and names the statement's type, which
# for a DELETE, UPDATE or INSERT inside WITH is "SELECT".
READ_ONLY_FILE = re.compile(r'Invalid Input Error: Cannot execute statement of type "[^"]*" on database "([^"]*)" '
                            r'which is attached in read-only mode')


def extension_unavailable(message: str) -> str:
    """DuckDB's words for an extension it may not download, with its advice (``INSTALL httpfs``,
    which gleanpipe's read-only queries refuse) made how to install it for this DuckDB, outside
    gleanpipe; once installed, DuckDB loads it itself (autoloading is on, only autoinstall is off)."""
    return DUCKDB_INSTALL_ADVICE.sub(
        lambda m: (f"gleanpipe never lets DuckDB download an extension and its queries run no INSTALL: "
                   f"install {m[1]} once (it needs the network) with this Python's DuckDB, "
                   f"{shlex.quote(sys.executable)} -c \"import duckdb; duckdb.sql('INSTALL {m[1]}')\", then query "
                   "again."),
        message, count=1)


class ExtensionUnavailable(QueryFailed):
    """A query that needs a DuckDB extension this DuckDB does not have (and is not let fetch): the
    query asks for what the warehouse cannot give, its own fault (serve's admin API answers 400), in
    DuckDB's words, with and without serve."""


# Names DuckDB keeps for itself: its built-in catalogs, and the system schemas every catalog has.
DUCKDB_OWN_NAMES = ("system", "temp", "information_schema", "pg_catalog")
CLOSE_WAIT_S = 10  # how long close() interrupts the reads and the write still running before it closes anyway
CLOSING = "the warehouse is being closed (gleanpipe serve is stopping): the query was stopped"
TEMP_FILE_RE = re.compile(r' in file "[^"]*", in line \d+(?=:)')


def _columns_ddl(columns) -> str:
    return ", ".join(f"{q(name)} {t.duckdb()}" for name, t in columns)


def _metric_ddl(metric_type: str, columns) -> str:
    return _columns_ddl((col, METRIC_TYPES[metric_type]) for col in sorted(columns))


def view_of(table: str) -> str | None:
    """The deduplicated view over a table: ``<ping>`` over ``<ping>_v<version>`` (none for a ping
    named like a table), ``events_stream`` over ``events_stream_v1``."""
    return EVENTS_STREAM_VIEW if table == EVENTS_STREAM_TABLE else view_name(table.rpartition("_v")[0])


JSON_OBJECT_BYTES = 16 * 1024 * 1024  # read_json's maximum_object_size for rows shorter than this (its default)


def _intervals_as_text(t) -> str | None:
    """The DuckDB type ``t`` (a result column's) with every INTERVAL in it made VARCHAR, or None
    when it has none: a cast to it gives each interval as DuckDB prints it and keeps structs,
    lists and maps as they are."""
    kind = t.id
    if kind == "interval":
        return "VARCHAR"
    if kind not in ("struct", "list", "array", "map", "union"):
        return None
    kids = t.children[1:] if kind == "union" else t.children  # a union's first child is its tag
    inner = [_intervals_as_text(c) if kind != "array" or n == "child" else None for n, c in kids]
    if not any(inner):
        return None
    texts = [x or str(c) for x, (_, c) in zip(inner, kids)]
    name = lambda n: '"' + n.replace('"', '""') + '"'
    if kind in ("struct", "union"):
        return f"{kind.upper()}(" + ", ".join(f"{name(n)} {x}" for (n, _), x in zip(kids, texts)) + ")"
    if kind == "list":
        return f"{texts[0]}[]"
    if kind == "array":
        return f"{texts[0]}[{kids[1][1]}]"
    return f"MAP({texts[0]}, {texts[1]})"


def out_of_memory(exc: Exception) -> str:
    """DuckDB's out-of-memory error with what a gleanpipe user can do, in place of its advice
    (SET threads, SET memory_limit), which no gleanpipe command takes."""
    return (f"{str(exc).splitlines()[0]}\nDuckDB's memory limit is GLEANPIPE_DUCKDB_MEMORY_LIMIT "
            "(default: 80% of the machine's memory): raise it, or ask for less (a LIMIT, fewer columns).")


def _remove_temp_folder(folder: str) -> None:
    """A warehouse's own temp folder, then ``<file>.load-tmp`` if that is empty now (it was left
    empty in the data dir after every clean stop). Another warehouse on the file may have its
    folder there, or make it anew: the parent stays then, or is made again (``_temp_folder``)."""
    shutil.rmtree(folder, ignore_errors=True)
    parent = os.path.dirname(folder)
    if os.path.basename(parent).endswith(".load-tmp"):  # not the system's temp folder
        try:
            os.rmdir(parent)
        except OSError:  # not empty (another warehouse's folder), gone already, or not ours to remove
            pass


class DuckDBWarehouse(Warehouse):
    def __init__(self, path: str, *, read_only: bool = False, memory_limit: int | None = None):
        """``memory_limit``: bytes (Config.duckdb_memory_limit, GLEANPIPE_DUCKDB_MEMORY_LIMIT); None:
        DuckDB's own default."""
        self.path = path
        self.url = f"duckdb://{path}"
        self.read_only = read_only
        if refused := duckdb_path_refused(path):
            raise ValueError(refused)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # Never fetch an extension: DuckDB replaying the WAL a crash left after a change to a
            # table with a JSON column asked to download "json" (which the wheel has built in) and
            # failed offline, so the warehouse could not be opened at all.
            options: dict = {"autoinstall_known_extensions": False}
            if memory_limit is not None:
                options["memory_limit"] = f"{memory_limit}B"
            self.con = duckdb.connect(path, read_only=read_only, config=options)
        except duckdb.Error as exc:  # locked, unreadable, a WAL that cannot be replayed
            raise WarehouseUnavailable(f"cannot open {path}: {str(exc).splitlines()[0]}") from exc
        self.con.execute("SET TimeZone = 'UTC'")
        # Dataset names DuckDB cannot hold as a schema: its catalogs (system, temp, and this file's,
        # "warehouse" for warehouse.duckdb) make "<name>".<table> ambiguous, and its system schemas
        # cannot be created.
        self._unusable = {name.lower() for (name,) in  # DuckDB matches catalog names in any case
                          self.con.execute("SELECT database_name FROM duckdb_databases()").fetchall()}
        self._unusable.update(DUCKDB_OWN_NAMES)
        self._lock = threading.Lock()
        # the cursors of the reads running now (query, read_query, status), by thread: close()
        # interrupts them, and waits for them, before it closes the connection they share
        self._readers: dict[duckdb.DuckDBPyConnection, int] = {}
        self._readers_changed = threading.Condition()
        self._closing = False
        self._types: dict[tuple[str, str], dict[str, str]] = {}  # (dataset, table) -> column -> type
        self._metrics: dict[tuple[str, str], dict[str, set[str]] | None] = {}
        self._deleted: dict[str, set[str]] = {}
        # Rows to insert are written here for read_json, and removed right after their INSERT.
        # The empty folder goes on close, or when the object is collected or the process exits
        # without a close (a load function's warehouse lives as long as its process).
        self._tmp = self._temp_folder()
        self._drop_tmp = weakref.finalize(self, _remove_temp_folder, self._tmp)
        self._reshaped: set[str] = set()  # datasets whose tables changed shape (views to refresh)
        if not read_only:
            self.con.execute(INTERNAL_DDL)
            self._upgrade()
            self._refresh_views(None)

    def _temp_folder(self) -> str:
        """A folder of this process's own beside a writable file, ``<file>.load-tmp/<pid>-<random>``.
        DuckDB lets one process at a time write the file, so a folder of another process there was
        left by one that is gone (a killed loader, rows of pings in it): it is removed. In the
        system's temp folder for a read-only or in-memory database."""
        if self.read_only or self.path == ":memory:":
            return tempfile.mkdtemp(prefix="gleanpipe-load-")
        parent = Path(f"{self.path}.load-tmp")
        mine = f"{os.getpid()}-"
        for last_try in (False, True):
            try:
                parent.mkdir(mode=0o700, exist_ok=True)
                for left in parent.iterdir():
                    if not left.name.startswith(mine):
                        shutil.rmtree(left, ignore_errors=True)
                return tempfile.mkdtemp(prefix=mine, dir=parent)
            except FileNotFoundError:  # the writer before, closing, removed the empty parent (_remove_temp_folder)
                if last_try:
                    raise

    def _upgrade(self) -> None:
        """Files from older versions: a deletion request recorded more than once is recorded once
        (MERGE_DELETIONS); from before the views, events_stream (a table then) becomes
        events_stream_v1, and every ping table gets its view."""
        if self.con.execute(f"SELECT 1 FROM {META}.deletions WHERE document_id IS NOT NULL "
                            "GROUP BY dataset, document_id HAVING count(*) > 1 LIMIT 1").fetchall():
            self._in_transaction(lambda: self.con.execute(MERGE_DELETIONS), views=False)
        for (schema,) in self.con.execute(RENAME_EVENTS_TABLE).fetchall():
            self.con.execute(f"ALTER TABLE {q(schema)}.{q(EVENTS_STREAM_VIEW)} RENAME TO {q(EVENTS_STREAM_TABLE)}")
        missing = self.con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE schema_name <> ? AND NOT EXISTS ("
            "SELECT 1 FROM duckdb_views() v WHERE v.schema_name = duckdb_tables.schema_name "
            "AND v.view_name = regexp_replace(duckdb_tables.table_name, '_v[0-9]+$', '')) "
            "AND regexp_matches(table_name, '_v[0-9]+$')", [META]).fetchall()
        for schema, table in missing:
            view = view_of(table)
            if view and not self.con.execute("SELECT 1 FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?",
                                             [schema, view]).fetchall():
                self._create_view(schema, table)

    # --- schema management --------------------------------------------------------

    def _table_types(self, dataset: str, table: str) -> dict[str, str]:
        key = (dataset, table)
        if key not in self._types:
            rows = self.con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = ? AND table_name = ? "
                "ORDER BY column_index",
                [dataset, table],
            ).fetchall()
            self._types[key] = dict(rows)
        return self._types[key]

    def _ensure_table(self, dataset: str, table: str, columns) -> None:
        """Create ``table`` with its dedup view if it does not exist yet (in the open transaction)."""
        if self._table_types(dataset, table):
            return
        self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {q(dataset)}")
        self.con.execute(f"CREATE TABLE IF NOT EXISTS {q(dataset)}.{q(table)} ({_columns_ddl(columns)})")
        self._types.pop((dataset, table), None)
        self._reshaped.add(dataset)
        self._create_view(dataset, table)

    def _refresh_reshaped(self) -> None:
        """After a commit: refresh the derived views of datasets whose tables changed shape (the
        fallback of ``_transaction`` when DuckDB refused a view)."""
        if self._reshaped:
            self._refresh_views(self._reshaped)
            self._reshaped.clear()

    def _transaction(self, body):
        """``body()`` in one transaction, ending with the derived views of the datasets it made or
        reshaped, so a reader sees an app's schema (or a new column) only with its views.

        A view DuckDB refuses aborts the transaction, and the views never fail a load: then the
        transaction is undone and ``body`` runs again, with the views made after the commit (and
        the failure logged) as before."""
        try:
            return self._in_transaction(body, views=True)
        except _ViewsRefused as exc:
            log.warning("could not make the derived views with the load (%s); loading first, views after", exc)
            result = self._in_transaction(body, views=False)
            self._refresh_reshaped()
            return result

    def _in_transaction(self, body, views: bool):
        """``body()`` between begin and commit, rolled back on any exception; with ``views``, the
        derived views of the datasets it reshaped are made before the commit."""
        try:
            self.con.begin()
            result = body()
            if views and self._reshaped:
                try:
                    refresh(self.con, sorted(self._reshaped))
                except duckdb.InterruptException:  # close() stops this write: not a view's fault
                    raise
                except duckdb.Error as exc:
                    raise _ViewsRefused(str(exc).splitlines()[0]) from exc
                self._reshaped.clear()
            self.con.commit()
            return result
        except BaseException:
            self._rollback()
            raise

    def _create_view(self, dataset: str, table: str) -> None:
        """The deduplicated view (one row per document_id; trivially so here, as inserts are
        exactly once) under the same name as on BigQuery, so queries move unchanged."""
        view = view_of(table)
        key = EVENTS_KEY if table == EVENTS_STREAM_TABLE else "document_id"
        if view:
            self.con.execute(f"CREATE OR REPLACE VIEW {q(dataset)}.{q(view)} AS "
                             + dedup_view_query(f"{q(dataset)}.{q(table)}", key))

    def _metric_fields(self, dataset: str, table: str) -> dict[str, set[str]] | None:
        key = (dataset, table)
        if key not in self._metrics:
            if "metrics" not in self._table_types(dataset, table):
                self._metrics[key] = None
            else:
                struct = self.con.sql(f"SELECT metrics FROM {q(dataset)}.{q(table)} LIMIT 0").types[0]
                self._metrics[key] = {name: {c for c, _ in t.children} for name, t in struct.children}
        return self._metrics[key]

    def _ensure_metrics(self, dataset: str, table: str, needed: dict[str, set[str]]) -> None:
        """Widen ``metrics`` with every (type, column) not there yet. Old rows read NULL."""
        if not needed:
            return
        have = self._metric_fields(dataset, table)
        if have is not None and all(mtype in have and cols <= have[mtype] for mtype, cols in needed.items()):
            return
        target = f"{q(dataset)}.{q(table)}"
        if have is None:
            ddl = ", ".join(f"{q(mtype)} STRUCT({_metric_ddl(mtype, cols)})" for mtype, cols in sorted(needed.items()))
            self.con.execute(f"ALTER TABLE {target} ADD COLUMN metrics STRUCT({ddl})")
        else:
            self.con.execute(f"ALTER TABLE {target} ALTER COLUMN metrics TYPE {self._widened(target, needed)}")
        # remade: DuckDB keeps a view's column list from its creation, and the catalog showed the old one
        self._create_view(dataset, table)
        self._types.pop((dataset, table), None)
        self._metrics.pop((dataset, table), None)
        self._reshaped.add(dataset)

    def _widened(self, target: str, needed: dict[str, set[str]]) -> str:
        """The type of ``metrics`` with every column of ``needed`` added: the fields there keep their
        order and types, new ones come after them.

        One ALTER ... TYPE (a cast by field name, old rows read NULL) for the whole widening, not an
        ADD COLUMN per new field: DuckDB carries out each nested ADD COLUMN by rewriting the column,
        so a ping with a thousand new metrics took a thousand rewrites (31 s here, with the
        warehouse lock held; 0.8 s now). And DuckDB 2.0.1 fails with an INTERNAL error, which
        invalidates the database, when it adds a field under ``metrics`` while some row's
        ``metrics`` is NULL (a ping with no metrics loaded before the column existed); the cast
        has no such trouble."""
        struct = self.con.sql(f"SELECT metrics FROM {target} LIMIT 0").types[0]
        parts = []
        for mtype, t in struct.children:
            fields = [f"{q(col)} {ctype}" for col, ctype in t.children]
            new = sorted(needed.get(mtype, set()) - {col for col, _ in t.children})
            fields += [f"{q(col)} {METRIC_TYPES[mtype].duckdb()}" for col in new]
            parts.append(f"{q(mtype)} STRUCT({', '.join(fields)})")
        there = {mtype for mtype, _ in struct.children}
        parts += [f"{q(mtype)} STRUCT({_metric_ddl(mtype, needed[mtype])})" for mtype in sorted(set(needed) - there)]
        return f"STRUCT({', '.join(parts)})"

    def _refresh_views(self, datasets) -> None:
        """Rebuild the derived views (views.py) after tables changed shape; never fails a load."""
        try:
            refresh(self.con, sorted(datasets) if datasets is not None else None)
        except duckdb.Error as exc:
            log.warning("could not refresh the derived views: %s", exc)

    def ensure_columns(self, tables: dict[tuple[str, str], dict[str, set[str]]]) -> list[str]:
        """Create ping tables and metric columns before data arrives (from app definitions).

        ``tables``: (dataset, table) -> metric type -> columns. Returns the columns added.
        """
        if self.read_only:
            raise RuntimeError("warehouse opened read-only")
        for dataset, _ in tables:
            if dataset in self._unusable:
                raise DatasetUnusable(self._unusable_reason(dataset, ping=False))

        def body() -> list[str]:
            added = []
            for (dataset, table), needed in sorted(tables.items()):
                self._ensure_table(dataset, table, PING_COLUMNS)  # as a load makes it
                have = self._metric_fields(dataset, table) or {}
                added += [f"{dataset}.{table}.metrics.{mtype}.{col}" for mtype, cols in sorted(needed.items())
                          for col in sorted(cols - have.get(mtype, set()))]
                self._ensure_metrics(dataset, table, {m: set(c) for m, c in needed.items() if c})
            return added

        with self._lock:
            return self._transaction(body)

    def execute(self, statements: list[tuple[str, list | None]]) -> None:
        """Run statements in one transaction (used for gleanpipe's own tables, e.g. the dictionary)."""
        if self.read_only:
            raise RuntimeError("warehouse opened read-only")
        def body() -> None:
            for sql, params in statements:
                self.con.execute(sql, params or [])

        with self._lock:
            self._in_transaction(body, views=False)

    def refresh_views(self) -> None:
        with self._lock:
            self._refresh_views(None)

    # --- writing ------------------------------------------------------------------

    def _insert_json(self, dataset: str, table: str, rows: list[bytes]) -> int:
        """INSERT rows (JSON objects, read with the table's own column types); returns rows inserted."""
        types = self._table_types(dataset, table)
        spec = "{" + ", ".join(f"'{name}': '{t}'" for name, t in types.items()) + "}"
        path = os.path.join(self._tmp, "rows.ndjson")
        # DuckDB reserves twice this per read, against its memory limit: the batch's longest row,
        # not a fixed 256 MiB (a 512 MiB reservation that failed every load under a limit below it)
        longest = max(JSON_OBJECT_BYTES, *map(len, rows))
        sql = (
            f"INSERT INTO {q(dataset)}.{q(table)} BY NAME SELECT * FROM read_json(?, format = 'newline_delimited', "
            f"columns = {spec}, maximum_object_size = {longest + 1})"
        )
        try:
            try:
                with open(path, "wb") as f:
                    f.write(b"\n".join(rows))
            except OSError as exc:  # a full disk, say: which file, not only "[Errno 28]"
                raise WarehouseUnavailable(f"cannot write the rows to load to {path}: {exc.strerror or exc}") from exc
            return self.con.execute(sql, [path]).fetchone()[0]
        finally:  # ping data is not left lying about in the temp folder
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # said, not raised: it would take the place of the load's own answer
                log.warning("could not remove %s after a load: %s", path, exc.strerror or exc)

    def _insert(self, dataset: str, table: str, rows: list[PingRow]) -> int:
        """Insert rows whose document_id is not in the table yet; returns rows inserted.

        The ids already there are looked up first (one column scanned, 2 ms) and their rows left
        out, rather than an INSERT ... WHERE NOT EXISTS: on a table with a wide ``metrics`` (1,800
        metric columns) that anti-join cost 100 ms more per batch than the plain INSERT."""
        if not rows:
            return 0
        present = self._present(self.con, dataset, table, "document_id", [r.path.document_id for r in rows])
        fresh = [r.row_json for r in rows if r.path.document_id not in present]
        return self._insert_json(dataset, table, fresh) if fresh else 0

    def _deleted_clients(self, dataset: str) -> set[str]:
        if dataset not in self._deleted:
            rows = self.con.execute(f"SELECT client_id FROM {META}.deletions WHERE dataset = ?", [dataset]).fetchall()
            self._deleted[dataset] = {r[0] for r in rows}
        return self._deleted[dataset]

    def _delete_rows(self, dataset: str, client_id: str) -> int:
        """Delete every row of this client in the app's tables (deletion-request pings stay)."""
        deleted = 0
        tables = self.con.execute(
            "SELECT DISTINCT table_name FROM duckdb_columns() JOIN duckdb_tables() USING (schema_name, table_name) "
            "WHERE schema_name = ? AND column_name IN ('client_info', 'client_id') AND table_name <> ? ORDER BY 1",
            [dataset, DELETION_TABLE],
        ).fetchall()
        for (table,) in tables:
            where = "client_id = ?" if table == EVENTS_STREAM_TABLE else "client_info.client_id = ?"
            deleted += self.con.execute(f"DELETE FROM {q(dataset)}.{q(table)} WHERE {where}", [client_id]).fetchone()[0]
        return deleted

    def _delete_client(self, dataset: str, row: PingRow, now: str) -> bool:
        """Carry out a deletion request; True when it is recorded now, False when this request
        (its document_id) was recorded before, as when its object is loaded again by a replay."""
        deleted = self._delete_rows(dataset, row.client_id)
        self._deleted_clients(dataset).add(row.client_id)
        again = self.con.execute(
            f"UPDATE {META}.deletions SET rows_deleted = coalesce(rows_deleted, 0) + ? "
            "WHERE dataset = ? AND document_id = ? RETURNING 1",
            [deleted, dataset, row.path.document_id]).fetchall()
        if again:
            return False
        self.con.execute(
            f"INSERT INTO {META}.deletions (dataset, client_id, document_id, requested_at, executed_at, rows_deleted, "
            "attempts, recorded_at) VALUES (?, ?, ?, ?, ?, ?, 1, ?)",
            [dataset, row.client_id, row.path.document_id, row.submission_timestamp, now, deleted, now],
        )
        return True

    def retry_deletions(self) -> list[DeletionAttempt]:
        """Deletions run inside the load's transaction here, so none is normally pending; a row
        left with no executed_at (written by another tool, say) is carried out now."""
        if self.read_only:
            raise RuntimeError("warehouse opened read-only")
        out = []
        with self._lock:
            pending = self.con.execute(
                f"SELECT dataset, client_id, document_id FROM {META}.deletions WHERE executed_at IS NULL "
                "ORDER BY requested_at").fetchall()
            for dataset, client_id, document_id in pending:
                self.con.begin()
                try:
                    n = self._delete_rows(dataset, client_id)
                    self.con.execute(
                        f"UPDATE {META}.deletions SET executed_at = ?, rows_deleted = coalesce(rows_deleted, 0) + ?, "
                        "attempts = coalesce(attempts, 0) + 1, last_error = NULL WHERE document_id = ? AND dataset = ?",
                        [datetime.now(timezone.utc), n, document_id, dataset])
                    self.con.commit()
                except duckdb.Error as exc:
                    self._rollback()
                    out.append(DeletionAttempt(dataset, client_id, document_id, False, 0, str(exc).splitlines()[0]))
                    continue
                out.append(DeletionAttempt(dataset, client_id, document_id, True, n))
        return out

    def _record_errors(self, errors: list[LoadError], now: str) -> None:
        if not errors:
            return
        keys = [e.object_key for e in errors]
        self.con.execute(f"DELETE FROM {META}.errors WHERE list_contains(?, object_key)", [keys])
        self.con.executemany(
            f"INSERT INTO {META}.errors VALUES (?, ?, ?, ?, ?, ?, ?)",
            [[e.object_key, e.app_id, e.doc_type, e.document_id, e.error_type, e.error_message, now] for e in errors],
        )

    def _unusable_reason(self, dataset: str, ping: bool = True) -> str:
        kept = "; the ping stays in the raw store" if ping else ""
        if dataset in DUCKDB_OWN_NAMES:
            return (f"the app's dataset name {dataset} is a name DuckDB keeps for itself (a built-in catalog or "
                    f"schema), so DuckDB cannot hold its tables{kept}")
        return (f"the app's dataset name {dataset} is also the name DuckDB gives this warehouse file "
                f"({Path(self.path).name}), so it cannot hold its tables{kept} (a warehouse file with another name "
                "can: GLEANPIPE_WAREHOUSE_URL)")

    def write(self, rows: list[PingRow], errors: list[LoadError]) -> WriteResult:
        if self.read_only:
            raise RuntimeError("warehouse opened read-only")
        now = datetime.now(timezone.utc).isoformat()
        errors = list(errors)
        usable = []
        for r in rows:
            if r.path.dataset in self._unusable:
                errors.append(LoadError(r.key, "warehouse", self._unusable_reason(r.path.dataset),
                                        r.path.app_id, r.path.doc_type, r.path.document_id))
            else:
                usable.append(r)
        groups, repeated = first_per_document(usable)
        with self._lock:
            try:
                result = self._transaction(lambda: self._write_groups(groups, errors, now))
                result.duplicates += repeated
                return result
            except DATA_ERRORS as exc:  # where in the loader's temp file says nothing to a reader
                raise RowDataError(TEMP_FILE_RE.sub("", str(exc).splitlines()[0])) from exc
            except (duckdb.IOException, duckdb.TransactionException) as exc:
                raise WarehouseUnavailable(str(exc)) from exc
            except duckdb.OutOfMemoryException as exc:  # retried: the pings stay until the limit is raised
                raise WarehouseUnavailable(out_of_memory(exc)) from exc

    def _write_groups(self, groups: dict[tuple[str, str], dict[str, PingRow]], errors: list[LoadError],
                      now: str) -> WriteResult:
        """The statements of one ``write``, in its open transaction."""
        result = WriteResult(errors=len(errors))
        for (dataset, table), by_id in groups.items():
            batch, skipped = without_deleted(by_id, self._deleted_clients(dataset))
            result.skipped_deleted += skipped
            self._ensure_table(dataset, table, PING_COLUMNS)
            self._ensure_metrics(dataset, table, needed_metrics(batch))
            inserted = self._insert(dataset, table, batch)
            result.inserted += inserted
            result.duplicates += len(batch) - inserted
            result.tables.add(f"{dataset}.{table}")
            with_events = [r for r in batch if r.events_json]
            if with_events:
                self._ensure_table(dataset, EVENTS_STREAM_TABLE, EVENTS_STREAM_COLUMNS)
                result.events += self._insert_events(dataset, with_events)
            for r in batch:
                if r.is_deletion_request and r.client_id and self._delete_client(dataset, r, now):
                    result.deletions += 1
        loaded = loaded_keys(groups)
        if loaded:  # an object that loads now (after a fix) is no longer an error
            self.con.execute(f"DELETE FROM {META}.errors WHERE list_contains(?, object_key)", [loaded])
        self._record_errors(errors, now)
        return result

    def _insert_events(self, dataset: str, rows: list[PingRow]) -> int:
        """events_stream rows, once per document (a document's events go in together)."""
        ids = {r.path.document_id for r in rows}
        present = self._present(self.con, dataset, EVENTS_STREAM_TABLE, "document_id", ids)
        fresh = [e for r in rows if r.path.document_id not in present for e in r.events_json]
        return self._insert_json(dataset, EVENTS_STREAM_TABLE, fresh) if fresh else 0

    def _rollback(self) -> None:
        try:
            self.con.rollback()
        except duckdb.Error:
            pass
        self._types.clear()  # DDL inside the transaction was undone too
        self._metrics.clear()
        self._deleted.clear()
        self._reshaped.clear()

    # --- reading ------------------------------------------------------------------

    @contextlib.contextmanager
    def _reader(self):
        """A cursor of its own for one read, which ``close`` and ``interrupt_reads`` can interrupt."""
        with self._readers_changed:
            if self._closing:
                raise WarehouseClosing(CLOSING)
            cur = self.con.cursor()
            self._readers[cur] = threading.get_ident()
        try:
            yield cur
        except duckdb.InterruptException:
            if self._closing:
                raise WarehouseClosing(CLOSING) from None
            raise
        finally:
            with self._readers_changed:  # closed here, so that no interrupt() reaches a closed cursor
                del self._readers[cur]
                cur.close()
                self._readers_changed.notify_all()

    def interrupt_reads(self, thread: int | None = None) -> None:
        """Interrupt the reads running now (DuckDB stops them with an error), or those of ``thread``."""
        with self._readers_changed:
            for cur, ident in self._readers.items():
                if thread is None or ident == thread:
                    cur.interrupt()

    def query(self, sql: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
        with self._reader() as cur:
            cur.execute("SET TimeZone = 'UTC'")
            cur.execute(sql, params or [])
            if cur.description is None:
                return [], []
            return [d[0] for d in cur.description], cur.fetchall()

    def read_query(self, sql: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
        """``query`` in a read-only transaction, always rolled back: DuckDB itself refuses any write,
        also one a statement-type check cannot see (DuckDB 2 runs DELETE ... RETURNING inside WITH,
        and the statement is a SELECT). For SQL from users (`gleanpipe query`, serve's admin API)."""
        pages = self.read_query_pages(sql, params)
        columns = next(pages)
        return columns, [row for page in pages for row in page]

    def read_query_pages(self, sql: str, params: list | None = None,
                         page_rows: int = QUERY_PAGE_ROWS) -> Iterator[list]:
        """``read_query`` a page at a time (the column names first, then lists of rows), so that a
        large result is never all in memory as Python values (serve's admin API, admin.py).

        INTERVAL values (also inside lists, structs and maps) come back as DuckDB prints them
        (``1 year 2 months``), not as Python timedelta, which has no months (``age()`` of 14
        months read as 420 days): such a query runs again with the cast added, fetched whole.
        The cast keeps the nesting (``STRUCT(iv VARCHAR)``), so a struct is still a struct."""
        from ..read_only_sql import WriteRefused

        with self._reader() as cur:
            cur.execute("SET TimeZone = 'UTC'")
            cur.execute("BEGIN TRANSACTION READ ONLY")
            try:
                try:
                    cur.execute(sql, params or None)
                except duckdb.CatalogException as exc:  # this transaction is aborted: the catalog is read apart
                    message = missing_table.with_hint(str(exc), sql, self._datasets())
                    if message is None:
                        raise
                    raise duckdb.CatalogException(message) from None
                columns = [d[0] for d in cur.description or ()]
                shown = [_intervals_as_text(d[1]) for d in cur.description or ()]
                if any(shown):
                    cur.abort()
                    rel = cur.sql(sql, params=params or None).project(
                        ", ".join(f"CAST(#{i} AS {s})" if s else f"#{i}" for i, s in enumerate(shown, 1)))
                    yield columns
                    yield from in_pages(rel.fetchall(), page_rows)
                    return
                yield columns
                while columns and (rows := cur.fetchmany(page_rows)):
                    yield rows
            except duckdb.OutOfMemoryException as exc:
                raise duckdb.OutOfMemoryException(out_of_memory(exc)) from None
            except duckdb.TransactionException as exc:
                if "read-only" not in str(exc):
                    raise
                reason = str(exc).splitlines()[0].removeprefix("TransactionContext Error: ")
                raise WriteRefused(f"the warehouse is read-only for queries: {reason}") from None
            except duckdb.InvalidInputException as exc:  # the same refusal, in the words serve gives it
                if not (refused := READ_ONLY_FILE.match(str(exc))):
                    raise
                raise WriteRefused(f'the warehouse is read-only for queries: Cannot write to database '
                                   f'"{refused[1]}" - transaction is launched in read-only mode') from None
            except duckdb.Error as exc:
                if type(exc) is duckdb.Error and EXTENSION_MISSING.match(str(exc)):  # not InternalException...
                    raise ExtensionUnavailable(extension_unavailable(str(exc))) from None
                raise
            finally:
                cur.abort()  # a result not fetched to its end (the reader stopped early): let it go
                cur.execute("ROLLBACK")

    def _datasets(self) -> dict[str, list[str]]:
        """Each app dataset's tables and views, by name (for ``missing_table.with_hint``)."""
        with self._reader() as cur:
            rows = cur.execute(
                "SELECT schema_name, table_name FROM duckdb_tables() WHERE NOT internal AND NOT temporary "
                "UNION SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal AND NOT temporary "
                "ORDER BY 1, 2").fetchall()
        out: dict[str, list[str]] = {}
        for schema, name in rows:
            if schema not in (META, "main"):
                out.setdefault(schema, []).append(name)
        return out

    def status(self) -> dict:
        with self._reader() as cur:
            tables = cur.execute(
                "SELECT schema_name, table_name FROM duckdb_tables() WHERE schema_name <> ? ORDER BY 1, 2", [META]
            ).fetchall()
            counts = []
            for schema, table in tables:
                n = cur.execute(f"SELECT count(*) FROM {q(schema)}.{q(table)}").fetchone()[0]
                counts.append({"dataset": schema, "table": table, "rows": n})
            load_errors = cur.execute(
                f"SELECT error_type, count(*) FROM {META}.errors GROUP BY 1 ORDER BY 1"
            ).fetchall() if self._has_meta(cur) else []
            deletions, pending = cur.execute(
                f"SELECT count(executed_at), count(*) FILTER (executed_at IS NULL) FROM {META}.deletions").fetchone() \
                if self._has_meta(cur) else (0, 0)
        return {"tables": counts, "load_errors": dict(load_errors), "deletions": deletions,
                "deletions_pending": pending}

    def not_loaded(self, keys: set[str]) -> int:
        """One query per table, with its document ids; keys that are no pings do not count (the
        loader ignores them), nor does a second key of one document (one row per document id)."""
        docs: dict[tuple[str, str], set[str]] = {}
        for path in filter(None, map(parse_key, keys)):
            docs.setdefault((path.dataset, path.table), set()).add(path.document_id)
        with self._reader() as cur:
            tables = set(cur.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall())
            if (META, "errors") in tables:  # an object that failed to load fails again: it is not waiting
                for path in filter(None, map(parse_key, self._present(cur, META, "errors", "object_key", keys))):
                    docs.get((path.dataset, path.table), set()).discard(path.document_id)
            for (dataset, table), ids in docs.items():
                if (dataset, table) in tables:
                    ids -= self._present(cur, dataset, table, "document_id", ids)
        return sum(map(len, docs.values()))

    @staticmethod
    def _present(cur, dataset: str, table: str, column: str, values) -> set[str]:
        """Those of ``values`` found in ``column`` (a semi-join: a long list costs one hash, not a scan per row)."""
        return {r[0] for r in cur.execute(f"SELECT DISTINCT {q(column)} FROM {q(dataset)}.{q(table)} "
                                          f"WHERE {q(column)} IN (SELECT unnest(?::VARCHAR[]))", [list(values)])
                .fetchall()}

    @staticmethod
    def _has_meta(cur) -> bool:
        return bool(cur.execute("SELECT 1 FROM duckdb_schemas() WHERE schema_name = ?", [META]).fetchall())

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Close the connection. The reads still running are interrupted (their callers get
        WarehouseClosing), and so is a write (its transaction is rolled back); new reads are
        refused. DuckDB refuses to close a connection one of them is using."""
        deadline = time.monotonic() + wait_s
        try:
            with self._readers_changed:
                self._closing = True
                while self._readers and time.monotonic() < deadline:
                    self.interrupt_reads()  # again and again: DuckDB forgets one that comes between two statements
                    self._readers_changed.wait(0.1)
            locked = self._lock.acquire(timeout=0)
            while not locked and time.monotonic() < deadline:  # a write still running
                self.con.interrupt()
                locked = self._lock.acquire(timeout=0.1)
            try:
                self.con.close()
            finally:
                if locked:
                    self._lock.release()
        finally:
            self._drop_tmp()
