"""The edge side of serve's write-ahead spool (design: spool.py): each gunicorn worker appends
its accepted pings to its own segment file and group-commits them, one ``fdatasync`` per batch."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterator

from .base import RawStore, StoreError
from .local import LocalStore, fsync_dir, write_all
from .spool import HEAD, MAX_BODY, SPOOL, SUFFIX, encode_record

RECENT_KEYS = 100_000  # keys one worker remembers for in-window dedupe

log = logging.getLogger("gleanpipe.spool")


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
        self.error: BaseException | None = None


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
            fsync_dir(self.dir)  # the segment's name must survive a crash before any record is acked
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
        untouched = False  # a failed write left the segment as it was
        try:
            if self._fd is not None and (self._broken or self._size >= self.segment_bytes
                                         or time.monotonic() - self._opened >= self.segment_seconds):
                self._close_segment()
            if self._fd is None:
                self._open()
            data = b"".join(batch.records)
            try:
                write_all(self._fd, data)
            except OSError:
                untouched = os.fstat(self._fd).st_size == self._size
                raise
            self._size += len(data)
            self.syncs += 1
            os.fdatasync(self._fd)
            if os.fstat(self._fd).st_nlink == 0:  # deleted (the store removed under serve): the reader never sees it
                raise FileNotFoundError(errno.ENOENT, "the spool file was deleted while in use")
        except OSError as exc:
            batch.error = exc
            # Part of a record in the file (skipped by its checksum once this writer is gone), or a
            # sync that failed: a fresh segment for what follows. A write that left nothing (a full
            # disk): the same one, or a disk that stays full got an empty segment per batch.
            self._broken = self._fd is not None and not untouched

    def _run(self) -> None:
        batch = None
        try:
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
                    batch = None
                if not woken and self._fd is not None and time.monotonic() - self._opened >= self.segment_seconds:
                    self._close_segment()
        except BaseException as exc:
            self._stopped_by(exc, batch)
            if not isinstance(exc, Exception):
                raise

    def _stopped_by(self, exc: BaseException, batch: _Batch | None) -> None:
        """The committer thread ends on an error ``_commit`` does not answer itself (os.close of a
        segment, anything not an OSError): every request waiting on it gets that error (503)
        instead of waiting for ever, and the next ``enqueue`` starts a new committer, which
        writes to a fresh segment (this one may hold part of a record)."""
        log.error("the spool's committer stopped on an unexpected error; its waiting requests get 503, "
                  "the next one starts it again", exc_info=exc)
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass  # Linux frees the descriptor even when close reports an error
        with self._lock:
            waiting, self._batch = [b for b in (batch, self._batch) if b is not None], None
            self._wake.acquire(blocking=False)  # asleep, whatever it was: the next enqueue wakes the new one
            self._idle, self._thread, self._closing = True, None, False
        for b in waiting:
            b.error, b.records = exc, []
            b.gate.release()

    def append(self, key: str, data: bytes) -> None:
        """Queue one record; return once it is on disk. Raises StoreError (answer 503)."""
        self.wait(self.enqueue(key, data))

    @staticmethod
    def wait(batch: _Batch) -> None:
        """Return once ``batch`` is on disk; raise StoreError if its write or sync failed."""
        batch.gate.acquire()  # opened by the committer once the batch is synced
        batch.gate.release()  # pass it on to the next request of the batch
        if batch.error is not None:
            error = batch.error
            text = getattr(error, "strerror", None) or str(error) or type(error).__name__
            raise StoreError(f"cannot write the spool: {text}") from error

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

    def __init__(self, local: LocalStore, segment_bytes: int, segment_seconds: float,
                 recent_keys: int = RECENT_KEYS):
        self.local = local
        self.recent_keys = recent_keys  # how many keys the in-window dedupe remembers
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
                if len(self._recent) > self.recent_keys:
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
