"""Write-ahead spool for `gleanpipe serve`: many pings per fsync instead of one file each.

Why: on a VM disk one fsynced file per ping (create, write, fsync, link, directory fsyncs)
costs about 1 ms and caps submit at about 1,000 pings/s. Appending to one file and sharing
one ``fdatasync`` between the requests that arrived meanwhile costs the same for 1 ping or 8.

Edge side (each gunicorn worker process): ``SpoolWriter`` appends framed records to its own
segment file ``<store>/.spool/<ns>-<pid>-<rand>.seg`` and group-commits. A request adds its
record to the open batch and waits on the batch's gate; the worker's committer takes the
whole batch, writes it with one ``write``, runs one ``fdatasync`` and opens the gate. Records
that arrive meanwhile form the next batch. ``append`` returns only once the fdatasync after
its record's write has returned, so a 200 always means "on disk". serve runs gevent workers:
there the committer is a greenlet and the write + fdatasync run in gevent's thread pool, so
the event loop keeps serving other requests during a sync (threads work the same way). The
writer holds an exclusive ``flock`` on its segment while it may still append to it; the
kernel drops it when the process dies, which is how the reader knows a segment is finished.
Segments rotate after GLEANPIPE_SPOOL_SEGMENT_BYTES or GLEANPIPE_SPOOL_SEGMENT_SECONDS; an
idle committer also lets its segment go once it is that old, so the reader can retire it.

Record framing (little endian): ``b"GPS1"``, u32 body length, u32 crc32 of the body,
then the body: u16 key length, key (ASCII), object bytes. A record cut short by a crash
(never acknowledged: its fdatasync had not returned) fails its length or checksum and is
skipped once its writer is gone.

Loader side (the serve process): ``SpoolReader`` tails every segment, runs one
``fdatasync`` on what it read (a record is readable before its writer's fdatasync returns),
turns each record into the normal create-only object (tmp file + ``os.link``, no fsync per
object) and hands the key to the loader. A segment is deleted only when its writer is gone,
every record in it was loaded, and one ``syncfs`` made the objects durable. After a crash the
remaining segments are read again from the start; that is idempotent (create-only objects,
loads keyed by document id).

Dedupe: the edge answers "duplicate" without spooling when the object already exists or
when the same worker spooled the key recently; a copy that arrives while that worker is still
writing the first one waits for its batch and gets its outcome. Two copies of one document
id that reach different workers before the first is materialised are both spooled; the
second is dropped by the create-only link when it is materialised (first written wins).
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import struct
import threading
import time
import uuid
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import orjson

from .. import rawobject
from .base import ObjectMissing, RawStore, StoreError
from .local import LocalStore, _fsync_dir, write_all

log = logging.getLogger("gleanpipe.spool")

SPOOL = ".spool"
SUFFIX = ".seg"
MAGIC = b"GPS1"
HEAD = struct.Struct("<4sII")  # magic, body length, crc32(body)
KEYLEN = struct.Struct("<H")
MAX_BODY = 64 * 1024 * 1024  # largest record body the reader takes as intact (see largest_payload)
NEW_GRACE_NS = 60 * 10**9  # a segment still being created is at most this old
READ_CHUNK = 4 * 1024 * 1024  # bytes of a segment read per look
RECENT_KEYS = 100_000  # keys one worker remembers for in-window dedupe
_RECEIPT = "spool:"


def largest_payload(max_uri_bytes: int, max_header_bytes: int) -> int:
    """Largest ping payload whose record stays within MAX_BODY, with room for the metadata the
    edge's own limits allow: 7 times the path (itself, the app id, doc type, version, document
    id and key derived from it, and the record's own copy of the key) and 7 header values (the
    kept ones and Content-Encoding), each byte JSON-escaped to at most 6, plus 4 KiB for the
    fixed fields. `serve` refuses a GLEANPIPE_MAX_PAYLOAD_BYTES above it with the spool on."""
    meta = 6 * (7 * max_uri_bytes + 7 * max_header_bytes) + 4096
    return MAX_BODY - KEYLEN.size - meta


def encode_record(key: str, data: bytes) -> bytes:
    k = key.encode("ascii")
    body = KEYLEN.pack(len(k)) + k + data
    return HEAD.pack(MAGIC, len(body), zlib.crc32(body)) + body


def decode_records(buf: bytes, start: int = 0) -> Iterator[tuple[int, int, str, bytes]]:
    """(record start, record end, key, data) for each intact record from ``start`` on.

    Stops at the first spot that is not an intact record; the caller tells a torn tail
    from a record still being written by whether the writer is alive.
    """
    pos, n = start, len(buf)
    while pos + HEAD.size <= n:
        magic, length, crc = HEAD.unpack_from(buf, pos)
        end = pos + HEAD.size + length
        if magic != MAGIC or length < KEYLEN.size or length > MAX_BODY or end > n:
            return
        body = buf[pos + HEAD.size:end]
        if zlib.crc32(body) != crc:
            return
        (klen,) = KEYLEN.unpack_from(body)
        if KEYLEN.size + klen > length:
            return
        try:
            key = body[KEYLEN.size:KEYLEN.size + klen].decode("ascii")
        except UnicodeDecodeError:
            return
        yield pos, end, key, body[KEYLEN.size + klen:]
        pos = end


# --- edge side ------------------------------------------------------------------------------


def _off_the_loop(fn):
    """``fn`` itself, or under gevent (gunicorn's gevent worker) ``fn`` run in gevent's pool of
    real threads, so the event loop serves other requests while it blocks."""
    try:
        from gevent import monkey
    except ImportError:
        return fn
    if not monkey.is_module_patched("threading"):
        return fn
    import gevent

    def call(*args):
        # The outcome comes back as a value: gevent's pool prints the traceback of an exception
        # that escapes it (a StoreError the caller answers 503 for was logged as a crash).
        ok, value = gevent.get_hub().threadpool.apply(_outcome, (fn, args))
        if ok:
            return value
        raise value

    return call


def _outcome(fn, args) -> tuple[bool, object]:
    try:
        return True, fn(*args)
    except Exception as exc:  # noqa: BLE001 - handed back to the caller, which raises it
        return False, exc


class _Batch:
    """Records that one write + one fdatasync will make durable. ``gate`` is held until then."""

    __slots__ = ("records", "gate", "error")

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.gate = threading.Lock()
        self.gate.acquire()
        self.error: OSError | None = None


class SpoolWriter:
    """One process's append-only segment, group-committed by a committer thread (see module doc).

    ``append`` adds its record to the open batch and blocks on the batch's gate. The
    committer thread takes the whole batch, writes it with one ``write`` and runs one
    ``fdatasync``, then opens the gate; each woken request thread passes the gate on to the
    next, so a batch of n wakes n threads one after the other instead of all at once. While
    a sync runs, new records gather in the next batch. Request threads never touch the file.
    """

    def __init__(self, directory: str | os.PathLike, segment_bytes: int, segment_seconds: float):
        self.dir = str(directory)
        self.segment_bytes, self.segment_seconds = segment_bytes, segment_seconds
        self.syncs = 0  # fdatasync calls (for tests and profiling)
        self._reset()
        me = weakref.ref(self)  # a forked child starts with no thread and no segment of its own
        os.register_at_fork(after_in_child=lambda: (w := me()) is not None and w._reset())

    def _reset(self) -> None:
        """Fresh state (also in a forked child: the parent's thread and segment are not its own)."""
        self._lock = threading.Lock()  # guards _batch, _idle, _closing
        self._wake = threading.Lock()  # the committer sleeps on it while there is nothing to write
        self._wake.acquire()
        self._batch: _Batch | None = None
        self._idle = True
        self._closing = False
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._opened = 0.0
        self._size = 0
        self._broken = False  # a write or fdatasync failed: this segment takes no more records

    def _open(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        name = os.path.join(self.dir, f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}")
        # Locked before it gets its .seg name: a reader must never see it unlocked while in use.
        fd = os.open(name + ".new", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(name + ".new", name)
            _fsync_dir(self.dir)  # the segment's name must survive a crash before any record is acked
        except OSError:
            os.close(fd)
            try:
                os.unlink(name + ".new")
            except OSError:
                pass
            raise
        self._fd, self._opened, self._size, self._broken = fd, time.monotonic(), 0, False

    def _close_segment(self) -> None:
        """Committer thread only: every record in it is synced (or failed), so just let it go."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # releases the flock: the reader may now finish the segment

    def _commit(self, batch: _Batch) -> None:
        """Committer thread only: write and sync one batch; a failure goes to its requests."""
        try:
            if self._fd is not None and (self._broken or self._size >= self.segment_bytes
                                         or time.monotonic() - self._opened >= self.segment_seconds):
                self._close_segment()
            if self._fd is None:
                self._open()
            data = b"".join(batch.records)
            try:
                write_all(self._fd, data)
            finally:
                self._size += len(data)
            self.syncs += 1
            os.fdatasync(self._fd)
        except OSError as exc:
            # A partial write is skipped by its checksum; start a fresh segment for what follows.
            batch.error = exc
            self._broken = self._fd is not None

    def _run(self) -> None:
        commit = _off_the_loop(self._commit)  # the worker patched (or not) before its first ping
        while True:
            # Asleep until a batch opens; wakes after segment_seconds to let an idle segment go.
            woken = self._wake.acquire(timeout=max(0.05, self.segment_seconds))
            while True:
                with self._lock:
                    batch, self._batch = self._batch, None
                    if batch is None:
                        self._idle = True
                        if self._closing:
                            self._close_segment()
                            self._thread, self._closing = None, False
                            return
                        break
                commit(batch)
                batch.records = []  # written: a batch stays referenced by the dedupe memory, its bytes need not
                batch.gate.release()
            if not woken and self._fd is not None and time.monotonic() - self._opened >= self.segment_seconds:
                self._close_segment()

    def append(self, key: str, data: bytes) -> None:
        """Queue one record; return once it is on disk. Raises StoreError (answer 503)."""
        self.wait(self.enqueue(key, data))

    @staticmethod
    def wait(batch: _Batch) -> None:
        """Return once ``batch`` is on disk; raise StoreError if its write or sync failed."""
        batch.gate.acquire()  # opened by the committer once the batch is synced
        batch.gate.release()  # pass it on to the next request of the batch
        if batch.error is not None:
            raise StoreError(f"cannot write the spool: {batch.error.strerror or batch.error}") from batch.error

    def enqueue(self, key: str, data: bytes) -> _Batch:
        """Add one record to the open batch and return that batch (``wait`` on it)."""
        record = encode_record(key, data)
        body = len(record) - HEAD.size
        if body > MAX_BODY:  # the reader would take it for damage: never acknowledge it
            raise StoreError(f"a spool record holds at most {MAX_BODY} bytes, this one has {body}")
        with self._lock:
            while self._closing:  # close() is stopping the committer: start afresh once it is gone
                thread = self._thread
                self._lock.release()
                try:
                    thread.join()
                finally:
                    self._lock.acquire()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gleanpipe-spool", daemon=True)
                self._thread.start()
            batch = self._batch
            if batch is None:
                batch = self._batch = _Batch()
            batch.records.append(record)
            if self._idle:
                self._idle = False
                self._wake.release()
        return batch

    def close(self) -> None:
        """Commit what is queued, release the segment and stop the committer thread."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            self._closing = True
            if self._idle:
                self._idle = False
                self._wake.release()
        thread.join()


class SpoolingStore(RawStore):
    """What serve's HTTP workers write through: pings go to the spool, the rest to the folder.

    Contract (differs from the base class in one point, the dedupe answer):
    - ``put_new(key, data)`` with ``notify=True`` returns only once the record is fdatasynced
      in the spool. The object appears under ``key`` when serve's loader materialises it
      (normally within GLEANPIPE_LOAD_INTERVAL_MS), and after a crash when serve starts.
    - It returns False when the object already exists or this worker spooled the key
      recently; otherwise True, even when another worker spooled the same key moments ago
      (that copy is dropped when materialised: one object, one row). A copy of a key this
      worker is still writing waits for that write, and gets its outcome: False once it is
      synced, StoreError if it failed. It never returns False for a record not yet on disk.
    - ``notify=False`` writes (rejected pings under ``errors/``, debug index entries) go
      straight to the folder, fsynced, as in ``LocalStore``. Like the spool's commits they run
      in gevent's thread pool under gevent, so a flood of rejected pings does not stop the
      worker's event loop for each of their fsyncs.
    """

    def __init__(self, local: LocalStore, segment_bytes: int, segment_seconds: float):
        self.local = local
        self.url = local.url
        self.writer = SpoolWriter(local.root / SPOOL, segment_bytes, segment_seconds)
        self._recent: OrderedDict[str, _Batch] = OrderedDict()  # key -> the batch that wrote it
        self._recent_lock = threading.Lock()
        self._put_direct = None

    def put_new(self, key: str, data: bytes, *, notify: bool = True) -> bool:
        if not notify:
            if self._put_direct is None:  # chosen on first use: the worker patches (or not) before that
                self._put_direct = _off_the_loop(lambda k, d: self.local.put_new(k, d, notify=False))
            return self._put_direct(key, data)
        if os.path.lexists(self.local.key_path(key)):  # key_path validates the key
            return False
        with self._recent_lock:
            batch = self._recent.get(key)
            new = batch is None
            if new:
                batch = self._recent[key] = self.writer.enqueue(key, data)
                if len(self._recent) > RECENT_KEYS:
                    self._recent.popitem(last=False)
        # A copy of a key this worker is still writing waits for that write: "duplicate" only
        # once the first copy is on disk, and the first copy's error (503) if it is not.
        try:
            self.writer.wait(batch)
        except StoreError:
            with self._recent_lock:
                if self._recent.get(key) is batch:  # the next copy writes it afresh
                    del self._recent[key]
            raise
        return new

    def get(self, key: str) -> bytes:
        return self.local.get(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.local.list(prefix)

    def delete(self, key: str) -> None:  # housekeeping of non-ping objects: the folder's own
        self.local.delete(key)


# --- loader side ----------------------------------------------------------------------------


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
        self._started = time.time_ns()
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
        """Records spooled and not yet acknowledged (materialised or not), for `status`."""
        with self.lock:
            self._scan(10**9)
            return len(self._queue)

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
        names = sorted(n for n in listing if n.endswith(SUFFIX))
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
                # A segment older than this reader may have been materialised (partly) by a
                # serve that crashed before syncfs: its objects get checked, not trusted.
                seg = self._segments[name] = _Segment(name, replayed=int(name[:20]) < self._started)
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
        log.warning("spool segment %s: skipped %d bytes that are not an intact record at offset %d "
                    "(a write cut short by a crash, never acknowledged)", seg.name, skipped, seg.offset)
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
            # Linked by a serve that crashed before its syncfs: the file may be empty or cut.
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
                self.stats["segments_deleted"] += 1
            _fsync_dir(self.dir)
        except OSError as exc:
            log.warning("could not retire spool segments yet: %s", exc)


def spooled_records(local: LocalStore) -> int:
    """Pings in the spool files left in a store that are not objects yet (read-only: for
    `status` while serve is not running). Serve reads every spool file again when it starts.
    A record whose object exists was loaded right after it was written out (bar one that a crash
    caught in between, a moment's window), so it does not count as waiting."""
    keys = set()
    for path in sorted((local.root / SPOOL).glob(f"*{SUFFIX}")):
        try:
            keys.update(key for _, _, key, _ in decode_records(path.read_bytes()))
        except FileNotFoundError:
            pass
    return sum(1 for key in keys if not os.path.lexists(local.key_path(key)))
