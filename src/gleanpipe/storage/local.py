"""``file://PATH``: a local folder as the bucket.

Durability: each object is written to a temporary file and fsynced, then hard-linked into
place with ``os.link``, which fails if the name exists (atomic create-only), and the
directory is fsynced before ``put_new`` returns. Directory fsyncs are group-committed:
threads that linked names at the same time share one fsync per directory (``GroupSync``),
which is what lets the edge take more pings per second than the disk takes fsyncs.

Notifications: before the object is linked into place, it is also linked into
``.inbox/`` under a time-ordered name. The receipt is removed again only if the object was
never linked (a later failure, such as a folder fsync, keeps it: a retry gets "duplicate").
The loader drains the inbox and removes entries once loaded, so an object stored but not yet
loaded is found again after a restart.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from .base import ObjectMissing, RawStore, StoreError, check_key, is_safe_key
INBOX = ".inbox"
TMP = ".tmp"
_SEP = "+"  # never in a key, so "<receipt-stamp>+<key with / as :>" splits cleanly


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may take fewer bytes than it was given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# In serve's gevent workers, os.close is gevent's: it defers closing anything that is not a
# regular file (a directory, here) to the event loop, through one table shared by all threads.
# From gevent's thread pool (where the spool commits run) that races and fails now and then
# with EBADF. A directory fd opened only to fsync it never has watchers: close it at once.
try:
    from posix import close as _close_now
except ImportError:  # not a POSIX system
    _close_now = os.close


def fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        _close_now(fd)


class GroupSync:
    """Group commit of directory fsyncs across the threads of one process.

    A caller adds its directories and waits until a round that started after that has
    fsynced them. The first waiter leads a round (fsyncs everything pending, outside the
    lock); the others wait and are covered by that round or the next one.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._started = 0
        self._completed = 0
        self._leading = False
        self._failed: dict[int, OSError] = {}

    def sync(self, dirs) -> None:
        with self._cond:
            self._pending.update(dirs)
            mine = self._started + 1  # the first round to start from now on covers my dirs
            while self._completed < mine:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                self._started += 1
                round_, batch, self._pending = self._started, self._pending, set()
                error = None
                self._cond.release()
                try:
                    for d in sorted(batch):
                        fsync_dir(d)
                except OSError as exc:
                    error = exc
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._completed = round_
                    if error is not None:
                        self._failed[round_] = error
                        for old in [r for r in self._failed if r < round_ - 64]:
                            del self._failed[old]
                    self._cond.notify_all()
            if mine in self._failed:
                raise self._failed[mine]


_GROUP_SYNC = GroupSync()


STALE_TMP_S = 3600.0  # a temp file this old belongs to a write that will never finish


class LocalStore(RawStore):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        self.inbox = self.root / INBOX
        self.tmp = self.root / TMP
        self._inbox, self._tmp, self._root = str(self.inbox), str(self.tmp), str(self.root)
        self._dirs: set[str] = set()  # directories known to exist (and be durable)
        try:
            for d in (self.root, self.inbox, self.tmp):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store folder {self.root}: {exc}") from exc

    def remove_stale_tmp(self, older_than_s: float = STALE_TMP_S) -> int:
        """Remove temp files of writes that never finished (a writer killed between its temp file
        and its link: the ping was never acknowledged). Only old ones: another process may be
        writing to this folder right now. Returns how many went."""
        removed, cutoff = 0, time.time() - older_than_s
        try:
            entries = list(os.scandir(self.tmp))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def key_path(self, key: str) -> str:
        """The file name of ``key`` as a string (the edge's fast path); ValueError if unsafe."""
        return f"{self._root}/{check_key(key)}"

    def _path(self, key: str) -> Path:
        return Path(self.key_path(key))

    def _ensure_dir(self, parent: str) -> None:
        if parent in self._dirs:  # the hot path: a string lookup, no pathlib
            return
        folder = Path(parent)
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            for ancestor in folder.relative_to(self.root).parents:
                fsync_dir(self.root / ancestor)
        self._dirs.add(parent)

    def put_new(self, key: str, data: bytes, *, notify: bool = True) -> bool:
        path = self._path(key)
        tmp = os.path.join(self._tmp, uuid.uuid4().hex)
        receipt, linked = None, False
        folders = (str(path.parent), self._inbox) if notify else (str(path.parent),)  # to fsync before a 200
        try:
            self._ensure_dir(str(path.parent))
            fd = self._again_if_gone(self.tmp, os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if notify:
                receipt = os.path.join(
                    self._inbox, f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{_SEP}{key.replace('/', ':')}")
                self._again_if_gone(self.inbox, os.link, tmp, receipt)
            try:
                self._again_if_gone(path.parent, os.link, tmp, path)
            except FileExistsError:
                self._drop(receipt)
                # The first copy may not have synced its folders yet (its own sync may have failed,
                # and it answered 503): "duplicate" also means "on disk", its receipt included.
                _GROUP_SYNC.sync(folders)
                return False
            linked = True
            _GROUP_SYNC.sync(folders)
            return True
        except OSError as exc:
            if not linked:
                # Once the object is in place its receipt stays, even if a folder fsync then failed:
                # the retry gets "duplicate", and without the receipt nothing would ever load it.
                self._drop(receipt)
            raise StoreError(f"cannot write {key}: {exc.strerror or exc}") from exc
        finally:
            self._drop(tmp)

    def _again_if_gone(self, folder: str | Path, fn, *args):
        """``fn(*args)``, which makes something in ``folder``; if the folder was removed since we saw
        it (someone deleted the store under a running serve, say), make it again (durably, with its
        parents) and try once more, so the store heals instead of failing until a restart."""
        try:
            return fn(*args)
        except FileNotFoundError:
            if Path(folder).is_dir():
                raise
            self._dirs.clear()  # what was known to exist may be gone with it
            self._ensure_dir(str(folder))
            return fn(*args)

    def put_unsynced(self, key: str, data: bytes) -> bool:
        """Create-only like put_new, but no fsync, no temp file and no inbox receipt: for
        objects whose durable copy is elsewhere (serve's spool, see spool.py) and that are
        made durable later in bulk. The file is created with O_EXCL (create-only) and written
        in place, so a reader on another thread could see it half-written for a moment.
        serve's loader and a replay through the admin API take the spool's lock and never do;
        the /debug viewer in the HTTP workers does not, and may show such an object as
        unreadable for that moment (it shows it whole when asked again)."""
        name = self.key_path(key)
        parent = name.rpartition("/")[0]
        self._ensure_dir(parent)
        try:
            self._again_if_gone(parent, self._create, name, data)
        except FileExistsError:
            return False
        return True

    def replace_unsynced(self, key: str, data: bytes) -> None:
        """Atomically put ``data`` under ``key`` even if something is there (repair after a crash)."""
        path = self._path(key)
        tmp = self._write_tmp(data)
        try:
            self._ensure_dir(str(path.parent))
            os.replace(tmp, path)
        finally:
            self._drop(tmp)

    def _write_tmp(self, data: bytes) -> str:
        tmp = os.path.join(self._tmp, uuid.uuid4().hex)
        self._create(tmp, data)
        return tmp

    def _create(self, name: str, data: bytes) -> None:
        """Create the file ``name`` (O_EXCL) holding ``data``, unsynced. A write that fails
        removes the file: never leave a cut object behind, create-only would keep it."""
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, data)
        except BaseException:
            os.close(fd)
            self._drop(name)
            raise
        os.close(fd)

    @staticmethod
    def _drop(name: str | None) -> None:
        if name is not None:
            try:
                os.unlink(name)
            except OSError:
                pass

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(f"no object {key}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {key}: {exc.strerror or exc}") from exc

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot delete {key}: {exc.strerror or exc}") from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root
        # Walk only the deepest folder the prefix names (listing debug/ must not walk raw/).
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = base / folder if is_safe_key(folder) else base
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            rel_dir = os.path.relpath(dirpath, base)
            if rel_dir == ".":
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            else:
                dirnames.sort()
            for name in sorted(filenames):
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    yield key

    def pending(self, limit: int) -> list[tuple[str, str]]:
        names = []
        try:
            with os.scandir(self.inbox) as it:
                for entry in it:
                    names.append(entry.name)
        except FileNotFoundError:  # the store was deleted under a running serve: nothing waits in it now
            self.inbox.mkdir(parents=True, exist_ok=True)
            return []
        names.sort()
        return [(n, n.split(_SEP, 1)[1].replace(":", "/")) for n in names[:limit] if _SEP in n]

    def receipt_age(self, receipt: str) -> float:
        try:
            return max(0.0, (time.time_ns() - int(receipt[:20])) / 1e9)
        except ValueError:
            return float("inf")

    def ack(self, receipts: list[str]) -> None:
        for receipt in receipts:
            try:
                os.unlink(self.inbox / receipt)
            except FileNotFoundError:
                pass
