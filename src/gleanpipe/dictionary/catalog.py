"""The dictionary's knowledge: stored app definitions plus what the warehouse has seen.

Writing (``store_app``) needs the warehouse itself (it pre-creates columns); reading goes
through a ``query(sql, params) -> (columns, rows)`` callable only, so the same code runs in
the process that owns the DuckDB file, in the HTTP workers (through serve's admin API) and
in `gleanpipe dictionary build`.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from functools import cached_property, wraps

import orjson

from ..naming import IDENT_RE, TABLE_RE, column_name, quote_ident as q, table_name
from ..table_schema import EVENTS_STREAM_TABLE
from ..views import AGGREGATED_TYPES, DISTRIBUTIONS, DUCKDB, metric_part
from . import sqlgen
from .definitions import columns_to_create

META = "_gleanpipe"
CATALOG_DDL = [
    f"CREATE SCHEMA IF NOT EXISTS {META}",
    f"CREATE TABLE IF NOT EXISTS {META}.apps (dataset VARCHAR, app_id VARCHAR, added_at TIMESTAMPTZ, "
    "metrics_defined BIGINT, pings_defined BIGINT)",
    f"CREATE TABLE IF NOT EXISTS {META}.metric_definitions (dataset VARCHAR, metric_id VARCHAR, "
    "metric_type VARCHAR, wire_type VARCHAR, column_name VARCHAR, definition VARCHAR)",
    f"CREATE TABLE IF NOT EXISTS {META}.ping_definitions (dataset VARCHAR, ping VARCHAR, table_name VARCHAR, "
    "definition VARCHAR)",
]

# Pings the Glean SDK sends by itself (described here in our own words).
BUILTIN_PINGS = {
    "baseline": "Sent by the Glean SDK when the application becomes active or inactive; the usual source "
                "of daily active clients.",
    "metrics": "Sent by the Glean SDK about once a day with the metrics that are not sent in other pings.",
    "events": "Sent by the Glean SDK with the recorded events, when enough have been collected or the "
              "application goes to the background.",
    "deletion-request": "Sent by the Glean SDK when the user turns upload off: asks for the client's data "
                        "to be deleted (gleanpipe deletes its rows).",
    "health": "Sent by the Glean SDK about its own state (e.g. before initialisation).",
}
BUILTIN_CLIENT_ID = {"baseline": True, "metrics": True, "events": True, "deletion-request": True, "health": True}


class NotFound(LookupError):
    pass


def store_app(warehouse, app: dict) -> dict:
    """Pre-create the columns the definitions announce, then replace the app's stored definitions."""
    dataset = app["dataset"]
    needed = {(dataset, table): cols for table, cols in columns_to_create(app).items()}
    before = _stored_app(warehouse, dataset)
    added = warehouse.ensure_columns(needed)
    now = datetime.now(timezone.utc).isoformat()
    statements = [(sql, None) for sql in CATALOG_DDL]
    statements += [(f"DELETE FROM {META}.{t} WHERE dataset = ?", [dataset])
                   for t in ("apps", "metric_definitions", "ping_definitions")]
    statements.append((f"INSERT INTO {META}.apps VALUES (?, ?, ?, ?, ?)",
                       [dataset, app["app_id"], now, len(app["metrics"]), len(app["pings"])]))
    statements += [(f"INSERT INTO {META}.metric_definitions VALUES (?, ?, ?, ?, ?, ?)",
                    [dataset, m["id"], m["type"], m.get("wire_type"), m["column"], orjson.dumps(m).decode()])
                   for m in app["metrics"]]
    statements += [(f"INSERT INTO {META}.ping_definitions VALUES (?, ?, ?, ?)",
                    [dataset, p["name"], p["table"], orjson.dumps(p).decode()]) for p in app["pings"]]
    warehouse.execute(statements)
    return {"app_id": app["app_id"], "dataset": dataset, "metrics": len(app["metrics"]),
            "pings": len(app["pings"]), "tables": sorted(t for _, t in needed), "columns_added": added,
            "replaced": before}


def _stored_app(warehouse, dataset: str) -> dict | None:
    """The definitions ``store_app`` is about to replace: app id (another spelling of it maps to
    the same dataset: org-example-toolbox, org.example.toolbox) and counts; None if there are none."""
    if not warehouse.query("SELECT 1 FROM duckdb_tables() WHERE schema_name = ? AND table_name = 'apps'", [META])[1]:
        return None
    rows = warehouse.query(f"SELECT app_id, metrics_defined, pings_defined FROM {META}.apps WHERE dataset = ?",
                           [dataset])[1]
    return {"app_id": rows[0][0], "metrics": rows[0][1], "pings": rows[0][2]} if rows else None


def split_struct(type_string: str) -> list[tuple[str, str]]:
    """'STRUCT(a BIGINT, "b" STRUCT(x INT))' -> [('a', 'BIGINT'), ('b', 'STRUCT(x INT)')]."""
    s = type_string.strip()
    if not (s.startswith("STRUCT(") and s.endswith(")")):
        return []
    body, items, depth, start = s[len("STRUCT("):-1], [], 0, 0
    for i, ch in enumerate(body):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    items.append(body[start:])
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        if item.startswith('"'):
            end = item.index('"', 1)
            name, rest = item[1:end], item[end + 1:]
        else:
            name, _, rest = item.partition(" ")
        out.append((name, rest.strip()))
    return out


def _iso(value):
    return value.isoformat() if hasattr(value, "isoformat") else value


def _per_catalog(read):
    """A Catalog method whose result, per arguments, is kept for the life of the Catalog (one request
    in serve, one build): what reads a whole app or a whole table is read once, not again for each
    of its metrics."""
    @wraps(read)
    def once(self, *args):
        key = (read.__name__, *args)
        if key not in self._kept:
            self._kept[key] = read(self, *args)
        return self._kept[key]
    return once


def _first_by(items: list[dict], key: str) -> dict:
    """``items`` by their ``key``, the first of each."""
    out: dict = {}
    for item in items:
        out.setdefault(item[key], item)
    return out


class Catalog:
    """Read side: apps, pings and metrics as plain dicts (the JSON API returns these as they are)."""

    def __init__(self, query):
        self._query = query
        self._kept: dict[tuple, object] = {}  # (method, its arguments) -> its result (_per_catalog)
        self._app_ids: dict[str, str] = {}  # dataset -> app id read from its rows (_app_id)
        self._counted: dict[tuple, dict] = {}  # (dataset, table, (type, column)) -> its counts (_column_counts)

    def rows(self, sql: str, params=None) -> list[dict]:
        columns, rows = self._query(sql, params)
        return [dict(zip(columns, r)) for r in rows]

    # --- what exists -----------------------------------------------------------------

    @cached_property
    def _has_catalog(self) -> bool:
        return bool(self.rows("SELECT 1 FROM duckdb_tables() WHERE schema_name = ? AND table_name = 'apps'", [META]))

    @cached_property
    def _defined_apps(self) -> dict[str, dict]:
        if not self._has_catalog:
            return {}
        return {r["dataset"]: r for r in self.rows(f"SELECT * FROM {META}.apps ORDER BY dataset")}

    @cached_property
    def _tables(self) -> dict[str, list[str]]:
        """Observed app datasets -> their ping tables (and events_stream)."""
        out: dict[str, list[str]] = {}
        for r in self.rows("SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = "
                           "current_database() AND schema_name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY 1, 2"):
            if TABLE_RE.fullmatch(r["table_name"]) or r["table_name"] == EVENTS_STREAM_TABLE:
                out.setdefault(r["schema_name"], []).append(r["table_name"])
        return out

    @_per_catalog
    def _table_stats(self, dataset: str, table: str) -> dict:
        r = self.rows(f"SELECT count(*) AS n, max(submission_timestamp) AS last_seen, "
                      f"any_value(metadata.document_type) AS doc_type FROM {q(dataset)}.{q(table)}")[0]
        return {"rows": r["n"], "last_seen": _iso(r["last_seen"]), "doc_type": r["doc_type"]}

    @_per_catalog
    def _metric_columns(self, dataset: str) -> dict[str, list[tuple[str, str]]]:
        """Ping table -> [(metric type, column)] of its ``metrics`` STRUCT."""
        out: dict[str, list[tuple[str, str]]] = {}
        for r in self.rows("SELECT table_name, data_type FROM duckdb_columns() WHERE schema_name = ? "
                           "AND column_name = 'metrics' ORDER BY 1", [dataset]):
            if TABLE_RE.fullmatch(r["table_name"]):
                out[r["table_name"]] = [(mtype, col) for mtype, t in split_struct(r["data_type"])
                                        for col, _ in split_struct(t)]
        return out

    def _app_id(self, dataset: str) -> str:
        """The app id as the submit URLs spell it (org-example-toolbox): the stored definitions' one,
        else ``metadata.app_id`` of one row of one of the dataset's ping tables (an app with data but
        no `apps add` was listed under its dataset name, org_example_toolbox); the dataset name when
        no row tells (empty tables, definitions only)."""
        if self._defined_apps.get(dataset, {}).get("app_id"):
            return self._defined_apps[dataset]["app_id"]
        if dataset not in self._app_ids:
            self._app_ids[dataset] = dataset
            for table in self._tables.get(dataset, []):
                if table == EVENTS_STREAM_TABLE:
                    continue
                rows = self.rows(f"SELECT metadata.app_id AS app_id FROM {q(dataset)}.{q(table)} "
                                 "WHERE metadata.app_id IS NOT NULL LIMIT 1")
                if rows:
                    self._app_ids[dataset] = rows[0]["app_id"]
                    break
        return self._app_ids[dataset]

    def _resolve(self, dataset: str) -> str:
        if not IDENT_RE.fullmatch(dataset or ""):
            raise NotFound(f"no app {dataset!r}")
        if dataset not in self._defined_apps and dataset not in self._tables:
            raise NotFound(f"no app {dataset!r}")
        return dataset

    # --- pages -----------------------------------------------------------------------

    def apps(self) -> list[dict]:
        defined, tables = self._defined_apps, self._tables
        out = []
        for dataset in sorted(set(defined) | set(tables)):
            ping_tables = [t for t in tables.get(dataset, []) if t != EVENTS_STREAM_TABLE]
            stats = [self._table_stats(dataset, t) for t in ping_tables]
            seen = [s["last_seen"] for s in stats if s["last_seen"]]
            out.append({
                "dataset": dataset,
                "app_id": self._app_id(dataset),
                "defined": dataset in defined,
                "ping_types": len([s for s in stats if s["rows"]]),
                "pings_received": sum(s["rows"] for s in stats),
                "last_seen": max(seen) if seen else None,
                "metrics_defined": defined.get(dataset, {}).get("metrics_defined", 0),
            })
        return out

    @_per_catalog
    def _definitions(self, dataset: str) -> tuple[list[dict], list[dict]]:
        """The app's stored metric and ping definitions (read once: every metric page needs its own)."""
        if not self._has_catalog:
            return [], []
        metrics = [orjson.loads(r["definition"]) for r in self.rows(
            f"SELECT definition FROM {META}.metric_definitions WHERE dataset = ? ORDER BY metric_id", [dataset])]
        pings = [orjson.loads(r["definition"]) for r in self.rows(
            f"SELECT definition FROM {META}.ping_definitions WHERE dataset = ? ORDER BY ping", [dataset])]
        return metrics, pings

    def _observed_metrics(self, dataset: str, cells: frozenset | None = None) -> dict[tuple[str, str], dict]:
        """(metric type, column) -> {tables: {table: {rows, last_seen}}} for every metric column of every
        ping table, or only for ``cells``, a set of (table, (metric type, column)); in the order of
        the tables and of their columns either way."""
        seen: dict[tuple[str, str], dict] = {}
        for table, cols in self._metric_columns(dataset).items():
            wanted = [key for key in cols if cells is None or (table, key) in cells]
            counts = self._column_counts(dataset, table, wanted)
            for key in wanted:
                seen.setdefault(key, {"tables": {}})["tables"][table] = counts[key]
        return seen

    def _column_counts(self, dataset: str, table: str, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """(metric type, column) -> {rows, last_seen} of these columns of one ping table: one query for
        those this Catalog has not counted yet (app() counts all of them, a metric page a few)."""
        missing = [key for key in keys if (dataset, table, key) not in self._counted]
        if missing:
            exprs = []
            for i, (mtype, col) in enumerate(missing):
                ref = f"metrics.{q(mtype)}.{q(col)}"
                # a CASE, not an aggregate's FILTER: with 1,000 metric columns the FILTERs took 3.0-3.3 s
                # on 3 rows and 8.8 s on 21,000, the CASEs 0.8 s on either (same results; 2 cores)
                exprs.append(f"count({ref}) AS n{i}, "
                             f"max(CASE WHEN {ref} IS NOT NULL THEN submission_timestamp END) AS t{i}")
            r = self.rows(f"SELECT {', '.join(exprs)} FROM {q(dataset)}.{q(table)}")[0]
            for i, key in enumerate(missing):
                self._counted[(dataset, table, key)] = {"rows": r[f"n{i}"], "last_seen": _iso(r[f"t{i}"])}
        return {key: self._counted[(dataset, table, key)] for key in keys}

    def _observed_events(self, dataset: str) -> dict[tuple[str, str], dict]:
        if EVENTS_STREAM_TABLE not in self._tables.get(dataset, []):
            return {}
        return {(r["category"], r["name"]): {"rows": r["n"], "last_seen": _iso(r["last_seen"])}
                for r in self.rows(f"SELECT category, name, count(*) AS n, max(submission_timestamp) AS last_seen "
                                   f"FROM {q(dataset)}.{q(EVENTS_STREAM_TABLE)} GROUP BY 1, 2")}

    def app(self, dataset: str) -> dict:
        return self._app(self._resolve(dataset))

    @_per_catalog
    def _app(self, dataset: str) -> dict:
        pings = self._pings(dataset)
        metrics = self._metric_summaries(dataset, self._observed_metrics(dataset))
        dau = []
        if self.rows("SELECT 1 FROM duckdb_views() WHERE schema_name = ? AND view_name = 'daily_active_clients'",
                     [dataset]):
            dau = [{"day": _iso(r["day"]), "clients": r["clients"]} for r in self.rows(
                f"SELECT day, clients FROM {q(dataset)}.daily_active_clients ORDER BY day")]
        return {"dataset": dataset, "app_id": self._app_id(dataset),
                "defined": dataset in self._defined_apps, "pings": pings, "metrics": metrics,
                "daily_active_clients": dau}

    @_per_catalog
    def _pings(self, dataset: str) -> list[dict]:
        """The app's pings by name: defined, Glean's own, or only seen (a table), with their tables' rows."""
        metric_defs, ping_defs = self._definitions(dataset)
        tables = self._tables.get(dataset, [])
        pings = {}
        for p in ping_defs:
            pings[p["name"]] = {"name": p["name"], "table": p["table"], "defined": True, "builtin": False,
                                "description": p.get("description")}
        for name, text in BUILTIN_PINGS.items():
            if table_name(name, "1") in tables and name not in pings:
                pings[name] = {"name": name, "table": table_name(name, "1"), "defined": False, "builtin": True,
                               "description": text}
        known_tables = {p["table"] for p in pings.values()}
        announced = {table_name(p, "1"): p for m in metric_defs for p in m.get("send_in_pings") or []}
        stats = {t: self._table_stats(dataset, t) for t in tables if t != EVENTS_STREAM_TABLE}
        for t in tables:
            if t != EVENTS_STREAM_TABLE and t not in known_tables:
                name = stats[t]["doc_type"] or announced.get(t) or t.rsplit("_v", 1)[0]
                pings[name] = {"name": name, "table": t, "defined": False, "builtin": False, "description": None}
        for p in pings.values():
            p.update(stats.get(p["table"], {"rows": 0, "last_seen": None}))
            p.pop("doc_type", None)
            p["status"] = "defined" if p["defined"] else ("built-in" if p["builtin"] else "undocumented")
            if p["rows"] == 0:
                p["status"] += ", no data yet"
        return sorted(pings.values(), key=lambda p: p["name"])

    def _metric_summaries(self, dataset: str, observed: dict[tuple[str, str], dict]) -> list[dict]:
        """The app's metrics as app() lists them, by id, from the column counts in ``observed``
        (_observed_metrics): with all of them, app()'s list; with some, the entries of those columns
        are app()'s (their counts are all that an entry reads, but for an undocumented column's id:
        the others of its name decide it, `t_x` or `t_x.counter`)."""
        metric_defs, _ = self._definitions(dataset)
        events = self._observed_events(dataset)
        metrics = []
        claimed: set[tuple[str, str]] = set()
        for m in metric_defs:
            if m["type"] == "event":
                obs = events.get((m["category"], m["name"]))
                rows, last = (obs["rows"], obs["last_seen"]) if obs else (0, None)
                where = [{"table": EVENTS_STREAM_TABLE, "column": None}]
            else:
                key = (m.get("wire_type"), m["column"])
                claimed.add(key)
                obs = observed.get(key, {"tables": {}})
                rows = sum(t["rows"] for t in obs["tables"].values())
                lasts = [t["last_seen"] for t in obs["tables"].values() if t["last_seen"]]
                last = max(lasts) if lasts else None
                in_tables = {table_name(p, "1") for p in m.get("send_in_pings") or [] if m.get("wire_type")}
                in_tables |= {t for t, v in obs["tables"].items() if v["rows"]}  # also where it really arrived
                where = [{"table": t, "column": f"metrics.{m['wire_type']}.{m['column']}"} for t in sorted(in_tables)]
            metrics.append({"id": m["id"], "type": m["type"], "description": m.get("description"),
                            "defined": True, "status": "defined" if rows else "no data yet",
                            "values_seen": rows, "last_seen": last, "where": where})
        undocumented = [(key, obs) for key, obs in sorted(observed.items(), key=lambda kv: kv[0][1])
                        if key not in claimed and any(t["rows"] for t in obs["tables"].values())]
        # A column name sent under several types (a counter and a string both named t.x) is one id per
        # type, `t_x.counter` and `t_x.string`: under the bare name all but one had no page.
        taken = Counter([col for (_, col), _ in undocumented] + [m["id"] for m in metrics])
        for key, obs in undocumented:
            rows = sum(t["rows"] for t in obs["tables"].values())
            mtype, col = key
            lasts = [t["last_seen"] for t in obs["tables"].values() if t["last_seen"]]
            metrics.append({"id": col if taken[col] == 1 else f"{col}.{mtype}", "type": mtype,
                            "description": None, "defined": False,
                            "status": "built-in (Glean SDK)" if col.startswith("glean_") else "undocumented",
                            "values_seen": rows, "last_seen": max(lasts) if lasts else None,
                            "where": [{"table": t, "column": f"metrics.{mtype}.{col}"}
                                      for t, v in sorted(obs["tables"].items()) if v["rows"]]})
        defined_events = {(m["category"], m["name"]) for m in metric_defs if m["type"] == "event"}
        for (category, name), obs in sorted(events.items()):
            if (category, name) in defined_events:
                continue
            metrics.append({"id": f"{category}.{name}", "type": "event", "description": None, "defined": False,
                            "status": "built-in (Glean SDK)" if category == "glean" else "undocumented",
                            "values_seen": obs["rows"], "last_seen": obs["last_seen"],
                            "where": [{"table": EVENTS_STREAM_TABLE, "column": None}]})
        metrics.sort(key=lambda m: m["id"])
        return metrics

    def _app_read(self, dataset: str) -> bool:
        """Whether this Catalog has read app() of ``dataset`` already (a build: app(), then each of its
        pages): then a page takes its metrics from there, with no query."""
        return ("_app", dataset) in self._kept

    @_per_catalog
    def _app_metrics_by_id(self, dataset: str) -> dict[str, dict]:
        return _first_by(self._app(dataset)["metrics"], "id")

    def _cells_of_metric(self, dataset: str, metric_id: str) -> frozenset[tuple[str, tuple[str, str]]]:
        """The metric columns (table, (type, column)) whose counts make ``metric_id``'s entry in app():
        the column of the defined metric of that id, and every column an undocumented metric of that
        id could be (`t_x`, `t_x.counter`) with the others of its name, under any type, in every table."""
        metric_defs, _ = self._definitions(dataset)
        keys = {(m.get("wire_type"), m["column"]) for m in metric_defs
                if m["id"] == metric_id and m["type"] != "event"}
        tables = self._metric_columns(dataset)
        names = {col for cols in tables.values() for mtype, col in cols if metric_id in (col, f"{col}.{mtype}")}
        return frozenset((t, key) for t, cols in tables.items() for key in cols if key in keys or key[1] in names)

    def _cells_of_ping(self, dataset: str, table: str) -> frozenset[tuple[str, tuple[str, str]]]:
        """The metric columns (table, (type, column)) whose counts tell which metrics app() lists in
        ``table`` and their ids: the table's own (which of them have values there), and, for each name
        with values there, the columns of that name that have none there, in the other tables (whether
        they have values elsewhere decides between `t_x` and `t_x.counter`)."""
        tables = self._metric_columns(dataset)
        own = self._column_counts(dataset, table, tables.get(table, []))
        names = {col for (_, col), counts in own.items() if counts["rows"]}
        return frozenset([(table, key) for key in own] + [
            (t, key) for t, cols in tables.items() if t != table for key in cols
            if key[1] in names and not (key in own and own[key]["rows"])])

    @_per_catalog
    def _index(self, dataset: str) -> tuple[dict, dict]:
        """(metric definitions by id, ping definitions by name), the first of each (a lookup per page,
        not a walk through the whole app for each metric)."""
        metric_defs, ping_defs = self._definitions(dataset)
        return _first_by(metric_defs, "id"), _first_by(ping_defs, "name")

    def ping(self, dataset: str, name: str) -> dict:
        """A ping's page; it counts only the metric columns that decide its list of metrics, not all
        of the app's (app(): 1 s a request at 1,000 columns)."""
        dataset = self._resolve(dataset)
        pings = self._pings(dataset)
        ping = next((p for p in pings if p["name"] == name), None)
        if ping is None:  # named as its table (`toolbox_usage`, `toolbox_usage_v1`): say the ping's own name
            spelled = next((p["name"] for p in pings
                            if name.replace("-", "_") in (p["name"].replace("-", "_"), p["table"])), None)
            raise NotFound(f"no ping {name!r} in {dataset}" + (
                f": pings go by their Glean name, {spelled!r}" if spelled else ""))
        definition = self._index(dataset)[1].get(name, {})
        if self._app_read(dataset):
            metrics = self._app(dataset)["metrics"]
        else:
            metrics = self._metric_summaries(dataset, self._observed_metrics(dataset, self._cells_of_ping(
                dataset, ping["table"])))
        out = {**ping, "app_id": self._app_id(dataset), "dataset": dataset,
               "reasons": definition.get("reasons") or {},
               "include_client_id": definition.get("include_client_id", BUILTIN_CLIENT_ID.get(name)),
               "send_if_empty": definition.get("send_if_empty"), "bugs": definition.get("bugs") or [],
               "data_reviews": definition.get("data_reviews") or [],
               "notification_emails": definition.get("notification_emails") or [],
               "metrics": [m["id"] for m in metrics if any(w["table"] == ping["table"] for w in m["where"])]}
        out["daily"] = []
        if ping["rows"]:
            out["daily"] = [{"day": _iso(r["day"]), "pings": r["pings"], "clients": r["clients"]} for r in self.rows(
                f"SELECT CAST(timezone('UTC', submission_timestamp) AS DATE) AS day, count(*) AS pings, "
                f"count(DISTINCT client_info.client_id) AS clients FROM {q(dataset)}.{q(ping['table'])} "
                "GROUP BY 1 ORDER BY 1")]
        out["sql"] = {d: f"SELECT {sqlgen.utc_day(d)} AS day, COUNT(*) AS pings\n"
                         f"FROM {sqlgen.table_ref(dataset, ping['table'], d)}\nGROUP BY day\nORDER BY day"
                      for d in sqlgen.DIALECTS}
        return out

    def metric(self, dataset: str, metric_id: str) -> dict:
        """A metric's page; it counts only the metric columns its entry in app() comes from, not all
        of the app's (app(): 1 s a request at 1,000 columns)."""
        dataset = self._resolve(dataset)
        if self._app_read(dataset):
            summary = self._app_metrics_by_id(dataset).get(metric_id)
        else:
            observed = self._observed_metrics(dataset, self._cells_of_metric(dataset, metric_id))
            summary = _first_by(self._metric_summaries(dataset, observed), "id").get(metric_id)
        if summary is None:
            raise NotFound(f"no metric {metric_id!r} in {dataset}")
        definition = self._index(dataset)[0].get(metric_id, {})
        tables = set(self._tables.get(dataset, []))
        out = {**definition, **summary, "app_id": self._app_id(dataset), "dataset": dataset,
               "app_pings": [p["name"] for p in self._pings(dataset)]}
        out.setdefault("labels", None)
        if summary["type"] == "event":
            category, _, name = metric_id.rpartition(".")
            out["queries"] = [{"table": EVENTS_STREAM_TABLE, "column": None,
                               "sql": {d: sqlgen.metric_sql(d, dataset, EVENTS_STREAM_TABLE, None, "",
                                                            event=(category, name)) for d in sqlgen.DIALECTS}}]
            out["chart"] = self._event_chart(dataset, category, name) if EVENTS_STREAM_TABLE in tables else None
            return out
        wire = definition.get("wire_type") or summary["type"]
        where = summary["where"][0]["column"] if summary["where"] else None  # metrics.<type>.<column>
        column = definition.get("column") or (where.split(".", 2)[2] if where else column_name(metric_id))
        out["queries"] = [{"table": w["table"], "column": w["column"],
                           "sql": {d: sqlgen.metric_sql(d, dataset, w["table"], wire, column) for d in sqlgen.DIALECTS}}
                          for w in summary["where"]]
        charts = [self._metric_chart(dataset, w["table"], wire, column) for w in summary["where"]
                  if w["table"] in tables]
        charts = [c for c in charts if c and c["series"]]
        out["chart"] = charts[0] if charts else None
        out["charts"] = charts
        return out

    # --- chart data ------------------------------------------------------------------

    def _event_chart(self, dataset: str, category: str, name: str) -> dict:
        rows = self.rows(f"SELECT day, events FROM {q(dataset)}.events_daily WHERE category = ? AND name = ? "
                         "ORDER BY day", [category, name])
        return {"title": "events per day", "table": EVENTS_STREAM_TABLE, "unit": "events",
                "series": [{"name": "events", "points": [[_iso(r["day"]), r["events"]] for r in rows]}] if rows else []}

    def _metric_chart(self, dataset: str, table: str, wire: str, column: str) -> dict | None:
        if wire in DISTRIBUTIONS:
            return self._percentile_chart(dataset, table, wire, column)
        base = {"table": table}
        if wire not in AGGREGATED_TYPES:
            rows = self.rows(f"SELECT CAST(timezone('UTC', submission_timestamp) AS DATE) AS day, count(*) AS n "
                             f"FROM {q(dataset)}.{q(table)} WHERE metrics.{q(wire)}.{q(column)} IS NOT NULL "
                             "GROUP BY 1 ORDER BY 1")
            return {**base, "title": "pings with a value, per day", "unit": "pings",
                    "series": [{"name": "pings", "points": [[_iso(r["day"]), r["n"]] for r in rows]}] if rows else []}
        params = [table, wire, column]
        where = "ping_table = ? AND metric_type = ? AND metric = ?"
        view = self._metric_daily_of(dataset, table, wire, column)
        daily = lambda sql, p: self.rows(sql, p) if view else []  # noqa: E731 (no such column: no rows)
        if wire.startswith("labeled_") or wire in ("dual_labeled_counter", "string"):
            value = "samples" if "distribution" in wire else ("avg_value" if wire == "labeled_rate" else "sum_value")
            top = [r["label"] for r in daily(
                f"SELECT label, sum({value}) AS total FROM {view} WHERE {where} GROUP BY label "
                "ORDER BY total DESC, label LIMIT 5", params)]
            rows = daily(f"SELECT day, label, {value} AS v FROM {view} WHERE {where} AND list_contains(?, label) "
                         "ORDER BY day", params + [top]) if top else []
            series = [{"name": label, "points": [[_iso(r["day"]), r["v"]] for r in rows if r["label"] == label]}
                      for label in top]
            what = {"string": "pings per value (top 5)", "labeled_rate": "rate per label (top 5)"}.get(
                wire, "samples per label (top 5)" if "distribution" in wire else "daily sum per label (top 5)")
            return {**base, "title": what, "unit": "", "series": series}
        rows = daily(f"SELECT day, sum_value, avg_value, max_value FROM {view} WHERE {where} ORDER BY day", params)
        pts = lambda key: [[_iso(r["day"]), r[key]] for r in rows]
        if not rows:
            return {**base, "title": "", "unit": "", "series": []}
        if wire == "counter":
            return {**base, "title": "daily sum", "unit": "", "series": [{"name": "sum", "points": pts("sum_value")}]}
        if wire == "boolean":
            return {**base, "title": "share of pings with true", "unit": "",
                    "series": [{"name": "share true", "points": pts("avg_value")}]}
        if wire == "rate":
            return {**base, "title": "daily rate (numerators / denominators)", "unit": "",
                    "series": [{"name": "rate", "points": pts("avg_value")}]}
        return {**base, "title": "daily average and maximum", "unit": "",
                "series": [{"name": "average", "points": pts("avg_value")}, {"name": "maximum", "points": pts("max_value")}]}

    def _metric_daily_of(self, dataset: str, table: str, wire: str, column: str) -> str | None:
        """The rows of ``<dataset>.metric_daily`` for one metric column, as a subquery: the view's own SQL
        for that column alone (views.metric_part), the same rows. A query of the view itself binds and
        plans every metric column of the app (0.3 s a query with 1,000 columns, so `dictionary build`
        took time in the square of the columns); this reads the one column (about 10 ms there).
        None if the table has no such column (the view has no row for it)."""
        if (wire, column) not in self._metric_columns(dataset).get(table, []):
            return None
        return f"({metric_part(f'{q(dataset)}.{q(table)} AS p', table, wire, [column], DUCKDB)}) AS metric_daily"

    def _percentile_chart(self, dataset: str, table: str, wire: str, column: str) -> dict:
        rows = self.rows(
            f"SELECT day, b.key AS bucket, sum(b.value) AS n FROM (SELECT CAST(timezone('UTC', submission_timestamp) "
            f"AS DATE) AS day, UNNEST(metrics.{q(wire)}.{q(column)}.\"values\") AS b FROM {q(dataset)}.{q(table)}) "
            "GROUP BY 1, 2 ORDER BY 1, 2")
        by_day: dict[str, list[tuple[int, int]]] = {}
        for r in rows:
            by_day.setdefault(_iso(r["day"]), []).append((r["bucket"], r["n"]))
        series = []
        for pct in (50, 95):
            series.append({"name": f"p{pct}", "points": [[day, percentile(buckets, pct)]
                                                          for day, buckets in sorted(by_day.items())]})
        # Glean records a timing in nanoseconds and a memory size in bytes, whatever the time_unit or
        # memory_unit of the definition (those are what the app passes in): the page shows that unit
        unit = _BUCKET_UNITS.get(wire, "")
        return {"table": table, "unit": unit, "series": series if by_day else [],
                "title": f"percentiles from the buckets{f', in {unit}' if unit else ''} (bucket lower bounds)"}


_BUCKET_UNITS = {"timing_distribution": "nanoseconds", "memory_distribution": "bytes"}


def percentile(buckets: list[tuple[int, int]], pct: float) -> int | None:
    """Lower bound of the bucket that holds the pct-th percentile sample."""
    total = sum(n for _, n in buckets)
    if total <= 0:
        return None
    need, seen = total * pct / 100.0, 0
    for key, n in sorted(buckets):
        seen += n
        if seen >= need:
            return key
    return sorted(buckets)[-1][0]
