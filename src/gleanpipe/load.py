"""load: object keys in, rows in the warehouse out. The same code behind every trigger
(the CloudEvent function, `serve`'s in-process trigger, `replay`).

- keys outside ``raw/`` (the error area, anything else in the bucket) are ignored;
- an object that cannot become a row is recorded in the ``_gleanpipe.errors`` table;
- a missing object is reported, not an error (a write that never finished);
- warehouse or store trouble raises, so the trigger retries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .naming import parse_key
from .storage import ObjectMissing, RawStore
from .transform import PingRow, TransformError, transform
from .warehouse import LoadError, RowDataError, Warehouse, WriteResult

log = logging.getLogger(__name__)


@dataclass
class LoadResult(WriteResult):
    ignored: int = 0
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "inserted": self.inserted, "duplicates": self.duplicates, "skipped_deleted": self.skipped_deleted,
            "events": self.events, "deletions": self.deletions, "errors": self.errors,
            "ignored": self.ignored, "missing": len(self.missing),
        }


@dataclass
class Prepared:
    """Objects read and transformed, ready for one warehouse write."""

    rows: list[PingRow] = field(default_factory=list)
    errors: list[LoadError] = field(default_factory=list)
    ignored: int = 0
    missing: list[str] = field(default_factory=list)


def prepare(store: RawStore, keys: list[str]) -> Prepared:
    """Read and transform: the part of a load that needs no warehouse (and can run in parallel)."""
    out = Prepared()
    for key in keys:
        path = parse_key(key)
        if path is None:
            out.ignored += 1
            continue
        try:
            data = store.get(key)
        except ObjectMissing:
            log.info("object %s is not there (not written yet, or gone); nothing to load", key)
            out.missing.append(key)
            continue
        try:
            out.rows.append(transform(key, data, path))
        except TransformError as exc:
            out.errors.append(LoadError(key, exc.error_type, str(exc), path.app_id, path.doc_type, path.document_id))
    return out


class Loader:
    def __init__(self, store: RawStore, warehouse: Warehouse):
        self.store = store
        self.warehouse = warehouse

    def load_keys(self, keys: list[str]) -> LoadResult:
        return self.write(prepare(self.store, keys))

    def write(self, prepared: Prepared) -> LoadResult:
        result = LoadResult(ignored=prepared.ignored, missing=prepared.missing)
        result.add(self._write(prepared.rows, prepared.errors))
        return result

    def _write(self, rows: list[PingRow], errors: list[LoadError]) -> WriteResult:
        try:
            return self.warehouse.write(rows, errors)
        except RowDataError as exc:
            if len(rows) == 1:
                r = rows[0]
                err = LoadError(r.key, "warehouse", str(exc), r.path.app_id, r.path.doc_type, r.path.document_id)
                return self.warehouse.write([], errors + [err])
            log.warning("batch of %d refused (%s); loading one by one", len(rows), exc)
            total = self.warehouse.write([], errors) if errors else WriteResult()
            for r in rows:
                total.add(self._write([r], []))
            return total
