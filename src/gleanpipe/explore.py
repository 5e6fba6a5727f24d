"""`gleanpipe explore`: the DuckDB warehouse as SQLite files, opened in Datasette.

Datasette reads SQLite; the warehouse is DuckDB, and DuckDB's sqlite extension is a download
(not possible offline). So the warehouse is exported, with Python's sqlite3, into one SQLite
file per DuckDB schema (``<out>/<app dataset>.db``, and ``_gleanpipe.db``), each Datasette
database being one app, as each BigQuery dataset is:

- every table and view keeps its name and its rows; scalar columns keep their values
  (TIMESTAMPTZ as ISO-8601 text in UTC, BOOLEAN as 0/1), nested STRUCT/LIST/MAP columns become
  JSON text (DuckDB ``to_json``), which Datasette shows as JSON and SQLite's JSON functions read;
- the per-ping views (``metrics`` over ``metrics_v1``, ``events_stream`` over ``events_stream_v1``)
  are views on the copied table (``SELECT *``: in DuckDB that view keeps one row per document_id,
  and so does the table, as the load anti-joins), so the README's queries name the same things;
- every ping table also gets a view ``<table>_flat``: the plain columns, one column per
  ``client_info``/``ping_info`` field and one column per metric (``"counter.toolbox_launch_count"``,
  labeled and distribution metrics as JSON), built with SQLite's ``json_extract``.

Where the rows come from: while `gleanpipe serve` runs it owns the DuckDB file, so rows are read
through its admin API (admin.AdminClient.query) in pages of ``page_rows``, keyed on
document_id (and event_index), so rows loaded meanwhile do not shift the pages; otherwise the
file is opened read-only and read in batches.

Refresh: each run compares a fingerprint per table (row count, XOR of row-key hashes, column
types) with the last export (``export.json``) and rewrites only the files of datasets that
changed. A file is written beside its final name and renamed into place, so a half-written
export is never opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import orjson

from .admin import ResultTooLarge
from .naming import VERSIONED_RE, quote_ident as q
from .output import counted
from .warehouse.duckdb import view_of

META_SCHEMA = "_gleanpipe"  # its file is _gleanpipe.db, a name no app's takes: dataset names start with a letter or digit
MANIFEST = "export.json"
LOCK = ".export.lock"  # held by the export writing into the folder
# The text an export writes for the same rows; a manifest of another (or none: before 2) is not
# trusted to say a file is up to date. 2: timestamps inside nested columns as ISO-8601 UTC text.
EXPORT_FORMAT = 2
PAGE_ROWS = 20_000
NESTED = {"struct", "list", "map", "union", "array"}
INTEGER = {"boolean", "tinyint", "smallint", "integer", "bigint", "utinyint", "usmallint", "uinteger"}
REAL = {"float", "double", "decimal"}
ISO_UTC = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass
class Column:
    name: str
    duck_type: str

    @property
    def kind(self) -> str:
        if self.duck_type.upper() == "JSON":
            return "json"
        try:
            return duckdb.type(self.duck_type).id
        except (duckdb.Error, ValueError):
            return "other"

    def select(self) -> str:
        """DuckDB expression that yields what SQLite stores."""
        col, kind = q(self.name), self.kind
        if kind in NESTED:
            return f"to_json({_iso_inside(col, duckdb.type(self.duck_type))})::VARCHAR"
        if kind == "timestamp with time zone":
            return f"strftime({col}, '{ISO_UTC}')"
        if kind == "boolean":
            return f"{col}::INTEGER"
        if kind == "decimal":
            return f"{col}::DOUBLE"
        if kind in INTEGER or kind in REAL or kind in ("varchar", "blob"):
            return col
        return f"{col}::VARCHAR"  # json, uuid, date, timestamp, interval, hugeint, ...

    @property
    def sqlite_type(self) -> str:
        kind = self.kind
        return "INTEGER" if kind in INTEGER else "REAL" if kind in REAL else "BLOB" if kind == "blob" else "TEXT"


@dataclass
class Relation:
    schema: str
    name: str
    is_view: bool
    columns: list[Column] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{q(self.schema)}.{q(self.name)}"

    @property
    def keys(self) -> list[str]:
        """Columns that identify a row (for paging and the fingerprint); [] when none is known."""
        names = {c.name for c in self.columns}
        if self.is_view:
            return []
        if {"document_id", "event_index"} <= names:
            return ["document_id", "event_index"]
        for key in ("object_key", "document_id"):  # _gleanpipe.errors: object_key (document_id may be NULL)
            if key in names:
                return [key]
        return []


# --- where the rows come from ------------------------------------------------------------

Query = Callable[[str, list | None], tuple[list[str], list[tuple]]]


class Source:
    """Rows of the warehouse: ``query`` for small answers, ``batches`` for a whole relation."""

    def __init__(self, query: Query, batches: Callable[[Relation, str, int], Iterator[list[tuple]]], where: str,
                 interrupt: Callable[[], None] | None = None):
        self.query, self.batches, self.where = query, batches, where
        self.interrupt = interrupt  # stops the reads running now, from another thread (None: not needed)

    @classmethod
    def from_server(cls, client) -> "Source":
        """Through the running `gleanpipe serve` (it owns the DuckDB file): keyset pages."""

        def batches(rel: Relation, select: str, size: int):
            if not rel.keys:  # views and small internal tables: one answer
                try:
                    rows = client.query(f"SELECT {select} FROM {rel.ref}")[1]
                except ResultTooLarge as exc:
                    raise _too_large(_named(rel), exc) from None
                yield rows
                return
            keys = rel.keys
            order = ", ".join(q(k) for k in keys)
            last = None
            while True:
                if last is None:
                    where, params = "", []
                elif len(keys) == 1:
                    where, params = f"WHERE {q(keys[0])} > ?", [last[0]]
                else:
                    where = f"WHERE {q(keys[0])} > ? OR ({q(keys[0])} = ? AND {q(keys[1])} > ?)"
                    params = [last[0], last[0], last[1]]
                sql = f"SELECT {order}, {select} FROM {rel.ref} {where} ORDER BY {order} LIMIT {int(size)}"
                try:
                    rows = client.query(sql, params)[1]
                except ResultTooLarge as exc:  # a page over serve's GLEANPIPE_QUERY_MAX_BYTES: smaller pages
                    if size == 1:
                        raise _too_large(_named(rel), exc) from None
                    size //= 2
                    continue
                if not rows:
                    return
                last = rows[-1][: len(keys)]
                yield [r[len(keys):] for r in rows]
                if len(rows) < size:
                    return

        return cls(client.query, batches, "gleanpipe serve (admin API)")

    @classmethod
    def from_duckdb(cls, con: "duckdb.DuckDBPyConnection", path: str) -> "Source":
        """The DuckDB file itself, opened read-only by the caller. ``interrupt`` stops its reads."""
        con.execute("SET TimeZone = 'UTC'")
        open_cursors: set = set()
        changed = threading.Lock()

        @contextlib.contextmanager
        def cursor():
            with changed:
                cur = con.cursor()
                open_cursors.add(cur)
            try:
                cur.execute("SET TimeZone = 'UTC'")
                yield cur
            finally:
                with changed:  # closed here, so that no interrupt() reaches a closed cursor
                    open_cursors.discard(cur)
                    cur.close()

        def query(sql, params=None):
            with cursor() as cur:
                cur.execute(sql, params or [])
                return [d[0] for d in cur.description], cur.fetchall()

        def batches(rel: Relation, select: str, size: int):
            with cursor() as cur:
                cur.execute(f"SELECT {select} FROM {rel.ref}")
                while rows := cur.fetchmany(size):
                    yield rows

        def interrupt() -> None:
            with changed:
                for cur in open_cursors:
                    cur.interrupt()

        return cls(query, batches, f"{path} (read-only)", interrupt)


def _named(rel: Relation) -> str:
    """The relation, as serve's refusal of its rows names it: a page of a keyed table is halved
    down to one row before it is refused."""
    if rel.keys:
        return f"a row of the table {rel.schema}.{rel.name}"
    return f"the {'view' if rel.is_view else 'table'} {rel.schema}.{rel.name}"


def _too_large(what: str, exc: ResultTooLarge) -> ResultTooLarge:
    """serve's refusal of an answer over its GLEANPIPE_QUERY_MAX_BYTES, in words for explore's user."""
    return exc.for_user_of(what, "explore again")


# --- export --------------------------------------------------------------------------------


@dataclass
class ExportResult:
    out_dir: Path
    databases: dict[str, Path]
    written: list[str]
    unchanged: list[str]
    rows: int
    seconds: float
    source: str
    skipped: list[str] = field(default_factory=list)  # schema.name of relations with names explore cannot quote

    def summary(self) -> str:
        parts = [f"exported {counted(self.rows, 'row')} into {counted(len(self.written), 'file')} in {self.seconds:.1f}s from {self.source}"]
        if self.unchanged:
            parts.append(f"unchanged since the last export: {', '.join(self.unchanged)}")
        if self.skipped:
            parts.append(f"not exported, for names other than letters, digits and _ in them or their columns: "
                         f"{', '.join(self.skipped)}")
        return "; ".join(parts)


def relations(source: Source) -> list[Relation]:
    try:
        return _relations(source)
    except ResultTooLarge as exc:  # through a serve with a small GLEANPIPE_QUERY_MAX_BYTES
        raise _too_large("the list of the warehouse's tables, views and columns", exc) from None


def _relations(source: Source) -> list[Relation]:
    _, found = source.query(
        "SELECT schema_name, table_name, false FROM duckdb_tables() WHERE NOT internal "
        "UNION ALL SELECT v.schema_name, v.view_name, true FROM duckdb_views() AS v WHERE NOT v.internal "
        "AND v.schema_name NOT IN ('information_schema', 'pg_catalog') ORDER BY 1, 2", None)
    # gleanpipe's dedup views (<ping> over <ping>_vN) hold the rows of their table: not copied twice.
    # Which views those are, the warehouse's own rule says (a ping named like a derived view has none).
    dedup = {(schema, view_of(name)) for schema, name, is_view in found if not is_view and VERSIONED_RE.fullmatch(name)}
    tables = [(schema, name, is_view) for schema, name, is_view in found if not (is_view and (schema, name) in dedup)]
    _, cols = source.query(
        "SELECT schema_name, table_name, column_name, data_type FROM duckdb_columns() WHERE NOT internal "
        "ORDER BY schema_name, table_name, column_index", None)
    by_rel: dict[tuple[str, str], list[Column]] = {}
    for schema, table, name, dtype in cols:
        by_rel.setdefault((schema, table), []).append(Column(name, dtype))
    out = []
    for schema, name, is_view in tables:
        if schema == "main" and name.startswith("duckdb_"):
            continue
        out.append(Relation(schema, name, bool(is_view), by_rel.get((schema, name), [])))
    return out


def _exportable(rel: Relation) -> bool:
    """Whether every name the copy of ``rel`` quotes is one ``quote_ident`` takes. gleanpipe's own
    tables are; a table of the user's own in the DuckDB file (`CREATE TABLE "my notes"`) may not be,
    and stopped the whole export with UnsafeIdentifier."""
    try:
        rel.ref
        for c in rel.columns:
            c.select()
        flat_view_sql(rel)
    except ValueError:  # UnsafeIdentifier, or _json_key's unexpected field name
        return False
    return True


def fingerprint(source: Source, rel: Relation) -> list:
    keyed = ", ".join(q(k) for k in rel.keys)
    row_hash = f"hash({keyed})" if keyed else "hash(to_json(t))"
    _, rows = source.query(f"SELECT count(*), coalesce(bit_xor({row_hash}), 0)::VARCHAR FROM {rel.ref} AS t", None)
    return [rows[0][0], rows[0][1], [[c.name, c.duck_type] for c in rel.columns]]


def export(source: Source, out_dir: Path, *, page_rows: int = PAGE_ROWS, force: bool = False) -> ExportResult:
    """Write (or refresh) one SQLite file per DuckDB schema under ``out_dir``, one export at a time:
    two at once into one folder removed each other's temp files, and one put the other's
    half-written file in place, with a manifest that called it whole."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another `gleanpipe explore` is exporting into {out_dir}: wait for it to end, "
                               "or give another --out") from None
        for left in out_dir.glob("*.db.tmp"):  # of an export that was stopped: nobody else writes here now
            left.unlink(missing_ok=True)
        return _export(source, out_dir, page_rows, force)
    finally:
        os.close(lock)  # and the lock with it


def _export(source: Source, out_dir: Path, page_rows: int, force: bool) -> ExportResult:
    started = time.perf_counter()
    manifest_path = out_dir / MANIFEST
    try:
        old = orjson.loads(manifest_path.read_bytes()) if not force else {}
    except (OSError, orjson.JSONDecodeError):
        old = {}
    current = isinstance(old, dict) and old.get("format") == EXPORT_FORMAT
    old_dbs = old.get("databases", {}) if current else {}
    by_schema: dict[str, list[Relation]] = {}
    skipped = []
    for rel in relations(source):
        if _exportable(rel):
            by_schema.setdefault(rel.schema, []).append(rel)
        else:
            skipped.append(f"{rel.schema}.{rel.name}")
    databases, written, unchanged, total = {}, [], [], 0
    new_dbs = {}
    for schema, rels in sorted(by_schema.items()):  # one SQLite file per schema, named as the schema
        path = out_dir / f"{schema}.db"
        prints = {rel.name: fingerprint(source, rel) for rel in rels}
        databases[schema] = path
        new_dbs[schema] = {"schema": schema, "tables": prints}
        if path.exists() and old_dbs.get(schema, {}).get("tables") == prints:
            unchanged.append(schema)
            continue
        total += _write_db(source, rels, path, page_rows)
        written.append(schema)
    for stale in set(old_dbs) - set(new_dbs):  # a schema that is gone from the warehouse
        try:
            (out_dir / f"{stale}.db").unlink()
        except FileNotFoundError:
            pass
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"format": EXPORT_FORMAT, "source": source.where, "databases": new_dbs},
                                 option=orjson.OPT_INDENT_2))
    os.replace(tmp, manifest_path)
    return ExportResult(out_dir, databases, written, unchanged, total, time.perf_counter() - started, source.where,
                        skipped)


def _write_db(source: Source, rels: list[Relation], path: Path, page_rows: int) -> int:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    rows_total = 0
    try:
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        # Tables, views and indexes share one namespace in SQLite, and a sender picks ping names:
        # ping `baseline-v1-flat` has the view baseline_v1_flat, the name of baseline_v1's flat
        # view. Each name goes to the first that takes it; index names hold a ":", which no
        # table or view name can.
        names = {rel.name for rel in rels}
        for rel in rels:
            if not rel.columns:
                continue
            cols = ", ".join(f"{_sq(c.name)} {c.sqlite_type}" for c in rel.columns)
            con.execute(f"CREATE TABLE {_sq(rel.name)} ({cols})")
            insert = f"INSERT INTO {_sq(rel.name)} VALUES ({', '.join('?' for _ in rel.columns)})"
            select = ", ".join(c.select() for c in rel.columns)
            for batch in source.batches(rel, select, page_rows):
                con.executemany(insert, batch)
                rows_total += len(batch)
            for key in rel.keys[:1]:
                con.execute(f"CREATE INDEX {_sq(f'{rel.name}:{key}')} ON {_sq(rel.name)} ({_sq(key)})")
            flat = flat_view_sql(rel)
            if flat and rel.name + "_flat" not in names:
                con.execute(flat)
                names.add(rel.name + "_flat")
        for rel in rels:
            view = view_of(rel.name) if not rel.is_view and VERSIONED_RE.fullmatch(rel.name) else None
            if view and view not in names:  # as the warehouse makes them: not over a table of that name
                con.execute(f"CREATE VIEW {_sq(view)} AS SELECT * FROM {_sq(rel.name)}")
                names.add(view)
        con.commit()
    finally:
        con.close()
    os.replace(tmp, path)
    return rows_total


def _iso_inside(expr: str, t) -> str:
    """``expr`` of DuckDB type ``t`` with each TIMESTAMPTZ inside it (ping_info.parsed_start_time,
    metadata.header.parsed_date, ...) as ISO-8601 UTC text, as the top-level ones are: to_json
    writes them as "2026-11-23 08:00:00+00", beside a submission_timestamp of "...T08:00:00.000000Z"."""
    if "TIMESTAMP WITH TIME ZONE" not in str(t):
        return expr
    if t.id == "timestamp with time zone":
        return f"strftime({expr}, '{ISO_UTC}')"
    if t.id == "struct":
        fields = ", ".join(f"{q(name)} := {_iso_inside(f'({expr}).{q(name)}', ft)}" for name, ft in t.children)
        return f"CASE WHEN {expr} IS NULL THEN NULL ELSE struct_pack({fields}) END"
    if t.id == "list":
        var = f"x{len(expr)}"  # a name of its own at each depth
        return f"list_transform({expr}, lambda {var}: {_iso_inside(var, t.child)})"
    return expr  # a map or array of timestamps: none in gleanpipe's tables


def _sq(name: str) -> str:
    """SQLite identifier quoting (names come from DuckDB's catalog, which gleanpipe made safe)."""
    return '"' + name.replace('"', '""') + '"'


def flat_view_sql(rel: Relation) -> str | None:
    """``<table>_flat``: one column per client_info/ping_info field and per metric."""
    by_name = {c.name: c for c in rel.columns}
    if rel.is_view or "metrics" not in by_name and "client_info" not in by_name:
        return None
    select = []
    for c in rel.columns:
        if c.name in ("client_info", "ping_info") and c.kind == "struct":
            for fname, ftype in duckdb.type(c.duck_type).children:
                select.append(f"json_extract({_sq(c.name)}, '$.{_json_key(fname)}') AS {_sq(f'{c.name}.{fname}')}")
        elif c.name == "metrics" and c.kind == "struct":
            for mtype, t in duckdb.type(c.duck_type).children:
                for metric, _ in t.children:
                    path = f"$.{_json_key(mtype)}.{_json_key(metric)}"
                    select.append(f"json_extract({_sq(c.name)}, '{path}') AS {_sq(f'{mtype}.{metric}')}")
        elif c.name != "metadata":
            select.append(_sq(c.name))
    return f"CREATE VIEW {_sq(rel.name + '_flat')} AS SELECT {', '.join(select)} FROM {_sq(rel.name)}"


def _json_key(name: str) -> str:
    if not all(ch.isalnum() or ch == "_" for ch in name):
        raise ValueError(f"unexpected field name {name!r}")
    return name


# --- Datasette ------------------------------------------------------------------------------


PLUGINS_DIR = Path(__file__).parent / "datasette_plugins"  # Datasette's --plugins-dir: the Host check
HOST_CHECK_PLUGIN = "gleanpipe-host-check"  # its settings' key in the metadata (host_check_plugin.PLUGIN)


def datasette_metadata(result: ExportResult, bind_host: str = "127.0.0.1", allowed_hosts: tuple[str, ...] = ()) -> dict:
    """Datasette's metadata: titles, and the settings of the Host check (datasette_plugins/): the
    address Datasette listens on and GLEANPIPE_ALLOWED_HOSTS."""
    dbs = {}
    for name in result.databases:
        dbs[name] = {
            "description": ("gleanpipe's own tables: load errors and deletion requests carried out"
                            if name == META_SCHEMA else
                            f"App dataset {name}: one table per ping; <table>_flat views have one column per metric"),
        }
    return {
        "title": "gleanpipe warehouse",
        "description": ("A read-only copy of the gleanpipe DuckDB warehouse. Nested columns are JSON text; "
                        "the *_flat views have one column per client_info/ping_info field and per metric."),
        "source": result.source,
        "databases": dbs,
        "plugins": {HOST_CHECK_PLUGIN: {"bind_host": bind_host, "allowed_hosts": list(allowed_hosts)}},
    }


def datasette_command(result: ExportResult, host: str, port: int, open_browser: bool,
                      metadata_path: Path) -> list[str]:
    import sys

    cmd = [sys.executable, "-m", "datasette", "serve"]
    for path in result.databases.values():
        cmd += ["-i", str(path)]  # immutable: opened read-only
    cmd += ["--host", host, "--port", str(port), "--metadata", str(metadata_path),
            "--setting", "sql_time_limit_ms", "10000", "--plugins-dir", str(PLUGINS_DIR)]
    if open_browser:
        cmd.append("--open")
    return cmd
