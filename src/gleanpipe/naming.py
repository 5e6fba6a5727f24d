"""Names: submit paths, object keys, datasets, tables and columns.

Every path segment is checked against a strict pattern here before it can reach a file
path, an object key or an SQL identifier; everything downstream builds names only from
a ``DocumentPath`` that passed these checks.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# Glean sends the app id with every char outside [A-Za-z0-9] turned into "-", lower-cased;
# we also accept "." and "_" so application ids typed by hand work, and upper case.
APP_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Upstream limit for ping names: 30 chars of [a-z0-9-_].
DOC_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,29}")
DOC_TYPE_RULE = "must be 1-30 chars of [a-z0-9_-], starting with a letter or digit"
VERSION_RE = re.compile(r"[0-9]{1,4}")
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
SUPPORTED_VERSIONS = ("1",)
# events_stream (view) and events_stream_v1 (table) hold one row per event of every ping of an app:
# a ping of that name is stored (the SDK would delete it on a 4xx) but not loaded (load.prepare).
RESERVED_DOC_TYPES = frozenset({"events_stream"})


def is_reserved_ping(doc_type: str) -> bool:
    """Whether a ping of this name would be loaded into a table RESERVED_DOC_TYPES keeps for itself."""
    return doc_type.replace("-", "_") in RESERVED_DOC_TYPES

RAW_PREFIX = "raw/"
ERROR_PREFIX = "errors/"


class PathError(ValueError):
    """A submit path segment that does not pass its check."""


@dataclass(frozen=True)
class DocumentPath:
    app_id: str
    doc_type: str
    version: str
    document_id: str

    @property
    def key(self) -> str:
        """Object key: the same document id always maps to the same key (edge dedupe)."""
        return f"{RAW_PREFIX}{self.app_id}/{self.doc_type}/{self.version}/{self.document_id}.json"

    @property
    def dataset(self) -> str:
        return dataset_name(self.app_id)

    @property
    def table(self) -> str:
        return table_name(self.doc_type, self.version)

    @property
    def view(self) -> str | None:
        return view_name(self.doc_type)


def parse_segments(app_id: str, doc_type: str, version: str, document_id: str) -> DocumentPath:
    """Check each segment; raise PathError naming the first bad one."""
    if not APP_ID_RE.fullmatch(app_id):
        raise PathError("app id must be 1-100 chars of [A-Za-z0-9._-], starting with a letter or digit")
    if not DOC_TYPE_RE.fullmatch(doc_type):
        raise PathError(f"document type {DOC_TYPE_RULE}")
    if not VERSION_RE.fullmatch(version):
        raise PathError("document version must be a number")
    if version not in SUPPORTED_VERSIONS:
        raise PathError(f"document version {version} has no schema (supported: {', '.join(SUPPORTED_VERSIONS)})")
    if not UUID_RE.fullmatch(document_id):
        raise PathError("document id must be a UUID")
    return DocumentPath(app_id.lower(), doc_type, version, document_id.lower())


def parse_key(key: str) -> DocumentPath | None:
    """Inverse of DocumentPath.key; None for keys that are not raw pings."""
    if not key.startswith(RAW_PREFIX) or not key.endswith(".json"):
        return None
    parts = key[len(RAW_PREFIX) : -len(".json")].split("/")
    if len(parts) != 4:
        return None
    try:
        path = parse_segments(*parts)
    except PathError:
        return None
    return path if path.key == key else None


def dataset_name(app_id: str) -> str:
    """Mozilla's rule: lower-case, '-' and '.' -> '_' (org.example.toolbox -> org_example_toolbox)."""
    return app_id.lower().replace("-", "_").replace(".", "_")


def table_name(doc_type: str, version: str) -> str:
    """deletion-request, 1 -> deletion_request_v1."""
    return f"{doc_type.replace('-', '_')}_v{version}"


VERSIONED_RE = re.compile(r".*_v[0-9]+")
TABLE_RE = re.compile(r"[a-z0-9_]+_v[0-9]+")  # a table gleanpipe made: <ping>_v<version>


DERIVED_VIEWS = ("daily_active_clients", "events_daily", "metric_daily")  # each app's summaries (views.py)


def view_name(doc_type: str) -> str | None:
    """The deduplicated view over a ping's tables: Mozilla's user-facing name, the ping name
    (deletion-request -> deletion_request). None for a ping whose name ends like a table
    (``foo-v1`` -> ``foo_v1``, which is the table of ping ``foo``), or is one of the derived
    views' names (``events-daily``): it gets no view, and is read from its table."""
    name = doc_type.replace("-", "_")
    return None if VERSIONED_RE.fullmatch(name) or name in DERIVED_VIEWS else name


@functools.lru_cache(maxsize=65536)
def column_name(metric_id: str) -> str:
    """Metric id to column name: toolbox.launch_count -> toolbox_launch_count. Lower-cased, as
    Glean's ids are: DuckDB's and BigQuery's column and field names ignore case, so ``A.b`` and
    ``a.b`` would be two names for one column (see ``is_column_name`` for ids that make none)."""
    return metric_id.replace(".", "_").lower()


IDENT_RE = re.compile(r"[A-Za-z0-9_]{1,128}")


def is_column_name(name: str) -> bool:
    """Whether ``name`` can be a column (``quote_ident`` takes it)."""
    return IDENT_RE.fullmatch(name) is not None


class UnsafeIdentifier(ValueError):
    """A name ``quote_ident`` refuses."""


def quote_ident(name: str) -> str:
    """Quote an SQL identifier; refuses anything but [A-Za-z0-9_] so nothing can escape."""
    if not IDENT_RE.fullmatch(name):
        raise UnsafeIdentifier(f"not a safe identifier: {name!r}")
    return f'"{name}"'


def quote_bq_ident(name: str) -> str:
    """A BigQuery identifier in backticks, under the same check as ``quote_ident``."""
    quote_ident(name)
    return f"`{name}`"
