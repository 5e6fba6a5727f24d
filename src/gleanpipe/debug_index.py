"""The debug ping index: what `/debug` lists, kept small and bounded in the store itself.

For every request carrying ``X-Debug-ID`` that submit answers 200 or 4xx, the edge writes one
small entry under ``debug/<tag>/<received µs, 17 digits>-<8 hex>.json`` holding the tag, the
time, its ``status`` (accepted / duplicate / rejected), the path parts, the key of the object
that holds the ping (``raw/...`` or the ``errors/...`` record) and, for rejections, the
validation error. The viewer lists one tag's folder and never scans ``raw/``; the full JSON of
a ping is read from the object its entry names. Nothing here needs more from a store than
``put_new``/``get``/``list``/``delete``, so it works on any backend.

Bounds (settings): at most GLEANPIPE_DEBUG_MAX_PINGS entries per tag, oldest dropped first,
and none older than GLEANPIPE_DEBUG_RETENTION_HOURS. A write prunes its own tag; listing the
tags drops expired entries of every tag (so a tag that gets no more pings still expires).
Only the index entries are deleted: the pings stay in ``raw/`` and ``errors/`` as always.

Tags: Glean allows ``[a-zA-Z0-9-]{1,20}``. A request with any other X-Debug-ID value is still
stored or rejected on its own merits (a bad debug header is no reason to lose a ping); it is
listed under the reserved group ``_invalid`` (a name no valid tag can take), with the header
value it carried (cut to 100 characters), so whoever set it can see why their tag is not used.
Writing the index is best effort: the ping is already durable, so a failure is logged and the
answer to the client does not change.
"""

from __future__ import annotations

import base64
import logging
import re
import time
import uuid
import zlib
from dataclasses import dataclass

import orjson

from . import rawobject
from .storage import ObjectMissing, RawStore, StoreError

log = logging.getLogger(__name__)

DEBUG_PREFIX = "debug/"
TAG_RE = re.compile(r"[A-Za-z0-9-]{1,20}")
INVALID_GROUP = "_invalid"
ENTRY_ID_RE = re.compile(r"[0-9]{17}-[0-9a-f]{8}")
MAX_SHOWN_TAG = 100  # characters of an invalid X-Debug-ID value kept in its entry
MAX_ERROR_CHARS = 16_384  # of an error message kept in an entry (the error record has it all)
MAX_BODY_TEXT = 262_144  # bytes of a body the viewer shows: a larger one (JSON or not) is cut and shown as text


def group_of(tag: str | None) -> str | None:
    """The index folder for an X-Debug-ID value: the tag itself, INVALID_GROUP, or None (no header)."""
    if tag is None:
        return None
    return tag if TAG_RE.fullmatch(tag) else INVALID_GROUP


def is_group(name: str) -> bool:
    """Whether a name can be an index folder: a valid tag or INVALID_GROUP."""
    return name == INVALID_GROUP or TAG_RE.fullmatch(name) is not None


def _micros(key: str) -> int:
    return int(key.rsplit("/", 1)[1][:17])


@dataclass
class DebugIndex:
    store: RawStore
    max_per_tag: int
    retention_hours: int

    @classmethod
    def from_config(cls, config, store: RawStore) -> "DebugIndex":
        return cls(store, config.debug_max_pings, config.debug_retention_hours)

    @property
    def retention_us(self) -> int:
        return self.retention_hours * 3_600_000_000

    # --- writing (the submit edge) --------------------------------------------------

    def record(self, meta: dict, status: str, http_status: int, object_key: str | None,
               error_type: str | None = None, error_message: str | None = None, now_us: int | None = None) -> None:
        """Index one answered request that carried X-Debug-ID. Never raises."""
        tag = (meta.get("headers") or {}).get("x_debug_id")
        group = group_of(tag)
        if group is None:
            return
        now_us = now_us if now_us is not None else time.time_ns() // 1000
        entry_id = f"{now_us:017d}-{uuid.uuid4().hex[:8]}"
        entry = {
            "id": entry_id,
            "tag": tag[:MAX_SHOWN_TAG],
            "tag_valid": group != INVALID_GROUP,
            "received": meta.get("submission_timestamp"),
            "status": status,
            "http_status": http_status,
            "app_id": meta.get("app_id"),
            "doc_type": meta.get("doc_type"),
            "version": meta.get("version"),
            "document_id": meta.get("document_id"),
            "uri": meta.get("uri"),
            "object_key": object_key,
            "error_type": error_type,
            "error_message": error_message[:MAX_ERROR_CHARS] if error_message else error_message,
        }
        try:
            self.store.put_new(f"{DEBUG_PREFIX}{group}/{entry_id}.json", orjson.dumps(entry), notify=False)
        except (StoreError, ValueError, OSError) as exc:
            log.warning("could not index debug ping (tag %r): %s", tag[:MAX_SHOWN_TAG], exc)
            return
        try:
            self.prune(group, now_us)
        except (StoreError, ValueError, OSError) as exc:  # e.g. a store account that may only create objects
            log.warning("debug ping indexed (tag %r), but the tag's old entries could not be pruned: %s",
                        tag[:MAX_SHOWN_TAG], exc)

    def prune(self, group: str, now_us: int | None = None) -> int:
        """Drop this group's entries over the count limit or past retention; returns how many."""
        now_us = now_us if now_us is not None else time.time_ns() // 1000
        keys = self._keys(group)  # oldest first
        cutoff = now_us - self.retention_us
        drop = [k for k in keys if _micros(k) < cutoff]
        keep = keys[len(drop):]
        if len(keep) > self.max_per_tag:
            drop += keep[: len(keep) - self.max_per_tag]
        for key in drop:
            self.store.delete(key)  # a concurrent writer may have deleted it already: fine
        return len(drop)

    # --- reading (the viewer) -------------------------------------------------------

    def _keys(self, group: str) -> list[str]:
        prefix = f"{DEBUG_PREFIX}{group}/"
        return sorted(k for k in self.store.list(prefix)
                      if k.endswith(".json") and ENTRY_ID_RE.fullmatch(k[len(prefix):-5]))

    def tags(self, now_us: int | None = None) -> list[dict]:
        """Every group with entries: tag, count, newest entry time (µs); newest group first."""
        now_us = now_us if now_us is not None else time.time_ns() // 1000
        cutoff = now_us - self.retention_us
        groups: dict[str, list[int]] = {}
        for key in self.store.list(DEBUG_PREFIX):
            parts = key.split("/")
            if len(parts) != 3 or not parts[2].endswith(".json") or not ENTRY_ID_RE.fullmatch(parts[2][:-5]):
                continue
            if not is_group(parts[1]):
                continue
            micros = _micros(key)
            if micros < cutoff:
                try:
                    self.store.delete(key)
                except StoreError as exc:
                    log.warning("could not drop expired debug entry %s: %s", key, exc)
                continue
            groups.setdefault(parts[1], []).append(micros)
        out = [{"tag": g, "valid": g != INVALID_GROUP, "count": min(len(m), self.max_per_tag),
                "latest_us": max(m)} for g, m in groups.items()]
        return sorted(out, key=lambda t: t["latest_us"], reverse=True)

    def entry_ids(self, group: str, now_us: int | None = None) -> list[str]:
        """Ids of a group's live entries, newest first (at most the per-tag limit)."""
        now_us = now_us if now_us is not None else time.time_ns() // 1000
        cutoff = now_us - self.retention_us
        keys = [k for k in self._keys(group) if _micros(k) >= cutoff]
        return [k.rsplit("/", 1)[1][:-5] for k in reversed(keys)][: self.max_per_tag]

    def entry(self, group: str, entry_id: str) -> dict | None:
        if not ENTRY_ID_RE.fullmatch(entry_id) or not is_group(group):
            return None
        try:
            entry = orjson.loads(self.store.get(f"{DEBUG_PREFIX}{group}/{entry_id}.json"))
        except ObjectMissing:
            return None
        except orjson.JSONDecodeError:
            return {"id": entry_id, "tag": group, "status": "unreadable", "error_message": "index entry is not JSON"}
        return entry if isinstance(entry, dict) else None

    def detail(self, group: str, entry_id: str, max_payload_bytes: int) -> dict | None:
        """The entry plus the ping it names: metadata and the parsed JSON (or the text) of its body."""
        entry = self.entry(group, entry_id)
        if entry is None:
            return None
        out = {**entry, "metadata": None, "ping": None, "body_text": None, "note": None, "pending": False}
        key = entry.get("object_key")
        if not isinstance(key, str):
            out["note"] = "the request was refused before it was stored"
            return out
        try:
            data = self.store.get(key)
        except ObjectMissing:
            # serve answers 200 once a ping is in its write-ahead spool; the object follows within
            # moments (storage/spool.py). The page asks again for entries marked pending.
            out["pending"] = entry.get("status") != "rejected"
            out["note"] = f"{key} is not in the store (yet)"
            return out
        except (StoreError, ValueError) as exc:
            out["note"] = f"cannot read {key}: {exc}"
            return out
        if key.startswith("errors/"):
            try:
                record = orjson.loads(data)
                body = base64.b64decode(record.pop("body_base64", "") or "")
            except (orjson.JSONDecodeError, ValueError, AttributeError) as exc:
                out["note"] = f"error record {key} is unreadable: {exc}"
                return out
            out["metadata"] = record
            if record.get("body_truncated"):
                out["note"] = f"the body was cut to {record.get('body_bytes_kept')} bytes when it was kept"
            body, cut = _gunzip_for_view(body, max_payload_bytes)
            if cut:
                out["note"] = _join(out["note"], cut)
        else:
            try:
                out["metadata"], body = rawobject.decode(data)
            except rawobject.RawObjectError as exc:
                out["note"] = f"{key} is not a raw object: {exc}"
                return out
        if isinstance(body, str):  # what _gunzip_for_view says instead of a body
            out["body_text"] = body
            return out
        text = lambda: body[:MAX_BODY_TEXT].decode("utf-8", "replace")
        if len(body) > MAX_BODY_TEXT:  # a page shows up to max_per_tag of these at once: each is bounded
            out["note"] = _join(out["note"], f"the body has {len(body)} bytes: the first {MAX_BODY_TEXT} are shown, as text")
            out["body_text"] = text()
            return out
        try:
            out["ping"] = orjson.loads(body)
            orjson.dumps({"pings": [{"ping": out["ping"]}]})  # orjson reads 1024 levels but writes 254: as the API nests it
        except (orjson.JSONDecodeError, TypeError) as exc:  # not JSON, or too deep to write back
            out["ping"], out["body_text"] = None, text()
            if isinstance(exc, TypeError):
                out["note"] = _join(out["note"], "JSON nested too deep to show as a tree: shown as text")
        return out


def _join(note: str | None, more: str) -> str:
    return f"{note}; {more}" if note else more


def _gunzip_for_view(body: bytes, limit: int) -> tuple[bytes | str, str | None]:
    """A kept rejected body as the viewer shows it, and a note: gunzipped as the edge gunzips it
    (every member, bounded), or a line that says why it is not shown. A body cut short (the
    client's, or the error record's GLEANPIPE_MAX_ERROR_BYTES) gives what its whole members and
    its last, cut one decompress to, with a note that says so. Before, only the first member was
    read: a ping the edge took whole from several members showed as its first part, not JSON,
    and a body cut short showed what its first bytes decompress to (often nothing), unremarked."""
    if not body.startswith(b"\x1f\x8b"):
        return body, None
    from .http_edge import Rejected, decompress  # http_edge imports this module

    try:
        return decompress(body, limit), None
    except Rejected as exc:
        if exc.error_type == "payload_too_large":
            return f"(gzip body over {limit} bytes once decompressed: not shown)", None
        if exc.message != "truncated gzip body":
            return f"(gzip body that does not decompress: {exc.message}; {len(body)} bytes)", None
    out, rest = bytearray(), body
    while rest.startswith(b"\x1f\x8b") and len(out) < limit:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += d.decompress(rest, limit - len(out))
        except zlib.error:
            break
        if not d.eof:
            break
        rest = d.unused_data
    # the note does not say "as text": whole members before the cut one may hold the whole ping,
    # which is then shown as JSON
    return bytes(out), (f"the {len(body)}-byte gzip body ends before its gzip stream does: what it "
                        f"decompresses to ({len(out)} bytes) is shown")
