"""``bigquery://PROJECT/LOCATION``: a dataset per app, a table per ping, as in DuckDB.

Layout: the columns come from the same type tree as the DuckDB tables (table_schema.py;
STRUCT -> RECORD, LIST -> REPEATED). Each table is created on first use, partitioned by
day on ``submission_timestamp`` and clustered, with its deduplicated view next to it
(``<ping>`` over ``<ping>_v<version>``, ``events_stream`` over ``events_stream_v1``). A metric
never seen before widens the table with NULLABLE fields (``update_table``).

Writes: streaming inserts (``insertAll``) with ``insertId`` = document_id (per event:
document_id/event_index), because load jobs are quota-limited and pings arrive one object
at a time. BigQuery's insertId dedupe is best-effort (about a minute), so a re-sent or
replayed ping can leave a second copy in the table: the views show the first row per
document_id, and queries use the views.

Deletion requests: rows still in the streaming buffer cannot be deleted (DML error) for up to
about 30 minutes. Each request is recorded in ``_gleanpipe.deletions`` (by DML, so the record
itself can be updated), tried at once, and left pending (``executed_at`` NULL, ``last_error``)
when BigQuery refuses; ``gleanpipe deletions`` retries every pending one.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import date, datetime, timezone

import orjson

from ..config import Config, SettingError
from ..naming import TABLE_RE, quote_bq_ident as q
from ..table_schema import (EVENTS_STREAM_COLUMNS, EVENTS_STREAM_TABLE, EVENTS_STREAM_VIEW, PING_COLUMNS, STR,
                            TS, INT, T, metrics_struct, struct)
from ..transform import PingRow
from ..views import BIGQUERY, build_views
from . import missing_table
from .base import (DELETION_TABLE, EVENTS_KEY, META, DeletionAttempt, LoadError, QueryFailed, RowDataError,
                   Warehouse, WarehouseUnavailable, WriteResult, dedup_view_query, first_per_document, loaded_keys,
                   needed_metrics, without_deleted)

log = logging.getLogger(__name__)

PROJECT_RE = re.compile(r"[a-z0-9][a-z0-9.:-]{0,62}[a-z0-9]")
LOCATION_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]{1,40}")

PING_CLUSTERING = ["normalized_channel", "sample_id"]  # as Mozilla's Glean tables
EVENTS_CLUSTERING = ["category", "name", "sample_id"]
MAX_INSERT_ROWS = 500  # BigQuery's recommended insertAll batch
MAX_INSERT_BYTES = 9 * 1024 * 1024  # insertAll requests are limited to 10 MB

ERRORS_COLUMNS = (("object_key", STR), ("app_id", STR), ("doc_type", STR), ("document_id", STR),
                  ("error_type", STR), ("error_message", STR), ("failed_at", TS))
DELETIONS_COLUMNS = (("dataset", STR), ("client_id", STR), ("document_id", STR), ("requested_at", TS),
                     ("executed_at", TS), ("rows_deleted", INT), ("attempts", INT), ("last_error", STR),
                     ("recorded_at", TS))


def parse_url(url: str) -> tuple[str, str]:
    rest = url[len("bigquery://"):] if url.startswith("bigquery://") else ""
    project, slash, location = rest.partition("/")
    shape = "BigQuery warehouse URL must look like bigquery://PROJECT/LOCATION (e.g. bigquery://my-project/US)"
    if not project or not slash or "/" in location:
        raise SettingError(f"{shape}, got {url!r}")
    if not PROJECT_RE.fullmatch(project):
        raise SettingError(f"{shape}; in {url!r} the project id {project!r} is not one: 2 to 64 lowercase letters, "
                           "digits, '-', '.' or ':', starting and ending with a letter or digit")
    if not LOCATION_RE.fullmatch(location):
        raise SettingError(f"{shape}; in {url!r} the location {location!r} is not one (such as US, EU or europe-west1)")
    return project, location


def make_client(project: str, location: str, endpoint: str = ""):
    """A BigQuery client; with an endpoint (an emulator) it sends no credentials."""
    try:
        from google.cloud import bigquery
    except ImportError:
        raise ValueError("bigquery:// needs google-cloud-bigquery: pip install 'gleanpipe[gcp]'") from None
    if endpoint:
        from google.auth.credentials import AnonymousCredentials

        return bigquery.Client(project=project, location=location, credentials=AnonymousCredentials(),
                               client_options={"api_endpoint": endpoint})
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return bigquery.Client(project=project, location=location)
    except DefaultCredentialsError as exc:
        raise WarehouseUnavailable(f"no Google credentials for BigQuery ({exc}); run `gcloud auth "
                                   "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS") from None


def schema_of(columns) -> list[dict]:
    """Columns (name, T) as BigQuery schema fields in API form."""
    return [t.bigquery(name) for name, t in columns]


def widen(have: list[dict], want: list[dict]) -> list[dict] | None:
    """``have`` plus every field of ``want`` it lacks, nested RECORDs included; None if nothing
    is missing. Existing fields keep their type and mode (BigQuery only allows additions)."""
    out, changed = [], False
    wanted = {f["name"]: f for f in want}
    for field in have:
        w = wanted.pop(field["name"], None)
        if w is not None and field.get("type") in ("RECORD", "STRUCT") and w["type"] == "RECORD":
            inner = widen(field.get("fields", []), w.get("fields", []))
            if inner is not None:
                field, changed = {**field, "fields": inner}, True
        out.append(field)
    for w in wanted.values():  # new fields, in the order wanted
        out.append(w)
        changed = True
    return out if changed else None


def _clean(value, t: T):
    """A row value as insertAll takes it: NULLs left out (BigQuery's arrays cannot hold them),
    JSON as JSON text."""
    if value is None:
        return None
    if t.kind == "JSON":
        return orjson.dumps(value).decode()
    if t.kind == "LIST" and isinstance(value, list):
        return [_clean(v, t.item) for v in value if v is not None]
    if t.kind == "STRUCT" and isinstance(value, dict):
        out = {}
        for name, ft in t.fields:
            v = value.get(name)
            if v is not None:
                out[name] = _clean(v, ft)
        return out
    return value  # a value of the wrong shape goes as sent: BigQuery refuses the row (RowDataError)


def _param(value):
    from google.cloud import bigquery

    if isinstance(value, (list, tuple)):
        kind = _scalar_type(next((v for v in value if v is not None), ""))
        return bigquery.ArrayQueryParameter(None, kind, list(value))
    return bigquery.ScalarQueryParameter(None, _scalar_type(value), value)


def _scalar_type(value) -> str:
    if isinstance(value, bool):
        return "BOOL"
    if isinstance(value, int):
        return "INT64"
    if isinstance(value, float):
        return "FLOAT64"
    if isinstance(value, datetime):
        return "TIMESTAMP"
    if isinstance(value, date):
        return "DATE"
    if isinstance(value, bytes):
        return "BYTES"
    return "STRING"


def field_type(field: dict) -> tuple:
    """A schema field's type (API form) without its name: type, mode and, for a RECORD, its fields
    in order (two RECORDs that differ in any of these are different types to BigQuery)."""
    inner = tuple((f["name"], field_type(f)) for f in field.get("fields") or ())
    return field.get("type"), field.get("mode") or "NULLABLE", inner


def metric_fields(schema: list[dict]) -> list[tuple[str, str, tuple]]:
    """(metric type, column, its type: ``field_type``) of a table's ``metrics`` RECORD, from its
    schema (API form)."""
    for field in schema:
        if field["name"] == "metrics":
            return [(mtype["name"], col["name"], field_type(col))
                    for mtype in field.get("fields", []) for col in mtype.get("fields", [])]
    return []


def said(exc: BaseException) -> str:
    """What BigQuery said, on one line: a google-api-core error's code and message, without the
    job's location and id and the details that repeat the message."""
    code, message = getattr(exc, "code", None), getattr(exc, "message", None)
    if message is None:
        return str(exc)
    first = str(message).splitlines()[0].split("; reason: ")[0]  # the rest says it again
    return f"{code} {first}" if code else first


class DMLConflict(WarehouseUnavailable):
    """BigQuery refused a statement for what other statements do on the same table at the same
    time, not for the statement itself (a 400 all the same; ``DML_CONFLICTS``): it aborted it
    because another one changed the table ("Could not serialize access to table ... due to
    concurrent update", "Transaction is aborted due to concurrent update against table ..."; two
    loaders recording deletion requests in ``_gleanpipe.deletions`` at once, or a loader beside
    the scheduled `deletions` run), or too many run or change it at once ("Too many DML
    statements outstanding against table ..., limit is 20", "Exceeded rate limits: too many table
    update operations for this table"). The same statement run again later succeeds: transient."""


# BigQuery's words for those refusals (lower case), and what gleanpipe adds to them.
DML_CONFLICTS = {
    "concurrent update": "another statement changed the table at the same time",
    "too many dml statements outstanding": "more statements on the table at once than BigQuery runs",
    "too many table update operations": "more changes to the table than BigQuery's rate limit takes",
}


def dml_conflict(exc: BaseException) -> str | None:
    """What the refusal ``exc`` was, in gleanpipe's words, when it is one of ``DML_CONFLICTS``."""
    from google.api_core import exceptions as gexc

    if not isinstance(exc, gexc.BadRequest):
        return None
    said_lower = str(exc.message).lower()
    return next((why for words, why in DML_CONFLICTS.items() if words in said_lower), None)


class BigQueryWarehouse(Warehouse):
    def __init__(self, project: str, location: str, config: Config, *, read_only: bool = False, client=None):
        """``config``: its GLEANPIPE_BIGQUERY_* settings."""
        from google.cloud.bigquery.retry import DEFAULT_RETRY

        self.project, self.location = project, location
        self.url = f"bigquery://{project}/{location}"
        self.read_only = read_only
        self.retry_s = config.bigquery_retry_s
        self.deletions_refresh_s = config.bigquery_deletions_refresh_s
        self.deletions_settle_s = config.bigquery_deletions_settle_s
        if self.deletions_settle_s < self.deletions_refresh_s:
            raise SettingError("GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S must be at least "
                               "GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S (a deletion is final only after every "
                               "loader has re-read the deleted clients)")
        self.retry = DEFAULT_RETRY.with_deadline(self.retry_s)
        self.client = client or make_client(project, location, config.bigquery_endpoint)
        self._lock = threading.Lock()
        self._schemas: dict[tuple[str, str], list[dict]] = {}  # (dataset, table) -> schema (API form)
        self._datasets: set[str] = set()
        # Datasets whose derived views (views.py) to make again after this write: a table was made
        # or widened, or this process has not looked at the dataset before.
        self._reshaped: set[str] = set()
        self._deleted: dict[str, tuple[float, set[str]]] = {}  # dataset -> (read at, client ids)
        self._error_keys: set[str] | None = None

    # --- plumbing ---------------------------------------------------------------------

    def _ref(self, dataset: str, table: str) -> str:
        return f"{self.project}.{dataset}.{table}"

    def _sql_ref(self, dataset: str, table: str) -> str:
        return f"`{self.project}`.{q(dataset)}.{q(table)}"

    def _run(self, sql: str, params: list | None = None):
        """Run a query job; returns (job, rows)."""
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(query_parameters=[_param(p) for p in params or []])
        job = self.client.query(sql, job_config=config, retry=self.retry, job_retry=None, timeout=self.retry_s)
        result = job.result(retry=self.retry, timeout=self.retry_s)
        return job, result

    def _guard(self, fn, *args):
        """Call fn; transient BigQuery trouble becomes WarehouseUnavailable (the trigger retries)."""
        from google.api_core import exceptions as gexc

        try:
            return fn(*args)
        except (gexc.RetryError, gexc.ServerError, gexc.TooManyRequests, gexc.Forbidden, gexc.Unauthorized,
                ConnectionError, TimeoutError) as exc:
            raise WarehouseUnavailable(f"BigQuery: {said(exc)}") from exc
        except gexc.BadRequest as exc:
            why = dml_conflict(exc)
            if why:  # other statements on the table meanwhile, not this one's fault: run it again later
                raise DMLConflict(f"BigQuery: {said(exc)} ({why}; tried again later)") from exc
            raise
        except gexc.NotFound as exc:  # a table or dataset this process knew of was deleted: look again next time
            self._schemas.clear()
            self._datasets.clear()
            self._deleted.clear()
            raise WarehouseUnavailable(f"BigQuery: {said(exc)} (made again on the next try)") from exc
        except OSError as exc:  # requests' connection errors
            raise WarehouseUnavailable(f"BigQuery: {exc}") from exc

    # --- datasets, tables, views --------------------------------------------------------

    def _ensure_dataset(self, dataset: str) -> None:
        if dataset in self._datasets:
            return
        from google.api_core import exceptions as gexc
        from google.cloud import bigquery

        # Look before creating: a deployed loader has dataEditor on its datasets only (make deploy
        # creates them), and BigQuery refuses a create from it (403) even when the dataset exists.
        try:
            self.client.get_dataset(f"{self.project}.{dataset}", retry=self.retry, timeout=self.retry_s)
        except gexc.Forbidden as exc:  # what an account with rights on other datasets only gets for a missing one
            raise WarehouseUnavailable(
                f"BigQuery dataset {dataset}: this loader may not read it, or it does not exist ({exc.message}); "
                "if the app is new, add it to GLEANPIPE_DEPLOY_APPS and run `make deploy` again") from exc
        except gexc.NotFound:
            ds = bigquery.Dataset(f"{self.project}.{dataset}")
            ds.location = self.location
            try:
                self.client.create_dataset(ds, exists_ok=True, retry=self.retry, timeout=self.retry_s)
            except gexc.Forbidden as exc:
                raise WarehouseUnavailable(
                    f"BigQuery dataset {dataset} does not exist and this loader may not create it ({exc.message}); "
                    "add the app to GLEANPIPE_DEPLOY_APPS and run `make deploy` again") from exc
        self._datasets.add(dataset)

    def _ensure_table(self, dataset: str, table: str, schema: list[dict], *, partition: str | None,
                      clustering: list[str] | None, view: str | None = None, view_key: str = "document_id") -> None:
        """Create the table (and its view) if it is not there; widen it if it lacks fields of ``schema``."""
        from google.api_core import exceptions as gexc
        from google.cloud import bigquery

        key = (dataset, table)
        if key not in self._schemas:
            if dataset != META:
                self._reshaped.add(dataset)
            try:
                self._schemas[key] = [f.to_api_repr() for f in
                                      self.client.get_table(self._ref(dataset, table), retry=self.retry, timeout=self.retry_s).schema]
            except gexc.NotFound:
                self._ensure_dataset(dataset)
                t = bigquery.Table(self._ref(dataset, table),
                                   schema=[bigquery.SchemaField.from_api_repr(f) for f in schema])
                if partition:
                    t.time_partitioning = bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY,
                                                                    field=partition)
                if clustering:
                    t.clustering_fields = clustering
                t = self.client.create_table(t, exists_ok=True, retry=self.retry, timeout=self.retry_s)
                self._schemas[key] = [f.to_api_repr() for f in t.schema]
            if view:  # once per process, so a view is made even if whoever made the table stopped first
                v = bigquery.Table(self._ref(dataset, view))
                v.view_query = dedup_view_query(self._sql_ref(dataset, table), view_key)
                self.client.create_table(v, exists_ok=True, retry=self.retry, timeout=self.retry_s)
        if widen(self._schemas[key], schema) is not None:
            self._widen(dataset, table, schema)

    def _widen(self, dataset: str, table: str, schema: list[dict]) -> None:
        """Add the missing NULLABLE fields. Reads the table first (another instance may have widened
        it) and sends the table's etag, so a concurrent change makes this read and try again."""
        from google.api_core import exceptions as gexc
        from google.cloud import bigquery

        for _ in range(5):
            t = self.client.get_table(self._ref(dataset, table), retry=self.retry, timeout=self.retry_s)
            have = [f.to_api_repr() for f in t.schema]
            wider = widen(have, schema)
            if wider is None:
                self._schemas[(dataset, table)] = have
                return
            t.schema = [bigquery.SchemaField.from_api_repr(f) for f in wider]
            try:
                t = self.client.update_table(t, ["schema"], retry=self.retry, timeout=self.retry_s)
            except gexc.PreconditionFailed:
                continue
            self._schemas[(dataset, table)] = [f.to_api_repr() for f in t.schema]
            if dataset != META:
                self._reshaped.add(dataset)
            log.info("widened %s.%s", dataset, table)
            return
        raise WarehouseUnavailable(f"{dataset}.{table}: its schema kept changing while being widened")

    def _refresh_reshaped(self) -> None:
        """After a write: make the derived views of the datasets whose tables changed shape. Like
        DuckDB's, a failure here is logged and never fails the load (the rows are in)."""
        for dataset in sorted(self._reshaped):
            try:
                self._refresh_views(dataset)
            except Exception as exc:  # noqa: BLE001 - the views are a convenience; the next reshape retries
                log.warning("could not refresh the derived views of %s: %s", dataset, exc)
        self._reshaped.clear()

    def _refresh_views(self, dataset: str) -> None:
        """Create each derived view of ``dataset``, or give it the query its tables call for now."""
        from google.api_core import exceptions as gexc
        from google.cloud import bigquery

        tables: dict[str, list[tuple]] = {}
        for item in self.client.list_tables(f"{self.project}.{dataset}", retry=self.retry, timeout=self.retry_s):
            if item.table_type != "TABLE":
                continue
            name = item.table_id
            schema = []
            if TABLE_RE.fullmatch(name):  # read now, not from this process's cache: another may have widened it
                schema = [f.to_api_repr() for f in self.client.get_table(self._ref(dataset, name), retry=self.retry,
                                                                         timeout=self.retry_s).schema]
            tables[name] = metric_fields(schema)
        def source(table: str, metrics: bool) -> str:
            """What a derived view reads: the table's rows, one per ping as in its dedup view. Unlike
            DuckDB's, a BigQuery table can hold a ping twice (a load delivered again past BigQuery's
            dedupe window, a replay), and the derived views counted both. The columns are named, not
            `*`: bqemulator expands a `*` from the table's first schema, without widened columns."""
            if table == EVENTS_STREAM_TABLE:
                columns, key = "submission_timestamp, category, name, client_id", EVENTS_KEY
            else:  # `metrics` only where a view reads it: a table gets that column with its first metric
                columns, key = "submission_timestamp, client_info" + (", metrics" if metrics else ""), "document_id"
            return (f"(SELECT {columns} FROM {self._sql_ref(dataset, table)} WHERE TRUE QUALIFY "
                    f"ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY submission_timestamp) = 1)")

        for name, sql in build_views(tables, source, BIGQUERY).items():
            try:
                view = self.client.get_table(self._ref(dataset, name), retry=self.retry, timeout=self.retry_s)
            except gexc.NotFound:
                view = bigquery.Table(self._ref(dataset, name))
                view.view_query = sql
                self.client.create_table(view, exists_ok=True, retry=self.retry, timeout=self.retry_s)
                continue
            if view.view_query != sql:
                view.view_query = sql
                self.client.update_table(view, ["view_query"], retry=self.retry, timeout=self.retry_s)

    def _ensure_meta(self) -> None:
        self._ensure_table(META, "errors", schema_of(ERRORS_COLUMNS), partition="failed_at", clustering=None)
        self._ensure_table(META, "deletions", schema_of(DELETIONS_COLUMNS), partition=None, clustering=None)

    # --- writing ------------------------------------------------------------------------

    def _insert(self, dataset: str, table: str, rows: list[dict], row_ids: list[str]) -> None:
        """Streaming insert in requests under BigQuery's limits. A refused row raises RowDataError
        (the loader then writes the batch again by halves); a field BigQuery does not know yet right after
        a widening (it takes a while to reach the streaming system) raises WarehouseUnavailable."""
        from google.api_core.exceptions import BadRequest, NotFound

        start = 0
        while start < len(rows):
            end, size = start, 0
            while end < len(rows) and end - start < MAX_INSERT_ROWS:
                size += len(orjson.dumps(rows[end]))
                if size > MAX_INSERT_BYTES and end > start:
                    break
                end += 1
            try:
                errors = self.client.insert_rows_json(self._ref(dataset, table), rows[start:end],
                                                      row_ids=row_ids[start:end], retry=self.retry,
                                                      timeout=self.retry_s)
            except BadRequest as exc:  # the request refused whole (a row over BigQuery's size limits, say)
                raise RowDataError(f"{dataset}.{table}: {exc.message}") from exc
            except NotFound as exc:  # a table just created can be unknown to streaming for a moment
                # ... or it was deleted since this process cached it: the retry looks again (and makes it)
                self._schemas.pop((dataset, table), None)
                self._datasets.discard(dataset)
                raise WarehouseUnavailable(f"{dataset}.{table} not visible to streaming yet: {exc.message}") from exc
            if errors:
                self._raise_insert_errors(dataset, table, errors, row_ids[start:end])
            start = end

    @staticmethod
    def _raise_insert_errors(dataset: str, table: str, errors: list[dict], ids: list[str]) -> None:
        messages = [(e.get("index"), err.get("reason"), err.get("message", ""))
                    for e in errors for err in e.get("errors", [])]
        real = [m for m in messages if m[1] != "stopped"]  # "stopped": fine itself, held back by another row
        text = "; ".join(f"row {ids[i] if isinstance(i, int) and i < len(ids) else i}: {msg}"
                         for i, _, msg in real[:5]) or str(errors[:3])
        if any("no such field" in msg.lower() for _, _, msg in real):
            raise WarehouseUnavailable(f"{dataset}.{table}: new fields not visible to streaming yet: {text}")
        raise RowDataError(f"{dataset}.{table}: {text}")

    def _deleted_clients(self, dataset: str) -> set[str]:
        """Clients with a deletion request (done or pending), re-read every
        GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S so other instances' requests count too."""
        read_at, clients = self._deleted.get(dataset, (0.0, set()))
        if time.monotonic() - read_at >= self.deletions_refresh_s:
            _, rows = self._run(f"SELECT DISTINCT client_id FROM {self._sql_ref(META, 'deletions')} "
                                "WHERE dataset = ?", [dataset])
            clients = {r[0] for r in rows}
            self._deleted[dataset] = (time.monotonic(), clients)
        return clients

    def write(self, rows: list[PingRow], errors: list[LoadError]) -> WriteResult:
        if self.read_only:
            raise RuntimeError("warehouse opened read-only")
        with self._lock:
            return self._guard(self._write, rows, errors)

    def _write(self, rows: list[PingRow], errors: list[LoadError]) -> WriteResult:
        groups, repeated = first_per_document(rows)
        result = WriteResult(errors=len(errors), duplicates=repeated)
        now = datetime.now(timezone.utc).isoformat()
        self._ensure_meta()  # once per process: the deletions list is read before any row goes in
        for (dataset, table), by_id in groups.items():
            batch, skipped = without_deleted(by_id, self._deleted_clients(dataset))
            result.skipped_deleted += skipped
            if not batch:
                continue
            needed = needed_metrics(batch)
            columns = PING_COLUMNS + ((("metrics", metrics_struct(needed)),) if needed else ())
            self._ensure_table(dataset, table, schema_of(columns), partition="submission_timestamp",
                               clustering=PING_CLUSTERING, view=batch[0].path.view)
            row_t = struct(**dict(columns))  # a row's metrics not in the batch's are NULL, so left out
            self._insert(dataset, table, [_clean(orjson.loads(r.row_json), row_t) for r in batch],
                         [r.path.document_id for r in batch])
            result.inserted += len(batch)  # streamed; a copy BigQuery kept anyway is hidden by the view
            result.tables.add(f"{dataset}.{table}")
            events = [(r, e) for r in batch for e in r.events_json]
            if events:
                self._ensure_table(dataset, EVENTS_STREAM_TABLE, schema_of(EVENTS_STREAM_COLUMNS),
                                   partition="submission_timestamp", clustering=EVENTS_CLUSTERING,
                                   view=EVENTS_STREAM_VIEW, view_key=EVENTS_KEY)
                stream = [_clean(orjson.loads(e), EVENTS_T) for _, e in events]
                self._insert(dataset, EVENTS_STREAM_TABLE, stream,
                             [f"{r.path.document_id}/{s['event_index']}" for (r, _), s in zip(events, stream)])
                result.events += len(stream)
            for r in batch:
                if r.is_deletion_request and r.client_id:
                    self._request_deletion(dataset, r)
                    result.deletions += 1
        self._forget_errors(loaded_keys(groups))
        self._record_errors(errors, now)
        self._refresh_reshaped()
        return result

    # --- errors -------------------------------------------------------------------------

    def _known_error_keys(self) -> set[str]:
        if self._error_keys is None:
            _, rows = self._run(f"SELECT DISTINCT object_key FROM {self._sql_ref(META, 'errors')}")
            self._error_keys = {r[0] for r in rows}
        return self._error_keys

    def _forget_errors(self, keys: list[str]) -> None:
        """An object that loads now (after a fix) is no longer an error. Best-effort here: error
        rows still in the streaming buffer cannot be deleted yet and are kept."""
        from google.api_core import exceptions as gexc

        stale = sorted(set(keys) & self._known_error_keys())
        if not stale:
            return
        try:
            self._run(f"DELETE FROM {self._sql_ref(META, 'errors')} WHERE object_key IN UNNEST(?)", [stale])
            self._error_keys.difference_update(stale)
        except gexc.BadRequest as exc:
            log.info("error rows of %d loaded objects kept for now: %s", len(stale), exc.message)

    def _record_errors(self, errors: list[LoadError], now: str) -> None:
        if not errors:
            return
        self._forget_errors([e.object_key for e in errors])
        rows = [{"object_key": e.object_key, "app_id": e.app_id, "doc_type": e.doc_type, "document_id": e.document_id,
                 "error_type": e.error_type, "error_message": e.error_message, "failed_at": now} for e in errors]
        self._insert(META, "errors", rows, [f"{e.object_key}@{now}" for e in errors])
        self._known_error_keys().update(e.object_key for e in errors)

    # --- deletion requests --------------------------------------------------------------

    def _request_deletion(self, dataset: str, r: PingRow) -> None:
        """Record the request (once per deletion-request document), then try to carry it out."""
        deletions = self._sql_ref(META, "deletions")
        self._run(
            f"MERGE {deletions} AS d USING (SELECT ? AS dataset, ? AS client_id, ? AS document_id, "
            "? AS requested_at) AS n ON d.dataset = n.dataset AND d.document_id = n.document_id "
            "WHEN NOT MATCHED THEN INSERT (dataset, client_id, document_id, requested_at, recorded_at, rows_deleted, "
            "attempts) VALUES (n.dataset, n.client_id, n.document_id, n.requested_at, CURRENT_TIMESTAMP(), 0, 0)",
            [dataset, r.client_id, r.path.document_id,
             datetime.fromisoformat(r.submission_timestamp.replace("Z", "+00:00"))],
        )
        read_at, clients = self._deleted.get(dataset, (time.monotonic(), set()))
        self._deleted[dataset] = (read_at, clients | {r.client_id})
        # One record, or more: two loads of one request at the same moment can each insert it (an
        # insert-only MERGE does not see the other's new row). Carried out if any is; else the
        # latest record's time is the one its settling counts from.
        records = [tuple(row.values()) for row in self._run(
            f"SELECT executed_at, recorded_at FROM {deletions} WHERE dataset = ? AND document_id = ?",
            [dataset, r.path.document_id])[1]]
        if all(executed is None for executed, _ in records):
            recorded = max((at for _, at in records if at is not None), default=None)
            self._attempt_deletion(dataset, r.client_id, r.path.document_id, recorded)

    def _attempt_deletion(self, dataset: str, client_id: str, document_id: str,
                          recorded_at: datetime | None) -> DeletionAttempt:
        """Delete the client's rows from every table of the app. The request stays pending
        - when BigQuery refuses a DELETE (rows still in the streaming buffer), with its reason;
        - until GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S after it was recorded: another instance
          that has not re-read the deleted clients yet may still add a late ping of the client,
          and only a DELETE after that is final."""
        from google.api_core import exceptions as gexc

        deleted, error = 0, None
        # gleanpipe's own tables only: anything else in the dataset is left alone
        listed = self.client.list_tables(f"{self.project}.{dataset}", retry=self.retry, timeout=self.retry_s)
        tables = [t.table_id for t in listed
                  if t.table_type == "TABLE" and TABLE_RE.fullmatch(t.table_id) and t.table_id != DELETION_TABLE]
        started = datetime.now(timezone.utc)
        for table in sorted(tables):
            where = "client_id = ?" if table == EVENTS_STREAM_TABLE else "client_info.client_id = ?"
            try:
                job, _ = self._run(f"DELETE FROM {self._sql_ref(dataset, table)} WHERE {where}", [client_id])
            except gexc.BadRequest as exc:
                error = f"{table}: {exc.message}"
                continue  # the other tables are still worth doing now
            deleted += job.num_dml_affected_rows or 0
        settled = recorded_at is None or (started - recorded_at).total_seconds() >= self.deletions_settle_s
        if not error and not settled:
            error = (f"rows deleted; to run again from {self.deletions_settle_s} s after the request, for late "
                     "pings other loaders may still add")
        # no NULL parameters: BigQuery types a NULL parameter as STRING, which a TIMESTAMP refuses
        outcome = "last_error = ?" if error else "executed_at = CURRENT_TIMESTAMP(), last_error = NULL"
        self._run(
            f"UPDATE {self._sql_ref(META, 'deletions')} SET {outcome}, "
            "rows_deleted = COALESCE(rows_deleted, 0) + ?, attempts = COALESCE(attempts, 0) + 1 "
            "WHERE dataset = ? AND document_id = ?",
            ([error] if error else []) + [deleted, dataset, document_id],
        )
        if error:
            log.info("deletion request %s (%s) pending: %s", document_id, dataset, error)
        return DeletionAttempt(dataset, client_id, document_id, error is None, deleted, error)

    def retry_deletions(self) -> list[DeletionAttempt]:
        if self.read_only:
            raise RuntimeError("warehouse opened read-only")
        with self._lock:
            if not self._guard(self._has_meta):
                return []
            _, pending = self._guard(self._run, f"SELECT dataset, client_id, document_id, recorded_at FROM "
                                     f"{self._sql_ref(META, 'deletions')} WHERE executed_at IS NULL "
                                     "ORDER BY requested_at, document_id")
            attempts = []
            for dataset, client_id, document_id, recorded_at in (tuple(row.values()) for row in pending):
                try:
                    attempts.append(self._guard(self._attempt_deletion, dataset, client_id, document_id, recorded_at))
                except DMLConflict as exc:  # this request's statement only: it stays pending, the others go on
                    log.info("deletion request %s (%s) pending: %s", document_id, dataset, exc)
                    attempts.append(DeletionAttempt(dataset, client_id, document_id, False, 0, str(exc)))
            return attempts

    # --- reading ------------------------------------------------------------------------

    def read_query(self, sql: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
        """One statement that starts with SELECT or WITH, else WriteRefused (see read_only_sql)."""
        from google.api_core.exceptions import GoogleAPICallError, NotFound

        from ..read_only_sql import check_bigquery

        check_bigquery(sql)

        def run():
            try:
                return self._run(sql, params)
            except NotFound as exc:  # a dataset or table the query names: not one the loader lost
                message = f"BigQuery: {said(exc)}"  # with what the warehouse has, as DuckDB's query says it
                raise QueryFailed(missing_table.bigquery_hint(message, sql, self._app_datasets) or message) from None

        try:
            return self._rows(self._guard(run)[1])
        except GoogleAPICallError as exc:  # the query's own fault (a typo, a missing column): one line
            raise QueryFailed(f"BigQuery: {said(exc)}") from None

    def query(self, sql: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
        return self._rows(self._guard(self._run, sql, params)[1])

    def _app_datasets(self, listed: str | None) -> dict[str, list[str]]:
        """The project's datasets but gleanpipe's own (``missing_table.advise``), with the tables
        and views of ``listed`` only (one call, not one per dataset)."""
        names = [d.dataset_id for d in self.client.list_datasets(retry=self.retry, timeout=self.retry_s)
                 if d.dataset_id != META]
        found = {name: [] for name in names}
        lowered = {name.lower(): name for name in names}
        if listed is not None and listed.lower() in lowered:
            name = lowered[listed.lower()]
            found[name] = sorted(t.table_id for t in self.client.list_tables(
                f"{self.project}.{name}", retry=self.retry, timeout=self.retry_s))
        return found

    @staticmethod
    def _rows(result) -> tuple[list[str], list[tuple]]:
        if not result.schema:
            return [], []
        return [f.name for f in result.schema], [tuple(r.values()) for r in result]

    def _has_meta(self) -> bool:
        from google.api_core import exceptions as gexc

        if (META, "deletions") in self._schemas:
            return True
        try:
            self.client.get_table(self._ref(META, "deletions"), retry=self.retry, timeout=self.retry_s)
            self.client.get_table(self._ref(META, "errors"), retry=self.retry, timeout=self.retry_s)
        except gexc.NotFound:
            return False
        return True

    def status(self) -> dict:
        def run():
            counts = []
            for ds in sorted(d.dataset_id for d in self.client.list_datasets(retry=self.retry, timeout=self.retry_s)):
                if ds == META:
                    continue
                tables = self.client.list_tables(f"{self.project}.{ds}", retry=self.retry, timeout=self.retry_s)
                for t in sorted(t.table_id for t in tables if t.table_type == "TABLE"):
                    n = self._run(f"SELECT COUNT(*) FROM {self._sql_ref(ds, t)}")[1]
                    counts.append({"dataset": ds, "table": t, "rows": next(iter(n))[0]})
            load_errors, done, pending = {}, 0, 0
            if self._has_meta():
                errs = self._run(f"SELECT error_type, COUNT(DISTINCT object_key) FROM "
                                 f"{self._sql_ref(META, 'errors')} GROUP BY 1 ORDER BY 1")[1]
                load_errors = {r[0]: r[1] for r in errs}
                done, pending = next(iter(self._run(
                    f"SELECT COUNTIF(executed_at IS NOT NULL), COUNTIF(executed_at IS NULL) "
                    f"FROM {self._sql_ref(META, 'deletions')}")[1])).values()
            return {"tables": counts, "load_errors": load_errors, "deletions": done or 0,
                    "deletions_pending": pending or 0}

        return self._guard(run)

    def close(self) -> None:
        self.client.close()


EVENTS_T = struct(**dict(EVENTS_STREAM_COLUMNS))
