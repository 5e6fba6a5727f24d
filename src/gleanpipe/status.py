"""What `gleanpipe status` reports beside the warehouse's own counts (``Warehouse.status``): the
pings waiting to load and the pings refused at submit, read from the store. While serve runs,
its admin API answers the waiting part itself (serve.py: the spool's backlog)."""

from __future__ import annotations

from .naming import ERROR_PREFIX
from .storage.base import RawStore
from .storage.local import LocalStore
from .storage.spool_reader import spooled_keys
from .warehouse.base import Warehouse


def waiting_to_load(store: LocalStore, wh: Warehouse) -> dict:
    """``pending`` with serve stopped: what serve will load when it starts (the store's inbox
    receipts and every record of its write-ahead spool, storage/spool.py) that is not in the
    warehouse yet. An object written out is no sign of a load: serve writes out a whole batch
    before it loads it."""
    keys = {key for _, key in store.pending(1_000_000)} | spooled_keys(store)
    try:
        return {"pending": wh.not_loaded(keys)}
    except NotImplementedError:  # BigQuery: every one of them, and say that some may be rows already
        return {"pending": len(keys), "pending_note": f"at most: not checked against {wh.url}, so some "
                "may be rows already"}


def rejected_by_type(store: RawStore) -> dict[str, int]:
    """Pings refused at submit, per error type, from the error store's keys
    (``errors/<day>/<error_type>/<uuid>.json``, http_edge.py)."""
    rejected: dict[str, int] = {}
    for key in store.list(ERROR_PREFIX):
        parts = key.split("/")
        if len(parts) == 4:
            rejected[parts[2]] = rejected.get(parts[2], 0) + 1
    return rejected
