"""The loader side of serve's write-ahead spool (design: spool.py): serve's view of the store,
which turns the workers' spool records into raw objects and retires finished segments."""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import orjson

from .. import rawobject
from .base import ObjectMissing, RawStore, StoreError
from .local import LocalStore, fsync_dir
from .spool import HEAD, MAGIC, MAX_BODY, SPOOL, SUFFIX, decode_records, segment_files

log = logging.getLogger("gleanpipe.spool")

NEW_GRACE_NS = 60 * 10**9  # a segment still being created is at most this old
READ_CHUNK = 4 * 1024 * 1024  # bytes of a segment read per look
_RECEIPT = "spool:"
RETIRE_WARNING_S = 60.0


def _syncfs(path: str) -> None:
    """Flush every file of the file system holding ``path`` (Linux syncfs; os.sync elsewhere)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if getattr(libc, "syncfs", None) is None:
            os.sync()
        elif libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


class _Segment:
    __slots__ = ("name", "offset", "outstanding", "finished", "replayed")

    def __init__(self, name: str, replayed: bool):
        self.name, self.offset, self.outstanding, self.finished, self.replayed = name, 0, 0, False, replayed


class SpoolReader(RawStore):
    """Serve's view of the store: the folder, plus spool records turned into objects.

    ``pending`` materialises new spool records and returns them (receipts ``spool:...``)
    together with the folder's inbox receipts; ``ack`` forgets them and deletes finished
    segments after one syncfs. Thread-safe (the loader thread and the admin API call it).
    """

    def __init__(self, local: LocalStore):
        self.local = local
        self.url = local.url
        self.dir = local.root / SPOOL
        try:
            self.dir.mkdir(exist_ok=True)
        except OSError as exc:  # FileExistsError: a file by that name
            raise StoreError(f"cannot create spool folder {self.dir}: "
                             f"{'a file has that name' if isinstance(exc, FileExistsError) else exc.strerror or exc}") from exc
        self.lock = threading.RLock()
        self._segments: dict[str, _Segment] = {}
        self._queue: OrderedDict[str, tuple[str, float]] = OrderedDict()  # receipt -> (key, materialised at)
        self._seq = 0
        # Segments already there were left by an earlier serve, which may have crashed before its
        # syncfs: their objects get checked, not trusted. Told by what is there now, not by the
        # time in their names: after a power cut the clock may have stepped back.
        try:
            self._leftover = set(segment_files(self.dir)[0])
        except OSError as exc:
            raise StoreError(f"cannot read spool folder {self.dir}: {exc.strerror or exc}") from exc
        self._retire_warned = -RETIRE_WARNING_S
        self._strays: set[str] = set()  # names in the spool folder that are no segment (warned about once)
        self.stats = {"materialised": 0, "duplicates": 0, "repaired": 0, "torn_bytes": 0, "segments_deleted": 0}

    # RawStore: reads and direct writes go to the folder
    def put_new(self, key: str, data: bytes, *, notify: bool = True) -> bool:
        return self.local.put_new(key, data, notify=notify)

    def get(self, key: str) -> bytes:
        return self.local.get(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.local.list(prefix)

    def delete(self, key: str) -> None:
        self.local.delete(key)

    def pending(self, limit: int) -> list[tuple[str, str]]:
        with self.lock:
            if len(self._queue) < limit:
                self._scan(limit - len(self._queue))
            out = [(r, k) for r, (k, _) in list(self._queue.items())[:limit]]
        if len(out) < limit:
            out += self.local.pending(limit - len(out))
        return out

    def receipt_age(self, receipt: str) -> float:
        if not receipt.startswith(_RECEIPT):
            return self.local.receipt_age(receipt)
        with self.lock:
            item = self._queue.get(receipt)
        return time.monotonic() - item[1] if item else float("inf")

    def ack(self, receipts: list[str]) -> None:
        inbox = [r for r in receipts if not r.startswith(_RECEIPT)]
        if inbox:
            self.local.ack(inbox)
        with self.lock:
            for r in receipts:
                if r.startswith(_RECEIPT) and self._queue.pop(r, None) is not None:
                    seg = self._segments.get(r.split(":", 2)[1])
                    if seg is not None:
                        seg.outstanding -= 1
            self._retire()

    def backlog(self) -> int:
        """How many wait to be loaded, for `status`, counted without writing anything out: the
        records handed to the loader and not acknowledged, the records of the spool not read yet,
        and the inbox's receipts. (`status` took ``len(pending(1_000_000))``, which turned up to a
        million spool records into objects, holding the lock the loader and `replay` wait on.)"""
        with self.lock:  # only to take where the reading stands; the files are read without it
            queued = len(self._queue)
            read = {s.name: None if s.finished else s.offset for s in self._segments.values()}
        try:
            names = segment_files(self.dir)[0]
        except FileNotFoundError:
            names = []
        unread = sum(count_records(self.dir / n, read.get(n, 0)) for n in names if read.get(n, 0) is not None)
        return queued + unread + len(self.local.pending(sys.maxsize))

    # internals
    def _writer_gone(self, path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    def _scan(self, want: int) -> None:
        try:
            listing = os.listdir(self.dir)
        except FileNotFoundError:
            self.dir.mkdir(exist_ok=True)
            return
        names, strays = segment_files(self.dir, listing)
        for n in set(strays) - self._strays:
            log.warning("spool folder %s: %s is not a spool file (they are named <time>-<pid>-<random>%s); "
                        "left alone", self.dir, n, SUFFIX)
        self._strays = set(strays)
        for n in listing:  # a writer that died between creating and naming its segment: nothing in it
            if n.endswith(SUFFIX + ".new") and n[:20].isdigit() and \
                    time.time_ns() - int(n[:20]) > NEW_GRACE_NS and self._writer_gone(self.dir / n):
                try:
                    os.unlink(self.dir / n)
                except FileNotFoundError:
                    pass
        for name in names:
            if want <= 0:
                break
            seg = self._segments.get(name)
            if seg is None:
                seg = self._segments[name] = _Segment(name, replayed=name in self._leftover)
            if seg.finished:
                continue
            want = self._read(seg, want)
        self._retire()

    def _read(self, seg: _Segment, want: int) -> int:
        """Materialise up to ``want`` records of one segment; returns how many more are wanted."""
        path = self.dir / seg.name
        gone = self._writer_gone(path)  # checked before reading: no record can follow what we read
        while want > 0 and not seg.finished:
            size = READ_CHUNK
            while True:
                try:
                    with open(path, "rb") as f:
                        f.seek(seg.offset)
                        buf = f.read(size)
                        at_end, whole = len(buf) < size, next(decode_records(buf), None) is not None
                        if whole:
                            self._sync(f.fileno(), seg)
                except FileNotFoundError:
                    seg.finished = True
                    return want
                if at_end or whole or size > MAX_BODY:
                    break
                size *= 2  # one record larger than what was read
            pos, base = 0, seg.offset
            for _start, end, key, data in decode_records(buf):
                self._materialise(key, data, seg.replayed)  # may raise StoreError: what came before stays
                self._seq += 1
                self._queue[f"{_RECEIPT}{seg.name}:{base + end}:{self._seq}"] = (key, time.monotonic())
                seg.outstanding += 1
                pos, seg.offset = end, base + end
                want -= 1
                if want <= 0:
                    break
            if want <= 0:
                break
            if pos < len(buf) and gone and (at_end or pos == 0):
                self._resync(seg, buf[pos:], at_end)  # not an intact record, and nobody is writing it
            elif at_end and pos == len(buf) and gone:
                seg.finished = True
            elif pos == 0:
                break  # a record still being written: next time
        return want

    @staticmethod
    def _sync(fd: int, seg: _Segment) -> None:
        """Make what was read durable before any of it becomes an object. The reader sees a
        record as soon as its writer's ``write`` returns, before that writer's fdatasync has:
        an object made from it would make the edge answer "duplicate" to another copy, and a
        power cut could then take both the record and the object."""
        try:
            os.fdatasync(fd)
        except OSError as exc:
            raise StoreError(f"cannot sync spool segment {seg.name}: {exc.strerror or exc}") from exc

    def _resync(self, seg: _Segment, rest: bytes, at_end: bool) -> None:
        """The writer is gone and what follows is no intact record: a torn tail (crash while
        appending; that record was never acknowledged), or damage in the middle. Skip to the
        next intact record if any, else to the end."""
        at = rest.find(MAGIC, 1)
        while at != -1:
            if next(decode_records(rest, at), None) is not None:
                break
            at = rest.find(MAGIC, at + 1)
        skipped = len(rest) if at == -1 else at
        self.stats["torn_bytes"] += skipped
        if at == -1:  # the end of what was written: the last write was cut short
            log.warning("spool segment %s: skipped %d bytes that are not an intact record at offset %d "
                        "(a write cut short, by a crash or a full disk: never acknowledged)",
                        seg.name, skipped, seg.offset)
        else:  # intact records follow: the file was damaged after it was written
            log.error("spool segment %s: skipped %d damaged bytes at offset %d, between intact records: "
                      "the file was changed after it was written (a disk error?), and a ping that was "
                      "acknowledged may be lost", seg.name, skipped, seg.offset)
        seg.offset += skipped
        if at == -1 and at_end:
            seg.finished = True

    def _materialise(self, key: str, data: bytes, check_existing: bool) -> None:
        try:
            created = self.local.put_unsynced(key, data)
        except ValueError:  # an unsafe key cannot come from the edge; keep going, say so
            log.error("spool record with unsafe key %r skipped", key)
            return
        except OSError as exc:
            raise StoreError(f"cannot materialise {key} from the spool: {exc.strerror or exc}") from exc
        if created:
            self.stats["materialised"] += 1
            return
        self.stats["duplicates"] += 1
        if check_existing and not self._intact(key):
            # Written by a serve that crashed before its syncfs: the file may be empty or cut.
            log.warning("object %s was not intact after a crash; rewritten from the spool", key)
            self.local.replace_unsynced(key, data)
            self.stats["repaired"] += 1

    def _intact(self, key: str) -> bool:
        try:
            _, payload = rawobject.decode(self.local.get(key))
            orjson.loads(payload)
            return True
        except (ObjectMissing, rawobject.RawObjectError, orjson.JSONDecodeError):
            return False

    def _retire(self) -> None:
        done = [s for s in self._segments.values() if s.finished and s.outstanding == 0]
        if not done:
            return
        try:
            _syncfs(str(self.local.root))  # every object materialised so far is now durable
            for seg in done:
                try:
                    os.unlink(self.dir / seg.name)
                except FileNotFoundError:
                    pass
                del self._segments[seg.name]
                self._leftover.discard(seg.name)
                self.stats["segments_deleted"] += 1
            fsync_dir(self.dir)
        except OSError as exc:  # said once a minute: the loader tries again every few milliseconds
            if time.monotonic() - self._retire_warned >= RETIRE_WARNING_S:
                self._retire_warned = time.monotonic()
                log.warning("could not retire spool segments yet (tried again, said once a minute): %s", exc)


def segment_keys(path: Path, offset: int = 0) -> Iterator[str]:
    """The key of each intact record a segment holds from ``offset`` on, read a chunk at a time and
    kept nowhere. Damage between records is stepped over, as the reader does; a record still being
    written at the end is not there yet. A segment retired meanwhile ends the keys (its records
    were read and acknowledged)."""
    buf, end_of_file = b"", False
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while True:
                pos = 0
                for _, end, key, _ in decode_records(buf):
                    pos = end
                    yield key
                buf = buf[pos:]
                if buf and (end_of_file or len(buf) > HEAD.size + MAX_BODY):  # no record starts here
                    at = buf.find(MAGIC, 1)
                    buf = buf[at:] if at != -1 else b"" if end_of_file else buf[-len(MAGIC) + 1:]
                    continue
                if end_of_file:
                    return
                more = f.read(READ_CHUNK)
                buf, end_of_file = buf + more, not more
    except FileNotFoundError:
        return


def count_records(path: Path, offset: int) -> int:
    """How many intact records a segment holds from ``offset`` on (``segment_keys``)."""
    return sum(1 for _ in segment_keys(path, offset))


def spooled_keys(local: LocalStore) -> set[str]:
    """The keys of every record in the spool files left in a store (read-only: for `status` while
    serve is not running). Serve reads every spool file again when it starts and loads every
    record, whether or not its object was written out before it stopped: serve writes out a whole
    batch before loading it, so a crash often comes in between."""
    folder = local.root / SPOOL
    try:
        names = segment_files(folder)[0]
    except FileNotFoundError:
        return set()
    return {key for name in names for key in segment_keys(folder / name)}
