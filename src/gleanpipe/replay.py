"""replay: load every raw object again, in batches.

Locally, reading and transforming run in worker processes while the main process writes
the previous batch to the warehouse (DuckDB has one writer), so replay uses every core.
Through a running `serve`, batches go to its admin API instead.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from . import parent_guard
from .config import Config
from .load import Loader, Prepared, prepare
from .serve_state import has_ended
from .storage import RawStore, open_store

_worker_store: RawStore | None = None
_worker_spill: str | None = None  # the replay's folder for prepared batches (_prepare_chunk)

# that folder, in the temporary directory (TMPDIR), named for the replay's pid (``_spill_dir``)
SPILL_PREFIX = "gleanpipe-replay-"


def _init_worker(store_url: str, config: Config | None, parent_pid: int, spill: str) -> None:
    global _worker_store, _worker_spill
    # Ctrl-C reaches the whole process group: the parent stops the replay, the workers say nothing
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a replay killed with SIGKILL (or by the OOM killer) takes its worker processes with it
    parent_guard.die_with_parent()
    # The parent is the replay (the `fork` start method, Python 3.11-3.13's default on Linux) or its
    # fork server (`forkserver`, 3.14's default), which exits when the replay does. Before, only the
    # first was taken: under forkserver every worker exited at once, and so did any replay with workers.
    if parent_pid not in (os.getppid(), parent_guard.parent_of(os.getppid())):  # it died before the setting
        os._exit(parent_guard.ORPHANED)  # took effect
    _worker_store = open_store(store_url, config)
    _worker_spill = spill


def _prepare_chunk(keys: list[str]) -> str:
    """Read and transform ``keys``; the batch goes to a file in the replay's folder, and back
    through the pool's pipe goes only that file's name. A batch is tens of kB or more: a worker
    killed half-way through sending one (the OOM killer) left the replay's pool thread waiting for
    the rest of a message that never came, and the replay hung for ever. A name is one write of
    a few bytes, which a pipe takes whole or not at all, so the pool sees a killed worker as it
    is, and the replay ends saying so."""
    prepared = prepare(_worker_store, keys)
    try:
        fd, path = tempfile.mkstemp(dir=_worker_spill)
        with os.fdopen(fd, "wb") as f:
            pickle.dump(prepared, f, protocol=pickle.HIGHEST_PROTOCOL)
    except OSError as exc:  # a write's error names no file: name the folder, in TMPDIR
        raise OSError(exc.errno, exc.strerror, _worker_spill) from None
    return path


def _take(path: str) -> Prepared:
    """The batch a worker left in ``path`` (_prepare_chunk); the file is removed."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    finally:
        os.unlink(path)


@contextmanager
def _spill_dir() -> Iterator[str]:
    """A folder for the workers' batches, removed with what is left in it when the replay ends.
    One a replay killed with SIGKILL left (``gleanpipe-replay-<its pid>-...``) is removed by the
    next replay, once /proc tells that process has ended, or when this replay has its pid: its own folder is not
    made yet, so one of its pid is a dead replay's (in a container each run gets the same pids)."""
    base = tempfile.gettempdir()
    for old in Path(base).glob(f"{SPILL_PREFIX}*-*"):
        pid = old.name[len(SPILL_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or has_ended(int(pid))):
            shutil.rmtree(old, ignore_errors=True)
    path = tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-", dir=base)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def with_deletion_requests(store: RawStore, keys: list[str]) -> tuple[list[str], int]:
    """``keys``, then every deletion request of their apps that is not among them, and how many
    those are. A replay of part of the store (``--prefix raw/<app>/baseline/``) into a fresh
    warehouse has no deletions table to skip by: without the requests, deleted clients came back.
    Loaded last, each request deletes what the replay loaded of its client."""
    have = set(keys)
    apps = sorted({k.split("/")[1] for k in keys if k.startswith("raw/") and k.count("/") >= 2})
    extra = [k for app in apps for k in store.list(f"raw/{app}/deletion-request/") if k not in have]
    return keys + extra, len(extra)


def add_counts(totals: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    for name, value in counts.items():
        totals[name] = totals.get(name, 0) + value
    return totals


def chunks(keys: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(keys), size):
        yield keys[i : i + size]


def load_in_batches(load_keys: Callable[[list[str]], dict], keys: list[str], batch: int,
                    on_batch: Callable[[int, dict], None] | None = None) -> dict[str, int]:
    """Load ``keys`` a batch at a time with ``load_keys`` (a running serve's admin API,
    AdminClient.load_keys, or a Loader in this process), in this thread; the counts of every
    batch, added up."""
    totals: dict[str, int] = {}
    for chunk in chunks(keys, batch):
        counts = load_keys(chunk)
        add_counts(totals, counts)
        if on_batch:
            on_batch(len(chunk), counts)
    return totals


@contextmanager
def _ctrl_c_held():
    """A Ctrl-C held back until the block ends, then raised. ProcessPoolExecutor's start, interrupted,
    leaves a thread made but not started, which its shutdown then joins ("RuntimeError: cannot join
    thread before it is started"); and a KeyboardInterrupt in a fork's own handlers is lost ("Exception
    ignored in ... _releaseLock"), the replay going on to its end. Worker processes forked meanwhile
    keep the holding handler until _init_worker ignores SIGINT."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or threading.current_thread() is not threading.main_thread():  # not Python's to set
        yield
        return
    came: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if came:
            signal.raise_signal(signal.SIGINT)  # now, to the handler there was (the command's: "interrupted")


def replay_local(loader: Loader, keys: list[str], batch: int, workers: int | None = None,
                 on_batch: Callable[[int, dict], None] | None = None, config: Config | None = None) -> dict[str, int]:
    """Load ``keys`` with ``loader``; ``workers`` processes prepare batches (0: all in this process),
    opening the store with ``config``'s settings (None: the environment's)."""
    totals: dict[str, int] = {}

    def add(n: int, result) -> None:
        counts = result.as_dict()
        add_counts(totals, counts)
        if on_batch:
            on_batch(n, counts)

    workers = min(os.cpu_count() or 1, 4) if workers is None else workers
    if workers <= 0 or len(keys) <= batch:
        return load_in_batches(lambda chunk: loader.load_keys(chunk).as_dict(), keys, batch, on_batch)
    with _spill_dir() as spill, ProcessPoolExecutor(
            workers, initializer=_init_worker, initargs=(loader.store.url, config, os.getpid(), spill)) as pool:
        window: deque = deque()
        pending = chunks(keys, batch)
        with _ctrl_c_held():  # the first submit starts the worker processes and the pool's thread
            first = next(pending)
            window.append((len(first), pool.submit(_prepare_chunk, first)))
        for chunk in pending:
            window.append((len(chunk), pool.submit(_prepare_chunk, chunk)))
            if len(window) > workers:  # keep a few batches in flight, not the whole store in memory
                n, future = window.popleft()
                add(n, loader.write(_take(future.result())))
        while window:
            n, future = window.popleft()
            add(n, loader.write(_take(future.result())))
    return totals
