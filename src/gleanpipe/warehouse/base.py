"""The warehouse interface: typed rows in, SQL out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..transform import PingRow


META = "_gleanpipe"  # app datasets start with a letter or digit, so this never collides
DELETION_TABLE = "deletion_request_v1"
QUERY_PAGE_ROWS = 2_000  # rows a query result is fetched in at a time (read_query_pages)
EVENTS_KEY = "document_id, event_index"


def duckdb_path_refused(path: str) -> str | None:
    """Why ``path`` cannot be a DuckDB warehouse file, from the path alone (serve says it before it
    takes its lock and port: check_settings), or None."""
    if "?" in path:  # DuckDB reads what follows a "?" as connection options: a warehouse elsewhere
        return (f"the warehouse path {path} has a '?', which DuckDB takes for the start of its options; use a "
                "data dir (or GLEANPIPE_WAREHOUSE_URL) without one")
    return None


def in_pages(rows: list, page_rows: int) -> Iterator[list]:
    """``rows`` fetched whole, as read_query_pages gives them: lists of at most ``page_rows``."""
    for start in range(0, len(rows), page_rows):
        yield rows[start:start + page_rows]


def dedup_view_query(table_ref: str, key: str = "document_id") -> str:
    """The query of a deduplicated view: the first row (by submission_timestamp) per key.
    The same SQL runs on DuckDB and BigQuery (QUALIFY with a WHERE, as BigQuery wants)."""
    return (f"SELECT * FROM {table_ref} WHERE TRUE "
            f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY submission_timestamp) = 1")


@dataclass
class DeletionAttempt:
    """What `gleanpipe deletions` did for one pending deletion request."""

    dataset: str
    client_id: str
    document_id: str
    done: bool
    rows_deleted: int
    error: str | None = None


class WarehouseUnavailable(RuntimeError):
    """Transient: locked, down, out of space. The trigger must retry the load."""


class WarehouseClosing(RuntimeError):
    """A read was refused or stopped because the warehouse is being closed (serve is stopping)."""


class QueryFailed(ValueError):
    """A user's query the warehouse refused for its own fault (a table it names that is not there,
    a typo): what BigQuery's read_query raises, in one line; serve's admin API answers it 400."""


class RowDataError(ValueError):
    """A row the warehouse refused for its values; the loader writes the batch again by halves to find it."""


class DatasetUnusable(ValueError):
    """An app whose dataset name the warehouse cannot hold (a name DuckDB keeps for itself, or the
    warehouse file's own): the app's fault, not the warehouse's (`apps add`)."""


@dataclass
class LoadError:
    object_key: str
    error_type: str
    error_message: str
    app_id: str | None = None
    doc_type: str | None = None
    document_id: str | None = None


def first_per_document(rows) -> tuple[dict, int]:
    """(dataset, table) -> document id -> the batch's first row of it, and how many rows repeat a
    document id (two app ids that make one dataset, ``org.example`` and ``org-example``, can both
    send it): those count as duplicates, as a row already in the table does."""
    groups: dict = {}
    repeated = 0
    for r in rows:
        if groups.setdefault((r.path.dataset, r.path.table), {}).setdefault(r.path.document_id, r) is not r:
            repeated += 1
    return groups, repeated


def without_deleted(by_id: dict, deleted: set[str]) -> tuple[list, int]:
    """A table's rows to write (``by_id``, from first_per_document): the deletion requests, and the rows
    of clients with no deletion request in ``deleted``; and how many rows were left out for that."""
    batch = [r for r in by_id.values() if r.is_deletion_request or r.client_id not in deleted]
    return batch, len(by_id) - len(batch)


def needed_metrics(rows) -> dict[str, set[str]]:
    """Metric type -> the metric columns the rows have values for (what the table must have)."""
    needed: dict[str, set[str]] = {}
    for r in rows:
        for mtype, cols in r.metrics.items():
            needed.setdefault(mtype, set()).update(cols)
    return needed


def loaded_keys(groups: dict) -> list[str]:
    """The object keys a write of ``groups`` loads: their recorded load errors go. A stripped
    deletion row is not its object loaded (that object's error stays)."""
    return [r.key for by_id in groups.values() for r in by_id.values() if not r.stripped]


@dataclass
class WriteResult:
    inserted: int = 0
    duplicates: int = 0
    skipped_deleted: int = 0
    events: int = 0
    deletions: int = 0
    errors: int = 0
    tables: set[str] = field(default_factory=set)

    def add(self, other: "WriteResult") -> "WriteResult":
        for name in ("inserted", "duplicates", "skipped_deleted", "events", "deletions", "errors"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.tables |= other.tables
        return self


class Warehouse(ABC):
    url: str

    @abstractmethod
    def write(self, rows: list[PingRow], errors: list[LoadError]) -> WriteResult:
        """Insert rows (once per document_id), run deletion requests, record errors; atomically."""

    @abstractmethod
    def query(self, sql: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
        """Run SQL; (column names, rows)."""

    def read_query(self, sql: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
        """``query`` for SQL from users, where the backend can make it read-only (DuckDB does)."""
        return self.query(sql, params)

    def read_query_pages(self, sql: str, params: list | None = None,
                         page_rows: int = QUERY_PAGE_ROWS) -> Iterator[list]:
        """``read_query`` a page at a time: the column names first, then lists of at most
        ``page_rows`` rows. Here the whole result is fetched first; DuckDB fetches page by page."""
        columns, rows = self.read_query(sql, params)
        yield columns
        yield from in_pages(rows, page_rows)

    @abstractmethod
    def status(self) -> dict:
        """Row counts per table and error/deletion counts."""

    @abstractmethod
    def retry_deletions(self) -> list[DeletionAttempt]:
        """Try every deletion request still pending again; each stays pending until it succeeds."""

    def not_loaded(self, keys: set[str]) -> int:
        """How many documents of these object keys are neither a row in their table nor a recorded
        load error: what a load of them would still add (`status` with serve stopped)."""
        raise NotImplementedError(f"{type(self).__name__} cannot check object keys against its tables")

    def ensure_columns(self, tables: dict[tuple[str, str], dict[str, set[str]]]) -> list[str]:
        """Create ping tables and metric columns ahead of data (app definitions); returns what was added."""
        raise NotImplementedError(f"{type(self).__name__} cannot pre-create columns")

    def execute(self, statements: list[tuple[str, list | None]]) -> None:
        """Run statements in one transaction (gleanpipe's own tables)."""
        raise NotImplementedError(f"{type(self).__name__} cannot run statements")

    def refresh_views(self) -> None:
        """Rebuild the derived views (views.py), where the backend has them."""

    def close(self) -> None:
        pass
