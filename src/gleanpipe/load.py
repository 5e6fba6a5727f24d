"""load: object keys in, rows in the warehouse out. The same code behind every trigger
(the CloudEvent function, `serve`'s in-process trigger, `replay`).

- keys outside ``raw/`` (the error area, anything else in the bucket) are ignored;
- an object that cannot become a row is recorded in the ``_gleanpipe.errors`` table;
- a missing object is reported, not an error (a write that never finished);
- warehouse or store trouble raises, so the trigger retries.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

import orjson

from . import rawobject
from .naming import DocumentPath, is_reserved_ping, parse_key
from .storage import ObjectMissing, RawStore
from .transform import DELETION_REQUEST, PingRow, TransformError, submission_time_problem, transform
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
        if is_reserved_ping(path.doc_type):
            out.errors.append(LoadError(key, "reserved", f"the ping name {path.doc_type} is the name of the table that "
                                        "holds every ping's events (events_stream): it cannot be loaded; the ping "
                                        "stays in the raw store (rename the ping in pings.yaml)",
                                        path.app_id, path.doc_type, path.document_id))
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
            error, fallback = failed(key, data, path, exc.error_type, str(exc))
            out.errors.append(error)
            if fallback:
                out.rows.append(fallback)
    return out


DELETION_NOTE = "the deletion was carried out all the same, from the client id alone"


def failed(key: str, data: bytes, path: DocumentPath, error_type: str, reason: str) -> tuple[LoadError, PingRow | None]:
    """The load error of an object that cannot become a row, and for a deletion request the row
    that still carries out its deletion (``deletion_only``), which the error then mentions."""
    fallback = deletion_only(key, data, path)
    note = f" ({DELETION_NOTE})" if fallback else ""
    return LoadError(key, error_type, f"{reason}{note}", path.app_id, path.doc_type, path.document_id), fallback


def deletion_only(key: str, data: bytes, path: DocumentPath) -> PingRow | None:
    """For a deletion-request ping whose row cannot be made or stored (a hostile value in some
    field): a row with its client id alone, so the deletion happens all the same. A deletion
    must not hang on a field it does not need: a metadata line without a usable
    submission_timestamp gives the time of this load instead. None for any other ping, or without
    a client id."""
    if path.doc_type != DELETION_REQUEST:
        return None
    try:
        meta, payload = rawobject.decode(data)
        client_id = (orjson.loads(payload).get("client_info") or {}).get("client_id")
        if not isinstance(client_id, str) or not client_id:
            return None
        if submission_time_problem(meta.get("submission_timestamp")):  # then the request's time is its load's
            now = datetime.now(timezone.utc).isoformat(timespec="microseconds")[:26] + "Z"
            meta = {**meta, "submission_timestamp": now}
        row = transform(key, rawobject.encode(meta, orjson.dumps({"client_info": {"client_id": client_id}})), path)
        return dataclasses.replace(row, stripped=True)  # its object's load error stays (see warehouse write)
    except Exception:  # noqa: BLE001 - nothing to delete with: the object's own error is recorded already
        return None


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

    def _get(self, key: str) -> bytes:
        try:
            return self.store.get(key)
        except ObjectMissing:
            return b""

    def _write(self, rows: list[PingRow], errors: list[LoadError], whole: bool = True) -> WriteResult:
        """Write a batch; if the warehouse refuses it, write each half, halving again a half that is
        refused, down to the refused rows themselves: k of them among n rows cost about 2k log2(n)
        writes, where one write per row cost n (7 ms each in DuckDB: a few bad pings slowed every batch)."""
        try:
            return self.warehouse.write(rows, errors)
        except RowDataError as exc:
            if not rows:
                raise
            if len(rows) == 1:
                return self._refused(rows[0], errors, exc)
            if whole:
                log.warning("batch of %d refused (%s); looking for the refused rows by halves", len(rows), exc)
            half = len(rows) // 2
            return self._write(rows[:half], errors, False).add(self._write(rows[half:], [], False))

    def _refused(self, r: PingRow, errors: list[LoadError], exc: RowDataError) -> WriteResult:
        """A row the warehouse refused: a load error (a deletion request still deletes)."""
        err, fallback = failed(r.key, self._get(r.key) if r.is_deletion_request else b"", r.path, "warehouse", str(exc))
        if fallback:
            try:
                return self.warehouse.write([fallback], errors + [err])
            except RowDataError:
                err.error_message = str(exc)
        return self.warehouse.write([], errors + [err])
