"""The write-ahead spool of `gleanpipe serve` (storage/spool*.py): real files, real processes."""

from __future__ import annotations

import errno
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from conftest import (APP, DATASET, SDK_HEADERS, ServeProcess, children, fill_disk, gz, make_ping, post, run_cli,
                      small_disk, submit_path, thread_at_line, until)
from gleanpipe import rawobject
from gleanpipe.config import Config
from gleanpipe.http_edge import SubmitHandler
from gleanpipe.load import Loader
from gleanpipe.naming import DocumentPath
from gleanpipe.serve import LoaderThread
from gleanpipe.storage import StoreError
from gleanpipe.storage.local import LocalStore
from gleanpipe.storage.spool import SPOOL, decode_records, encode_record
from gleanpipe.storage.spool_reader import SpoolReader
from gleanpipe.storage.spool_writer import RECENT_KEYS, SpoolingStore, SpoolWriter
from gleanpipe.warehouse.duckdb import DuckDBWarehouse

CLIENT = "5a4e6c2b-3f7d-4d8e-9a1b-0c2d3e4f5a6b"


def raw(doc_id: str | None = None, seq: int = 0, doc_type: str = "baseline") -> tuple[str, bytes]:
    """(key, object bytes) of a ping as the edge would store it."""
    path = DocumentPath(APP, doc_type, "1", doc_id or str(uuid.uuid4()))
    meta = {"submission_timestamp": "2026-11-23T08:00:00.000000Z", "headers": {}, "app_id": APP,
            "doc_type": doc_type, "version": "1", "document_id": path.document_id, "key": path.key}
    return path.key, rawobject.encode(meta, orjson.dumps(make_ping(CLIENT, seq=seq)))


def segments(store: LocalStore) -> list[Path]:
    return sorted((store.root / SPOOL).glob("*.seg"))


def spooled(store: LocalStore, n: int) -> tuple[list[tuple[str, bytes]], Path]:
    """n pings appended by a writer that has since closed: (the pings, their one segment)."""
    writer = SpoolWriter(store.root / SPOOL, 1 << 20, 3600)
    pings = [raw(seq=i) for i in range(n)]
    for key, data in pings:
        writer.append(key, data)
    writer.close()
    (seg,) = segments(store)
    return pings, seg


def run_under_gevent(script: str, arg: Path, timeout: float) -> dict:
    """Run ``script`` (which monkey-patches first, as gunicorn's gevent worker does) in a fresh
    interpreter with ``arg``; its last output line is JSON."""
    out = subprocess.run([sys.executable, "-c", script, str(arg)], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return orjson.loads(out.stdout)


def test_records_round_trip_and_a_damaged_record_is_not_read():
    recs = [encode_record(f"raw/k{i}.json", bytes([i]) * (i * 100)) for i in range(3)]
    buf = b"".join(recs)
    got = [(k, d) for _, _, k, d in decode_records(buf)]
    assert got == [(f"raw/k{i}.json", bytes([i]) * (i * 100)) for i in range(3)]
    flipped = bytearray(buf)
    flipped[len(recs[0]) + 20] ^= 0xFF  # inside the second record's body: its crc no longer matches
    assert [k for _, _, k, _ in decode_records(bytes(flipped))] == ["raw/k0.json"]
    assert [k for _, _, k, _ in decode_records(buf[:-1])] == ["raw/k0.json", "raw/k1.json"]  # cut short


def test_torn_tail_is_skipped_once_its_writer_is_gone(store, warehouse, caplog):
    import logging

    pings, seg = spooled(store, 3)
    torn_key, torn_data = raw(seq=99)
    torn = encode_record(torn_key, torn_data)[:-10]  # a crash in the middle of the 4th write
    with open(seg, "ab") as f:
        f.write(torn)
    reader = SpoolReader(store)
    thread = LoaderThread(reader, Loader(reader, warehouse), batch=100, interval_s=0.01)
    with caplog.at_level(logging.WARNING, logger="gleanpipe.spool"):
        assert thread.step() == 3
    assert reader.stats["torn_bytes"] == len(torn)
    assert [r.levelname for r in caplog.records if "never acknowledged" in r.getMessage()] == ["WARNING"]
    assert sorted(warehouse.query(f"SELECT ping_info.seq FROM {DATASET}.baseline_v1 ORDER BY 1")[1]) == [(0,), (1,), (2,)]
    assert [store.get(k) for k, _ in pings] == [d for _, d in pings]
    assert not (store.root / torn_key).exists()
    assert segments(store) == [] and reader.stats["segments_deleted"] == 1  # loaded, synced, deleted
    assert reader.pending(10) == []


def test_entries_of_the_spool_folder_that_are_no_segment_are_left_alone(store, data_dir):
    """A file named junk.seg or a folder named like a segment, in .spool: serve took every *.seg
    for a segment, failed on it at each look ("invalid literal for int()", "Is a directory"),
    loaded nothing more, and `status` failed as a whole. It warns once and leaves them; the real
    segments load, and status counts their records with serve stopped and through serve."""
    pings, _ = spooled(store, 3)
    folder = store.root / SPOOL
    (folder / "junk.seg").write_bytes(os.urandom(500))
    (folder / "01796588999999999998-1-dir.seg").mkdir()
    (folder / "notes.txt").write_text("not a .seg at all")
    DuckDBWarehouse(str(data_dir / "warehouse.duckdb")).close()
    stopped = run_cli("status", "--json", "--data-dir", str(data_dir))
    assert stopped.returncode == 0 and orjson.loads(stopped.stdout)["pending"] == 3, stopped.stderr
    server = ServeProcess(data_dir).start()
    try:
        assert server.wait_rows(f"SELECT count(*) FROM {DATASET}.baseline_v1", 3) == 3
        status = server.admin.status()
        assert (status["pending"], status["loading_failing"]) == (0, None)
        assert post(server.url + submit_path(), gz(make_ping(CLIENT)))[0] == 200  # and it goes on loading
        assert server.wait_rows(f"SELECT count(*) FROM {DATASET}.baseline_v1", 4) == 4
    finally:
        assert server.stop() == 0
    log = server.read_log()
    assert log.count("is not a spool file") == 2 and "junk.seg" in log and "-dir.seg" in log
    assert sorted(p.name for p in folder.iterdir()) == ["01796588999999999998-1-dir.seg", "junk.seg", "notes.txt"]


def test_damage_in_the_middle_skips_only_the_damaged_record(store, caplog):
    """Only the damaged record is lost, and the log says that it may have been acknowledged (it
    called every skip "a write cut short by a crash, never acknowledged", which is what a torn tail
    is, not damage between intact records)."""
    import logging

    pings, seg = spooled(store, 3)
    buf = bytearray(seg.read_bytes())
    first_len = len(encode_record(*pings[0]))
    buf[first_len + 30] ^= 0xFF
    seg.write_bytes(bytes(buf))
    reader = SpoolReader(store)
    with caplog.at_level(logging.WARNING, logger="gleanpipe.spool"):
        assert [k for _, k in reader.pending(10)] == [pings[0][0], pings[2][0]]
    assert reader.stats["torn_bytes"] == len(encode_record(*pings[1]))
    (said,) = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert said.levelname == "ERROR" and "between intact records" in said.getMessage()
    assert "a ping that was acknowledged may be lost" in said.getMessage()


def test_a_record_being_written_is_waited_for_not_skipped(store):
    """While the writer holds its segment, a partial record at the end is not a torn tail."""
    writer = SpoolWriter(store.root / SPOOL, 1 << 20, 3600)
    first, second = raw(seq=1), raw(seq=2)
    writer.append(*first)
    (seg,) = segments(store)
    record = encode_record(*second)
    with open(seg, "ab") as f:  # the first half of a write() another thread is doing
        f.write(record[:25])
    reader = SpoolReader(store)
    assert [k for _, k in reader.pending(10)] == [first[0]]
    assert reader.stats["torn_bytes"] == 0
    with open(seg, "ab") as f:
        f.write(record[25:])
    assert [k for _, k in reader.pending(10)] == [first[0], second[0]]
    reader.ack([r for r, _ in reader.pending(10)])
    assert segments(store) == [seg]  # still held by its writer: kept
    writer.close()
    assert reader.pending(10) == []
    reader.ack([])
    assert segments(store) == []


@pytest.mark.parametrize("chunk", [None, 100])  # 100 bytes: each record is read across several chunks
def test_backlog_counts_what_waits_without_writing_it_out(store, monkeypatch, chunk):
    """`status` through serve counted what waits with ``len(pending(1_000_000))``, which wrote up to
    a million spool records out as objects (holding the lock the loader and `replay` wait on) and
    kept them in the reader's queue. ``backlog`` counts the same number and writes out nothing:
    records handed to the loader and not acknowledged, records not read yet (a damaged one
    stepped over as the reader does, a half-written one not yet), and the inbox's receipts."""
    if chunk:
        monkeypatch.setattr("gleanpipe.storage.spool_reader.READ_CHUNK", chunk)
    pings, seg = spooled(store, 5)  # a finished segment: its writer is gone
    buf = bytearray(seg.read_bytes())
    buf[sum(len(encode_record(*p)) for p in pings[:3]) + 30] ^= 0xFF  # the 4th record damaged
    seg.write_bytes(bytes(buf))
    writer = SpoolWriter(store.root / SPOOL, 1 << 20, 3600)  # a segment still being written
    live = [raw(seq=10 + i) for i in range(2)]
    for key, data in live:
        writer.append(key, data)
    (live_seg,) = set(segments(store)) - {seg}
    with open(live_seg, "ab") as f:  # the first half of a record another thread is writing
        f.write(encode_record(*raw(seq=12))[:40])
    received = raw(seq=20)
    assert store.put_new(*received)  # an inbox receipt, as with the spool off
    reader = SpoolReader(store)
    assert [k for _, k in reader.pending(3)] == [k for k, _ in pings[:3]]  # handed out, not acknowledged
    objects, queue = sorted(store.list("raw/")), list(reader._queue)
    offsets = {name: s.offset for name, s in reader._segments.items()}
    try:
        assert reader.backlog() == 3 + 1 + 2 + 1
        assert sorted(store.list("raw/")) == objects and len(objects) == 4  # nothing written out
        assert list(reader._queue) == queue  # nor handed out
        assert {name: s.offset for name, s in reader._segments.items()} == offsets
        got = reader.pending(1_000_000)  # what `status` counted before, and what the loader gets
        assert [k for _, k in got] == [k for k, _ in [*pings[:3], pings[4], *live, received]]
    finally:
        writer.close()


@pytest.mark.parametrize("chunk", [None, 100])
def test_the_keys_status_counts_with_serve_stopped_are_the_ones_serve_loads(store, monkeypatch, chunk):
    """``spooled_keys`` (`status` with serve stopped) stopped at a damaged record and read each
    segment whole; serve, when it starts, steps over the damage and loads the records after it.
    Both now read a segment the same way (``segment_keys``), a chunk at a time."""
    from gleanpipe.storage.spool_reader import spooled_keys

    if chunk:
        monkeypatch.setattr("gleanpipe.storage.spool_reader.READ_CHUNK", chunk)
    pings, seg = spooled(store, 5)
    buf = bytearray(seg.read_bytes())
    buf[sum(len(encode_record(*p)) for p in pings[:2]) + 30] ^= 0xFF  # the 3rd record damaged
    seg.write_bytes(bytes(buf))
    assert spooled_keys(store) == {k for k, _ in [*pings[:2], *pings[3:]]}
    reader = SpoolReader(store)
    assert {k for _, k in reader.pending(1_000_000)} == spooled_keys(store)


def test_the_reader_syncs_a_record_it_read_before_it_becomes_an_object(store, monkeypatch):
    """A record is readable once its writer's write() returns, before that writer's fdatasync
    has. Before: the reader wrote it out as an object at once, and the object made the edge answer
    "duplicate" to a copy at another worker; a power cut then could take the record, the object
    and so the ping. A power cut cannot be caused here: a spy (which calls through) records the
    order of the fdatasyncs and of the objects written."""
    writer = SpoolWriter(store.root / SPOOL, 1 << 20, 3600)
    first, second = raw(seq=1), raw(seq=2)
    writer.append(*first)  # the segment exists and its writer holds it
    (seg,) = segments(store)
    with open(seg, "ab") as f:  # written by the worker, whose fdatasync has not returned yet
        f.write(encode_record(*second))
    events, real_sync, real_put = [], os.fdatasync, LocalStore.put_unsynced

    def sync(fd):
        events.append(("sync", os.readlink(f"/proc/self/fd/{fd}")))
        real_sync(fd)

    def put(self, key, data):
        events.append(("object", key))
        return real_put(self, key, data)

    monkeypatch.setattr(os, "fdatasync", sync)
    monkeypatch.setattr(LocalStore, "put_unsynced", put)
    reader = SpoolReader(store)
    assert [k for _, k in reader.pending(10)] == [first[0], second[0]]
    assert events == [("sync", str(seg)), ("object", first[0]), ("object", second[0])]
    writer.close()


def test_concurrent_appends_each_return_after_an_fsync_that_covers_them(store, monkeypatch):
    """32 threads x 40 pings. Each append must return only after an fdatasync that started
    when the file already held its record. The real fdatasync runs; the wrapper only records
    (file size at its start, order of completion)."""
    writer = SpoolWriter(store.root / SPOOL, 64 << 20, 3600)
    lock, clock, syncs, acks = threading.Lock(), [0], [], {}
    real = os.fdatasync

    def recording_fdatasync(fd):
        size = os.fstat(fd).st_size
        real(fd)
        with lock:
            clock[0] += 1
            syncs.append((clock[0], size))

    monkeypatch.setattr(os, "fdatasync", recording_fdatasync)

    def worker(n):
        for i in range(40):
            key, data = f"raw/t{n}-{i}.json", os.urandom(200 + n)
            writer.append(key, data)
            with lock:
                acks[key] = (clock[0], data)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(32)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    (seg,) = segments(store)
    buf = seg.read_bytes()
    ends = {key: (end, data) for _, end, key, data in decode_records(buf)}
    assert len(ends) == len(acks) == 32 * 40 and sum(1 for _ in decode_records(buf)) == 32 * 40
    for key, (acked_at, data) in acks.items():
        end, stored = ends[key]
        assert stored == data
        assert any(done <= acked_at and size >= end for done, size in syncs), key
    assert writer.syncs == len(syncs) <= 32 * 40
    writer.close()


def slow_disk_under_gevent(call: str, seconds: float) -> str:
    """The start of a gevent script: patches as gunicorn's gevent worker does, slows ``os.<call>``
    down by ``seconds`` (a mock: a slow disk cannot be had on demand) and defines ``ticker``,
    which counts turns of the event loop (``ticks[0]``) and those that came while a slowed call
    was running (``ticks[1]``) until ``done`` is set, and ``peak[0]``, the most slowed calls that
    ran at once."""
    return f"""
import json, sys, time
from gevent import monkey
monkey.patch_all()
import os
import gevent

real_sleep, real_call = monkey.get_original("time", "sleep"), os.{call}
syncing, peak = [], [0]

def slow_call(fd):
    syncing.append(True)
    peak[0] = max(peak[0], len(syncing))
    real_sleep({seconds})  # blocks the calling OS thread, as a slow disk does
    real_call(fd)
    syncing.pop()

os.{call} = slow_call
ticks, done = [0, 0], []

def ticker():
    while not done:
        ticks[0] += 1
        ticks[1] += bool(syncing)
        gevent.sleep(0.005)
"""


GEVENT_APPENDS = slow_disk_under_gevent("fdatasync", 0.2) + r"""
from gleanpipe.storage.spool import decode_records
from gleanpipe.storage.spool_writer import SpoolWriter

writer = SpoolWriter(sys.argv[1], 1 << 20, 3600)

def later(i):
    gevent.sleep(0.05)  # arrives while the first batch is being synced
    writer.append(f"raw/late{i}.json", b"y" * 100)

g = gevent.spawn(ticker)
jobs = [gevent.spawn(writer.append, f"raw/early{i}.json", b"x" * 100) for i in range(20)]
jobs += [gevent.spawn(later, i) for i in range(20)]
gevent.joinall(jobs, raise_error=True)
done.append(True)
g.join()
writer.close()
(seg,) = [n for n in os.listdir(sys.argv[1]) if n.endswith(".seg")]
keys = [k for _, _, k, _ in decode_records(open(os.path.join(sys.argv[1], seg), "rb").read())]
print(json.dumps({"syncs": writer.syncs, "ticks": ticks[0], "ticks_syncing": ticks[1], "keys": keys}))
"""


def test_under_gevent_the_fdatasync_runs_off_the_event_loop_and_later_pings_share_the_next_one(tmp_path):
    """serve's HTTP workers are gevent workers: one OS thread runs every request. The spool's
    fdatasync must run in gevent's thread pool, or each sync would stop every other request."""
    got = run_under_gevent(GEVENT_APPENDS, tmp_path / "spool", timeout=60)
    assert sorted(got["keys"]) == sorted([f"raw/early{i}.json" for i in range(20)]
                                         + [f"raw/late{i}.json" for i in range(20)])
    assert got["syncs"] == 2  # 20 pings per fdatasync: the 20 late ones waited for the second
    assert got["ticks_syncing"] >= 20  # the loop kept turning (every 5 ms) through 0.4 s of syncing
    # (no wall-clock bound: these two counts are the behaviour; run_under_gevent's timeout catches a hang)


GEVENT_POOL_WRITES = r"""
import json, sys, uuid
from gevent import monkey
monkey.patch_all()
import gevent
from gleanpipe.storage.local import LocalStore

store = LocalStore(sys.argv[1])
pool = gevent.get_hub().threadpool

def write(i):  # fsyncs its folders from one of the pool's threads, as the spool's commits do
    key = f"errors/2026-11-23/json/{uuid.uuid4()}.json"
    return pool.apply(store.put_new, (key, b"x" * 200), {"notify": False})

jobs = [gevent.spawn(write, i) for i in range(1500)]
gevent.joinall(jobs)
print(json.dumps({"ok": sum(1 for j in jobs if j.successful() and j.value is True),
                  "errors": [repr(j.exception) for j in jobs if j.exception][:3]}))
"""


def test_under_gevent_folder_fsyncs_from_the_thread_pool_never_fail(tmp_path):
    """gevent's os.close defers closing a directory fd to an event loop, and from its thread
    pool that failed with EBADF for a few of every 600 writes (seen here). Our own directory fds
    are closed at once."""
    got = run_under_gevent(GEVENT_POOL_WRITES, tmp_path / "store", timeout=120)
    assert got == {"ok": 1500, "errors": []}
    assert len(list((tmp_path / "store/errors/2026-11-23/json").iterdir())) == 1500


GEVENT_REJECTS = slow_disk_under_gevent("fsync", 0.1) + r"""
from gleanpipe.config import Config
from gleanpipe.http_edge import SubmitHandler
from gleanpipe.storage.local import LocalStore
from gleanpipe.storage.spool_writer import SpoolingStore

store = SpoolingStore(LocalStore(sys.argv[1]), 1 << 20, 3600)
handler = SubmitHandler(Config.from_env(environ={}, data_dir=sys.argv[1]), store)

def reject(i):
    path = f"/submit/org-example-toolbox/baseline/1/00000000-0000-4000-8000-{i:012d}"
    return handler.handle("POST", path, {}, b"{not json").status

g = gevent.spawn(ticker)
jobs = [gevent.spawn(reject, i) for i in range(8)]
gevent.joinall(jobs, raise_error=True)
done.append(True)
g.join()
print(json.dumps({"statuses": [j.value for j in jobs], "records": len(list(store.list("errors/"))),
                  "ticks_syncing": ticks[1], "peak": peak[0]}))
"""


def test_under_gevent_rejected_pings_are_recorded_off_the_event_loop(tmp_path):
    """A rejected ping's error record is fsynced before its 400. Under gevent that fsync runs in
    the thread pool, so a flood of bad pings does not stop every other request of the worker."""
    got = run_under_gevent(GEVENT_REJECTS, tmp_path / "store", timeout=60)
    assert got["statuses"] == [400] * 8 and got["records"] == 8
    assert got["ticks_syncing"] >= 20  # the loop kept turning (every 5 ms) while records were fsynced
    # written side by side in the pool's threads, not one after another: counted, not timed
    assert got["peak"] >= 2, got


def test_serve_runs_gevent_workers_with_the_spool_and_threads_without():
    from gleanpipe.serve import gunicorn_args

    on = gunicorn_args(Config.from_env(environ={"GLEANPIPE_CONNECTIONS": "50"}), spool=True)
    off = gunicorn_args(Config.from_env(environ={"GLEANPIPE_THREADS": "3"}), spool=False)
    # gunicorn's gevent worker, whose answer to a request gunicorn cannot parse is JSON (http_errors.py)
    assert on[:5] == ["gleanpipe.wsgi:spool_app", "--worker-class", "gleanpipe.gevent_worker.JSONGeventWorker",
                      "--worker-connections", "50"]
    assert off[:5] == ["gleanpipe.wsgi:app", "--worker-class", "gleanpipe.http_worker.HeadTimeoutThreadWorker",
                       "--threads", "3"]  # gunicorn's gthread worker, with a bound on a request's head
    assert "--threads" not in on


def test_a_failed_fdatasync_fails_the_request_and_a_new_segment_takes_the_next(store, monkeypatch):
    """A mock: a disk error on fdatasync cannot be caused on demand here."""
    writer = SpoolWriter(store.root / SPOOL, 1 << 20, 3600)
    real, calls = os.fdatasync, []

    def failing_once(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", failing_once)
    with pytest.raises(StoreError, match="Input/output error"):
        writer.append(*raw(seq=1))
    ok = raw(seq=2)
    writer.append(*ok)
    writer.close()
    assert len(segments(store)) == 2  # the failed segment is never written to again
    keys = [k for s in segments(store) for _, _, k, _ in decode_records(s.read_bytes())]
    assert keys[-1] == ok[0]


def _append_within(writer: SpoolWriter, key: str, data: bytes, timeout: float = 10) -> Exception | None:
    """writer.append in a thread of its own: what it raised (None if nothing), failing the test
    if it has not returned within ``timeout`` (before: some requests waited for ever)."""
    outcome = []

    def run():
        try:
            writer.append(key, data)
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert outcome, f"append of {key} still waiting after {timeout} s"
    return outcome[0]


# the committer logs the error itself: re-raised as well, Python's thread hook printed its traceback a
# second time, outside the log (pytest reports that hook's call as this warning)
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_unexpected_error_in_a_commit_fails_its_requests_and_the_next_append_is_written(store, monkeypatch, caplog):
    """A mock: an error that is not an OSError (a MemoryError while a batch is written, say)
    cannot be caused on demand, so the writer's write_all raises one once. Before: the committer
    thread died with the batch's gate held, and this append and every later one waited for ever.
    The error is logged once, with its traceback, and the thread ends without raising it again."""
    from gleanpipe.storage import spool_writer

    writer = SpoolWriter(store.root / SPOOL, 1 << 20, 3600)
    real, calls = spool_writer.write_all, []

    def failing_once(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            raise MemoryError()
        real(fd, data)

    monkeypatch.setattr(spool_writer, "write_all", failing_once)
    lost, kept = raw(seq=1), raw(seq=2)
    error = _append_within(writer, *lost)
    assert isinstance(error, StoreError) and str(error) == "cannot write the spool: MemoryError"
    assert _append_within(writer, *kept) is None  # a new committer, on a fresh segment
    writer.close()
    assert len(calls) == 2
    assert [(k, d) for s in segments(store) for _, _, k, d in decode_records(s.read_bytes())] == [kept]
    stopped = [r for r in caplog.records if "committer stopped" in r.getMessage()]
    assert len(stopped) == 1 and stopped[0].exc_info[0] is MemoryError


def test_a_segment_close_that_fails_on_an_idle_writer_does_not_stop_later_appends(store, monkeypatch):
    """A mock: os.close of a local file cannot be made to fail here (it can on NFS, or under
    gevent), so closing the writer's segment raises EIO once (after closing it, as Linux does).
    Before: the idle committer died letting its segment go, and every later append waited for ever."""
    from gleanpipe.storage import spool_writer

    writer = SpoolWriter(store.root / SPOOL, 1 << 20, 0.2)  # an idle segment goes after 0.2 s
    first, later = raw(seq=1), raw(seq=2)
    assert _append_within(writer, *first) is None
    real_close, failed = os.close, threading.Event()

    def close(fd):
        real_close(fd)
        if fd == seg_fd and not failed.is_set():
            failed.set()
            raise OSError(errno.EIO, "Input/output error")

    seg_fd = writer._fd
    monkeypatch.setattr(spool_writer.os, "close", close)
    assert failed.wait(10)  # the committer let the idle segment go, and its close failed
    monkeypatch.setattr(spool_writer.os, "close", real_close)
    # and has ended (a request that came while it ended would share its 503: the SDK retries it)
    until(lambda: writer._thread is None, "the failed committer's end")
    assert _append_within(writer, *later) is None
    writer.close()
    records = [(k, d) for s in segments(store) for _, _, k, d in decode_records(s.read_bytes())]
    assert records == [first, later]


def test_a_committer_that_cannot_sleep_refuses_each_append_instead_of_hanging(store):
    """A real fault: a segment age beyond what the OS timers take (the settings refuse one, a
    SpoolWriter made directly does not) makes the committer's wait raise OverflowError. Before:
    the committer died before taking the batch, and the append waited for ever."""
    writer = SpoolWriter(store.root / SPOOL, 1 << 20, 1e300)
    for seq in (1, 2):  # each append gets its answer, the second from a committer started afresh
        error = _append_within(writer, *raw(seq=seq))
        assert isinstance(error, StoreError) and isinstance(error.__cause__, OverflowError)
        assert str(error) == "cannot write the spool: timestamp out of range for platform time_t"
    writer.close()
    assert segments(store) == []


def test_edge_dedupe_answers_duplicate_without_spooling(config, store):
    spooling = SpoolingStore(store, 1 << 20, 3600)
    handler = SubmitHandler(config, spooling)
    doc_id = str(uuid.uuid4())
    body = gz(make_ping(CLIENT))
    first = handler.handle("POST", submit_path("baseline", doc_id), {}, body)
    again = handler.handle("POST", submit_path("baseline", doc_id), {}, body)
    assert (first.status, first.headers["X-Gleanpipe-Stored"]) == (200, "new")
    assert (again.status, again.headers["X-Gleanpipe-Stored"]) == (200, "duplicate")
    reader = SpoolReader(store)
    assert len(reader.pending(10)) == 1  # one record spooled
    # once the object exists, any worker answers "duplicate" from the store itself
    other_worker = SubmitHandler(config, SpoolingStore(store, 1 << 20, 3600))
    assert other_worker.handle("POST", submit_path("baseline", doc_id), {}, body).headers["X-Gleanpipe-Stored"] == "duplicate"
    # rejected pings are not spooled: they are written to errors/ directly, fsynced
    bad = handler.handle("POST", submit_path("baseline"), {}, b"{not json")
    assert bad.status == 400 and len(list(store.list("errors/"))) == 1
    spooling.writer.close()


def test_the_dedupe_memory_forgets_its_oldest_key_first(store):
    """The memory holds exactly N keys (N = RECENT_KEYS, 100,000, in serve; 3 here, through the
    constructor, to reach it): N keys are all answered "duplicate"; key N+1 forgets the oldest
    only (a copy of it is spooled again), and the second oldest is still answered "duplicate"."""
    assert SpoolingStore(store, 1 << 20, 3600).recent_keys == RECENT_KEYS == 100_000
    spooling = SpoolingStore(store, 1 << 20, 3600, recent_keys=3)
    (k1, d1), (k2, d2), (k3, d3), (k4, d4) = raw(seq=1), raw(seq=2), raw(seq=3), raw(seq=4)
    assert [spooling.put_new(k, d) for k, d in ((k1, d1), (k2, d2), (k3, d3))] == [True] * 3
    assert [spooling.put_new(k, d) for k, d in ((k1, d1), (k2, d2), (k3, d3))] == [False] * 3  # N remembered
    assert spooling.put_new(k4, d4) is True  # N+1: k1 goes
    assert [spooling.put_new(k, d) for k, d in ((k2, d2), (k3, d3), (k4, d4))] == [False] * 3
    assert spooling.put_new(k1, d1) is True  # forgotten, spooled again
    spooling.writer.close()
    (seg,) = segments(store)
    assert [k for _, _, k, _ in decode_records(seg.read_bytes())] == [k1, k2, k3, k4, k1]


def _two_copies_at_once(spooling: SpoolingStore, key: str, data: bytes) -> list:
    """put_new of one key from two threads, the second arriving while the first is still being
    written. The writer's own lock is held (a pause of the real writer, not a stand-in) until
    both have started, so the first copy cannot reach the disk before the second asks. Each
    step is seen happen, not waited for: the first thread holds the dedupe memory's lock (and
    waits for the writer's) before the second starts, and the second is blocked on that lock
    before the writer's is let go."""
    results: list = [None, None]

    def put(i: int) -> None:
        try:
            results[i] = (spooling.put_new(key, data), spooling.writer.syncs)
        except StoreError as exc:
            results[i] = exc

    threads = [threading.Thread(target=put, args=(i,)) for i in (0, 1)]
    with spooling.writer._lock:
        threads[0].start()
        until(spooling._recent_lock.locked, "the first copy in the dedupe memory's lock")
        assert spooling.writer._batch is None  # and not past the writer's lock (held here)
        threads[1].start()
        until(lambda: thread_at_line(threads[1], SpoolingStore.put_new, "with self._recent_lock:"),
               "the second copy waiting for the dedupe memory's lock")
    for t in threads:
        t.join(10)
    return results


def test_a_copy_that_arrives_while_the_first_is_written_waits_for_it(store):
    """Before: the second copy was answered "duplicate" at once, so a 200 went out for a ping
    that was not on disk yet; if its first copy then failed (disk full) or the worker was killed,
    the ping was lost (a crash audit lost 11 of 12 such pings to kill -9)."""
    spooling = SpoolingStore(store, 1 << 20, 3600)
    key, data = raw()
    first, second = _two_copies_at_once(spooling, key, data)
    assert first == (True, 1)
    assert second == (False, 1)  # "duplicate" only once the one fdatasync covering the first copy returned
    spooling.writer.close()
    (seg,) = segments(store)
    assert [k for _, _, k, _ in decode_records(seg.read_bytes())] == [key]


def test_a_copy_that_arrives_while_the_first_fails_gets_the_failure(tmp_path):
    """A real fault: the spool folder's path is taken by a file, so the first copy's write fails.
    Before: the second copy got "duplicate" (200) and neither was stored."""
    store = LocalStore(tmp_path / "store")
    (store.root / SPOOL).write_bytes(b"")
    spooling = SpoolingStore(store, 1 << 20, 3600)
    key, data = raw()
    results = _two_copies_at_once(spooling, key, data)
    assert [type(r) for r in results] == [StoreError, StoreError]  # both 503: the SDK retries both
    (store.root / SPOOL).unlink()
    assert spooling.put_new(key, data) is True  # the retry writes it afresh
    spooling.writer.close()
    (seg,) = segments(store)
    assert [k for _, _, k, _ in decode_records(seg.read_bytes())] == [key]


def test_a_duplicate_inside_the_spool_window_gives_one_object_and_one_row(store, warehouse):
    """Two workers take the same document id before either copy is materialised."""
    doc_id = str(uuid.uuid4())
    key, first = raw(doc_id, seq=1)
    _, second = raw(doc_id, seq=2)
    w1, w2 = SpoolingStore(store, 1 << 20, 3600), SpoolingStore(store, 1 << 20, 3600)
    assert w1.put_new(key, first) is True
    assert w2.put_new(key, second) is True  # that worker cannot know: both copies are spooled
    w1.writer.close()
    w2.writer.close()
    reader = SpoolReader(store)
    thread = LoaderThread(reader, Loader(reader, warehouse), batch=100, interval_s=0.01)
    assert thread.step() == 2
    assert store.get(key) == first  # first written wins, create-only
    assert reader.stats == {**reader.stats, "materialised": 1, "duplicates": 1}
    assert warehouse.query(f"SELECT document_id, ping_info.seq FROM {DATASET}.baseline_v1")[1] == [(doc_id, 1)]
    assert segments(store) == []


def test_replay_after_a_crash_repairs_an_object_that_was_linked_but_not_synced(store, warehouse):
    key, data = raw(seq=5)
    writer = SpoolWriter(store.root / SPOOL, 1 << 20, 3600)
    writer.append(key, data)
    writer.close()
    # what a crash before serve's syncfs can leave: the name linked, the bytes never written
    (store.root / key).parent.mkdir(parents=True, exist_ok=True)
    (store.root / key).write_bytes(b"")
    reader = SpoolReader(store)  # a new serve: the segments already there are replayed with checks
    thread = LoaderThread(reader, Loader(reader, warehouse), batch=100, interval_s=0.01)
    assert thread.step() == 1
    assert store.get(key) == data and reader.stats["repaired"] == 1
    assert warehouse.query(f"SELECT ping_info.seq FROM {DATASET}.baseline_v1")[1] == [(5,)]


def test_replay_after_a_crash_repairs_cut_objects_even_when_the_clock_stepped_back(store, warehouse):
    """After a power cut the clock may step back (an RTC that ran ahead, corrected by NTP): the
    segments left over then carry a time in their names later than the new serve's start.
    Before: such a segment counted as this run's, its cut objects were trusted (load errors), and
    the segment, the only intact copy, was deleted after the ack."""
    pings, seg = spooled(store, 3)
    future = seg.with_name(f"{time.time_ns() + 3600 * 10**9:020d}{seg.name[20:]}")  # an hour ahead
    seg.rename(future)
    torn_key, torn_data = raw(seq=99)
    with open(future, "ab") as f:  # the crash also cut the segment's last, unacknowledged record
        f.write(encode_record(torn_key, torn_data)[:-10])
    # what a crash before serve's syncfs can leave: names linked, their bytes missing or cut
    for (key, data), cut in zip(pings[:2], (b"", pings[0][1][:len(pings[0][1]) // 2])):
        (store.root / key).parent.mkdir(parents=True, exist_ok=True)
        (store.root / key).write_bytes(cut)
    reader = SpoolReader(store)  # the new serve
    thread = LoaderThread(reader, Loader(reader, warehouse), batch=100, interval_s=0.01)
    assert thread.step() == 3
    assert reader.stats == {**reader.stats, "repaired": 2, "duplicates": 2, "materialised": 1,
                            "torn_bytes": len(encode_record(torn_key, torn_data)) - 10}
    assert [store.get(k) for k, _ in pings] == [d for _, d in pings]
    assert sorted(warehouse.query(f"SELECT ping_info.seq FROM {DATASET}.baseline_v1")[1]) == [(0,), (1,), (2,)]
    assert warehouse.status()["load_errors"] == {}
    assert segments(store) == [] and not (store.root / torn_key).exists()


def test_spool_setting_is_checked():
    assert Config.from_env(environ={}).spool is True
    assert Config.from_env(environ={"GLEANPIPE_SPOOL": "off"}).spool is False
    with pytest.raises(ValueError, match="GLEANPIPE_SPOOL must be on or off"):
        Config.from_env(environ={"GLEANPIPE_SPOOL": "maybe"})
    cfg = Config.from_env(environ={"GLEANPIPE_SPOOL_SEGMENT_BYTES": "4096", "GLEANPIPE_SPOOL_SEGMENT_SECONDS": "2"})
    assert (cfg.spool_segment_bytes, cfg.spool_segment_seconds) == (4096, 2)
    with pytest.raises(ValueError, match="GLEANPIPE_SPOOL_SEGMENT_BYTES must be positive"):
        Config.from_env(environ={"GLEANPIPE_SPOOL_SEGMENT_BYTES": "0"})


def test_the_largest_segment_age_allowed_still_commits(store):
    """GLEANPIPE_SPOOL_SEGMENT_SECONDS is the committer's sleep timeout: 10**10 s overflowed it, the
    committer thread died and every append waited forever. Its bound, 86400, is refused above and
    works at the bound."""
    most = Config.from_env(environ={"GLEANPIPE_SPOOL_SEGMENT_SECONDS": "86400"}).spool_segment_seconds
    with pytest.raises(ValueError, match="^GLEANPIPE_SPOOL_SEGMENT_SECONDS must be at most 86400, got 86401$"):
        Config.from_env(environ={"GLEANPIPE_SPOOL_SEGMENT_SECONDS": "86401"})
    writer = SpoolWriter(store.root / SPOOL, 1 << 20, most)
    key, data = raw()
    done = threading.Thread(target=writer.append, args=(key, data), daemon=True)
    done.start()
    done.join(10)
    assert not done.is_alive() and writer.syncs == 1
    writer.close()
    [(_, _, got_key, got)] = list(decode_records(segments(store)[0].read_bytes()))
    assert (got_key, got) == (key, data)


def test_segments_rotate_by_size_and_finished_ones_are_deleted(store):
    writer = SpoolWriter(store.root / SPOOL, 3000, 3600)
    pings = [raw(seq=i) for i in range(6)]  # about 1 KB each: a new segment every 3 records
    for key, data in pings:
        writer.append(key, data)
    assert len(segments(store)) == 2
    reader = SpoolReader(store)
    got = reader.pending(100)
    assert [k for _, k in got] == [k for k, _ in pings]
    reader.ack([r for r, _ in got])
    assert len(segments(store)) == 1  # the finished one is gone, the open one is kept
    writer.close()
    reader.pending(100)
    reader.ack([])
    assert segments(store) == []


def test_a_finished_segment_is_kept_until_every_record_it_gave_is_acknowledged(store):
    """Its writer gone and every record read, a segment is still kept while a record it turned into
    an object is not acknowledged (loaded): after a crash, the next serve's replay of the segment is
    the only thing that would load that object (it has no inbox receipt)."""
    pings, seg = spooled(store, 2)
    reader = SpoolReader(store)
    got = reader.pending(10)
    assert [k for _, k in got] == [k for k, _ in pings]
    assert [store.get(k) for k, _ in pings] == [d for _, d in pings]  # the objects exist already
    reader.ack([])  # a look of the loader that acknowledges nothing
    reader.ack([got[0][0]])  # one of the two loaded
    assert segments(store) == [seg] and reader.stats["segments_deleted"] == 0
    after_a_crash = SpoolReader(store)
    assert [k for _, k in after_a_crash.pending(10)] == [k for k, _ in pings]
    reader.ack([got[1][0]])
    assert segments(store) == [] and reader.stats["segments_deleted"] == 1


def test_segments_rotate_by_age_and_a_stale_unnamed_segment_is_removed(store):
    writer = SpoolWriter(store.root / SPOOL, 1 << 20, 1)
    writer.append(*raw(seq=1))
    time.sleep(1.05)
    writer.append(*raw(seq=2))  # over GLEANPIPE_SPOOL_SEGMENT_SECONDS: a new segment
    assert len(segments(store)) == 2
    writer.close()
    # what a crash between creating a segment and naming it leaves (never written to)
    stale = store.root / SPOOL / f"{time.time_ns() - 120 * 10**9:020d}-1-deadbeef.seg.new"
    fresh = store.root / SPOOL / f"{time.time_ns():020d}-1-cafef00d.seg.new"
    stale.write_bytes(b"")
    fresh.write_bytes(b"")
    reader = SpoolReader(store)
    reader.ack([r for r, _ in reader.pending(10)])
    assert segments(store) == [] and not stale.exists() and fresh.exists()


def test_an_idle_writer_lets_its_segment_go_once_it_is_old_enough(store):
    """No ping after the first: the committer still releases the segment once it is
    GLEANPIPE_SPOOL_SEGMENT_SECONDS old, so the reader can load it and delete it."""
    writer = SpoolWriter(store.root / SPOOL, 1 << 20, 1)
    first = raw(seq=1)
    writer.append(*first)
    reader = SpoolReader(store)
    reader.ack([r for r, _ in reader.pending(10)])
    assert len(segments(store)) == 1  # still held by its writer
    deadline = time.monotonic() + 5
    while segments(store) and time.monotonic() < deadline:
        time.sleep(0.1)
        reader.ack([r for r, _ in reader.pending(10)])
    assert segments(store) == [] and reader.stats["segments_deleted"] == 1
    assert store.get(first[0]) == first[1]
    writer.append(*raw(seq=2))  # the writer carries on in a new segment
    assert len(segments(store)) == 1
    writer.close()


# --- real processes: kill -9 in the middle of the load ----------------------------------------


def _tree(pid: int) -> list[int]:
    """pid and all its running descendants, from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


@contextmanager
def _load(port: int, n_threads: int = 8) -> Iterator[list]:
    """Threads that POST distinct pings while the block runs; each 200's document id goes into
    the list it yields. Leaving the block stops them."""
    acked, stop = [], threading.Event()

    def run(t):
        conn, i = None, 0
        while not stop.is_set() and i < 5000:
            doc_id = str(uuid.uuid4())
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("POST", submit_path("metrics", doc_id), gz(make_ping(CLIENT, seq=i)), SDK_HEADERS)
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    acked.append(doc_id)
            except (OSError, http.client.HTTPException):
                if conn:
                    conn.close()
                conn = None
                time.sleep(0.01)
            i += 1

    threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(n_threads)]
    [t.start() for t in threads]
    try:
        yield acked
    finally:
        stop.set()
        [t.join(10) for t in threads]


def _wait_acks(acked: list, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(acked) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(acked) >= n, f"only {len(acked)} pings acknowledged"


def _check_loaded_once(server: ServeProcess, acked: list) -> None:
    sql = f"SELECT count(*) FROM {DATASET}.metrics_v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = server.try_query(f"SELECT document_id, count(*) FROM {DATASET}.metrics_v1 GROUP BY 1")
        if rows is not None and set(acked) <= {r[0] for r in rows}:
            break
        time.sleep(0.1)
    counts = dict(server.query(f"SELECT document_id, count(*) FROM {DATASET}.metrics_v1 GROUP BY 1")[1])
    missing = [d for d in acked if d not in counts]
    assert missing == [], f"{len(missing)} of {len(acked)} acknowledged pings not loaded"
    assert set(counts.values()) == {1}, "a ping was loaded twice"
    assert server.query(sql)[1][0][0] == len(counts)


def test_serve_starts_after_a_kill_9_that_followed_a_new_column_beside_a_json_one(data_dir):
    """Before: a kill -9 after a metric column was added to a table with an `object` metric (a
    JSON column) left a WAL that DuckDB could only replay after downloading its json extension:
    offline, `serve`, `status` and `query` all ended in a traceback, for good (upgrade audit)."""
    server = ServeProcess(data_dir).start()
    first = make_ping(metrics={"object": {"toolbox.open_tabs": [{"id": 1}]}})
    second = make_ping(metrics={"counter": {"toolbox.brand_new": 3}})  # adds a column: ALTER TABLE
    for n, ping in enumerate((first, second), 1):  # one load each: the second one alters the table
        assert post(server.url + submit_path("metrics"), gz(ping))[0] == 200
        assert server.wait_rows(f"SELECT count(*) FROM {DATASET}.metrics_v1", n) == n
    for pid in _tree(server.proc.pid):
        os.kill(pid, signal.SIGKILL)
    server.proc.wait()
    assert (data_dir / "warehouse.duckdb.wal").stat().st_size > 0  # the crash left the change in the WAL
    status = run_cli("status", "--data-dir", str(data_dir))
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    restarted = ServeProcess(data_dir).start()
    try:
        rows = restarted.query(f"SELECT metrics.object.toolbox_open_tabs::VARCHAR, metrics.counter.toolbox_brand_new "
                               f"FROM {DATASET}.metrics_v1 ORDER BY 2 NULLS FIRST")[1]
        assert rows == [('[{"id":1}]', None), (None, 3)]
    finally:
        assert restarted.stop() == 0


def test_kill_9_of_serve_and_gunicorn_mid_load_loses_no_acknowledged_ping(data_dir):
    data_dir.mkdir(parents=True)
    server = ServeProcess(data_dir).start()
    with _load(server.port) as acked:
        _wait_acks(acked, 400)
        deadline = time.monotonic() + 30  # and some loaded (the loader may lag on a busy machine)
        while not (server.try_query(f"SELECT count(*) > 0 FROM {DATASET}.metrics_v1") or [[False]])[0][0]:
            assert time.monotonic() < deadline, "serve loaded none of the acknowledged pings in 30 s"
            time.sleep(0.05)
        for pid in _tree(server.proc.pid):  # the whole pipeline dies at once, mid-request
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.proc.wait()
    assert list((data_dir / "store" / SPOOL).glob("*.seg")), "the crash left no spool segment to replay"
    # every acknowledged ping is in a spool file the crash left behind (no file was finished yet)
    status = subprocess.run([sys.executable, "-m", "gleanpipe.cli", "status", "--json", "--data-dir", str(data_dir)],
                            capture_output=True, text=True, timeout=60, check=True)
    spooled = {k for s in (data_dir / "store" / SPOOL).glob("*.seg") for _, _, k, _ in decode_records(s.read_bytes())}
    assert {f"raw/{APP}/metrics/1/{d}.json" for d in acked} <= spooled
    wh = DuckDBWarehouse(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        rows = {r[0] for r in wh.query(f"SELECT document_id FROM {DATASET}.metrics_v1")[1]}
    finally:
        wh.close()
    # waiting: every spooled ping that is no row yet, written out as an object or not (the
    # auditor's kill -9 under load: "waiting to load: 31", and 237 loaded on restart)
    waiting = {k for k in spooled if k.split("/")[-1][:-5] not in rows}
    assert len(waiting) < len(spooled), "serve had loaded none of them before the kill"
    assert orjson.loads(status.stdout)["pending"] == len(waiting)
    restarted = ServeProcess(data_dir).start()  # replays the spool left by the crash
    try:
        _check_loaded_once(restarted, acked)
        # what status said is what the restart loaded
        sql = f"SELECT count(*) FROM {DATASET}.metrics_v1"
        assert restarted.wait_rows(sql, len(rows) + len(waiting)) == len(rows) + len(waiting)
        assert restarted.admin.status()["pending"] == 0
    finally:
        assert restarted.stop() == 0
    assert sorted(p.name for p in (data_dir / "store" / SPOOL).iterdir()) == []  # all replayed and deleted
    server.log.close()


def test_status_after_a_crash_counts_what_serve_will_load_not_what_is_not_written_out(data_dir, store):
    """Serve writes out a whole batch of spool records as objects before it loads it: a crash in
    between left objects that nothing counted, and `status` said 3-10x too few were waiting. The
    state a crash leaves, built with the real writer, reader, loader and DuckDB file."""
    reserved_key, reserved = raw(doc_type="events_stream")  # its load is a load error, not a row
    pings = [raw(seq=i) for i in range(10)]
    copy = raw(pings[0][0].split("/")[-1][:-5], seq=99)  # a second copy of ping 0, spooled by another worker
    writer = SpoolWriter(store.root / SPOOL, 1 << 20, 3600)
    for key, data in [(reserved_key, reserved), *pings, copy]:
        writer.append(key, data)
    writer.close()
    reader = SpoolReader(store)
    assert [k for _, k in reader.pending(9)] == [reserved_key] + [k for k, _ in pings[:8]]  # a batch written out
    received = [raw(seq=20 + i) for i in range(2)]  # GLEANPIPE_SPOOL=off: an object and an inbox receipt each
    for key, data in received:
        assert store.put_new(key, data)
    wh = DuckDBWarehouse(str(data_dir / "warehouse.duckdb"))
    try:  # then the crash: only part of what was written out is loaded, and nothing acknowledged
        loaded = Loader(reader, wh).load_keys([reserved_key] + [k for k, _ in pings[:3]] + [received[0][0]])
        assert (loaded.inserted, loaded.errors) == (4, 1)
    finally:
        wh.close()
    # waiting: pings 3-7 (objects, not loaded), 8-9 (not written out) and the second receipt;
    # before, 2 spool records without an object and 2 receipts: 4
    status = run_cli("status", "--json", "--data-dir", str(data_dir))
    assert status.returncode == 0, status.stderr
    assert orjson.loads(status.stdout)["pending"] == 8
    assert "waiting to load: 8\n" in run_cli("status", "--data-dir", str(data_dir)).stdout
    restarted = ServeProcess(data_dir).start()
    try:  # and that is what serve loads when it starts again
        assert restarted.wait_rows(f"SELECT count(*) FROM {DATASET}.baseline_v1", 4 + 8) == 12
        deadline = time.monotonic() + 10
        while restarted.admin.status()["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert restarted.admin.status()["pending"] == 0
        assert restarted.query(f"SELECT count(*) FROM {DATASET}.baseline_v1")[1] == [(12,)]
    finally:
        assert restarted.stop() == 0
    assert orjson.loads(run_cli("status", "--json", "--data-dir", str(data_dir)).stdout)["pending"] == 0


def test_status_through_serve_counts_the_spool_and_writes_nothing_out(data_dir):
    """`status` while serve ran wrote every spool record out as an object to count it (up to a
    million, with disk syncs, holding the lock the loader and `replay` wait on): right after an
    outage a read command cost O(backlog) writes and delay. Pings spooled while the loader sleeps
    (GLEANPIPE_LOAD_INTERVAL_MS at its largest, 60 s) are counted, and still have no object."""
    data_dir.mkdir(parents=True)
    server = ServeProcess(data_dir, env={"GLEANPIPE_LOAD_INTERVAL_MS": "60000"}).start()
    try:
        for seq in range(6):
            assert post(server.url + submit_path(), gz(make_ping(CLIENT, seq=seq)))[0] == 200
        status = run_cli("status", "--json", "--data-dir", str(data_dir))
        assert status.returncode == 0, status.stderr
        assert orjson.loads(status.stdout)["pending"] == 6
        assert "waiting to load: 6\n" in run_cli("status", "--data-dir", str(data_dir)).stdout
        assert list(LocalStore(data_dir / "store").list("raw/")) == []  # nothing written out by `status`
        assert server.try_query(f"SELECT count(*) FROM {DATASET}.baseline_v1") is None  # nor loaded meanwhile
    finally:
        assert server.stop() == 0
    restarted = ServeProcess(data_dir).start()
    try:  # and they are what serve loads
        assert restarted.wait_rows(f"SELECT count(*) FROM {DATASET}.baseline_v1", 6) == 6
    finally:
        assert restarted.stop() == 0


def test_kill_9_of_the_http_workers_mid_load_loses_no_acknowledged_ping(data_dir):
    """gunicorn restarts killed workers; serve keeps running and finishes their segments."""
    data_dir.mkdir(parents=True)
    server = ServeProcess(data_dir).start()
    with _load(server.port) as acked:
        _wait_acks(acked, 300)
        (master,) = children(server.proc.pid)
        for pid in _tree(master)[1:]:
            os.kill(pid, signal.SIGKILL)
        n = len(acked)
        _wait_acks(acked, n + 300)  # the new workers take pings again
    try:
        _check_loaded_once(server, acked)
    finally:
        assert server.stop() == 0


def test_serve_with_the_spool_off_writes_one_object_per_ping(data_dir):
    data_dir.mkdir(parents=True)
    server = ServeProcess(data_dir, env={"GLEANPIPE_SPOOL": "off"}).start()
    try:
        doc_id = str(uuid.uuid4())
        payload = orjson.dumps(make_ping(CLIENT, seq=3), option=orjson.OPT_INDENT_2)  # stored as sent, not re-serialised
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("POST", submit_path("metrics", doc_id), gz(payload), SDK_HEADERS)
        resp = conn.getresponse()
        assert (resp.status, resp.getheader("X-Gleanpipe-Stored")) == (200, "new")
        obj = data_dir / "store" / f"raw/{APP}/metrics/1/{doc_id}.json"
        meta, stored = rawobject.decode(obj.read_bytes())  # there before any load
        assert (stored, meta["document_id"], meta["doc_type"]) == (payload, doc_id, "metrics")
        assert server.wait_rows(f"SELECT count(*) FROM {DATASET}.metrics_v1", 1) == 1
        assert server.query(f"SELECT document_id, ping_info.seq, client_info.client_id FROM {DATASET}.metrics_v1")[1] \
            == [(doc_id, 3, CLIENT)]
        assert list((data_dir / "store" / SPOOL).glob("*.seg")) == []
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("stop", ["kill -9", "Ctrl-C"])
def test_serve_with_the_spool_off_loads_what_a_spool_left_behind(data_dir, stop):
    """Found by a randomized crash soak that switched GLEANPIPE_SPOOL between restarts: a serve
    started with the spool off never read the spool an earlier serve left (by a kill -9, or by a
    clean stop before its loader's next look). Its acknowledged pings were no rows, `status`
    through serve said nothing waited, and a re-send of one with another body was stored `new`
    and became its row, until a serve with the spool on ran again."""
    data_dir.mkdir(parents=True)
    server = ServeProcess(data_dir, env={"GLEANPIPE_LOAD_INTERVAL_MS": "60000"}).start()  # the loader sleeps
    docs = [str(uuid.uuid4()) for _ in range(5)]
    for seq, doc_id in enumerate(docs):
        status, _, headers = post(server.url + submit_path("metrics", doc_id), gz(make_ping(CLIENT, seq=seq)))
        assert (status, headers["X-Gleanpipe-Stored"]) == (200, "new")
    if stop == "kill -9":
        for pid in _tree(server.proc.pid):
            os.kill(pid, signal.SIGKILL)
        server.proc.wait()
        server.log.close()
    else:
        assert server.stop() == 0
    assert list((data_dir / "store" / SPOOL).glob("*.seg")), "nothing was left in the spool"
    restarted = ServeProcess(data_dir, env={"GLEANPIPE_SPOOL": "off"}).start()
    try:
        sql = f"SELECT count(*) FROM {DATASET}.metrics_v1"
        assert restarted.wait_rows(sql, 5, timeout=30) == 5
        status, _, headers = post(restarted.url + submit_path("metrics", docs[0]), gz(make_ping(CLIENT, seq=99)))
        assert (status, headers["X-Gleanpipe-Stored"]) == (200, "duplicate")
        assert restarted.query(f"SELECT document_id, ping_info.seq FROM {DATASET}.metrics_v1 ORDER BY 2")[1] \
            == [(d, seq) for seq, d in enumerate(docs)]
        until(lambda: restarted.admin.status()["pending"] == 0, "nothing waiting", timeout=30)
        until(lambda: not list((data_dir / "store" / SPOOL).glob("*.seg")), "the spool's files deleted once loaded",
              timeout=30)
    finally:
        assert restarted.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs, which needs root")
def test_a_full_disk_gets_503s_and_no_new_segment_per_batch(tmp_path):
    """Before: every batch that failed on a full disk left its segment and opened a new one, which
    the next batch failed to write as well: 24,719 empty segments in 20 s on a 4 MiB disk. A real
    full disk: a 1 MiB tmpfs, filled by a file, emptied again."""
    with small_disk(tmp_path) as disk:
        store = LocalStore(disk / "store")
        writer = SpoolWriter(store.root / SPOOL, 1 << 20, 3600)
        writer.append(*raw(seq=0))  # the segment exists and holds one record
        filler = disk / "filler"
        fill_disk(filler)
        for seq in range(1, 21):  # each record larger than a page: it cannot fit in what the segment has
            key, _ = raw(seq=seq)
            with pytest.raises(StoreError, match="No space left on device"):
                writer.append(key, b"x" * 10_000)
        # the first failure may leave part of its record (the rest of the last page): a fresh segment
        # after it; then nothing reaches the disk, and the same segment is tried again
        assert len(segments(store)) == 2
        filler.unlink()
        later = raw(seq=99)
        writer.append(*later)
        writer.close()
        assert len(segments(store)) == 2
        assert [k for _, _, k, _ in decode_records(segments(store)[-1].read_bytes())] == [later[0]]


def test_a_store_that_fails_every_ping_is_logged_once_per_interval_with_a_count(tmp_path, caplog):
    """A full disk: each ping gets its 503 (the SDK retries), but the log got a line per ping, 37,235
    in 25 s, perhaps onto the full disk itself. One line per SubmitHandler.STORE_ERROR_LOG_S now,
    and the next one counts the 503s between. A real full disk: a 1 MiB tmpfs, filled by a file."""
    import logging

    with small_disk(tmp_path) as disk:
        store = LocalStore(disk / "store")
        fill_disk(disk / "filler")
        handler = SubmitHandler(Config.from_env(environ={"GLEANPIPE_DEBUG_INDEX": "off"}), store)
        headers = {k.lower(): v for k, v in {**SDK_HEADERS, "Content-Encoding": "gzip"}.items()}
        send = lambda: handler.handle("POST", submit_path("metrics", str(uuid.uuid4())), headers, gz(make_ping()))
        with caplog.at_level(logging.WARNING, logger="gleanpipe.submit"):
            assert [send().status for _ in range(30)] == [503] * 30
            lines = [r.getMessage() for r in caplog.records if "503 for" in r.getMessage()]
            assert len(lines) == 1 and "No space left on device" in lines[0] and "more 503s" not in lines[0]
            # the interval is over: only the rate limit's window is shortened (on this handler),
            # the store, its full disk and the 503 are all real
            handler.STORE_ERROR_LOG_S = 0
            assert send().status == 503
            lines = [r.getMessage() for r in caplog.records if "503 for" in r.getMessage()]
        assert len(lines) == 2 and lines[1].endswith("(and 29 more 503s since the last such line)"), lines


def test_a_segment_that_cannot_be_retired_is_said_once_a_minute_not_per_look(tmp_path, caplog):
    """Before: with `.spool` not writable, "could not retire spool segments yet" was logged on every
    look of the loader, about 20 times a second. A real fault: the store is on a tmpfs of its own,
    remounted read-only once the pings are materialised, so the segment's unlink fails (EROFS;
    folder permissions would not do: the suite runs as root, which they do not stop)."""
    with small_disk(tmp_path) as disk:
        store = LocalStore(disk / "store")
        _, seg = spooled(store, 2)
        reader = SpoolReader(store)
        receipts = [receipt for receipt, _ in reader.pending(10)]  # materialised while it can be written
        assert len(receipts) == 2
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with caplog.at_level("WARNING", logger="gleanpipe.spool"):
            reader.ack(receipts)
            for _ in range(50):  # as the loader looks, every few milliseconds
                reader.ack([receipt for receipt, _ in reader.pending(10)])
        warnings = [r.getMessage() for r in caplog.records if "could not retire spool segments yet" in r.getMessage()]
        assert len(warnings) == 1 and "Read-only file system" in warnings[0] and seg.name in warnings[0], warnings
        assert len(segments(store)) == 1  # kept until it can be retired


def test_a_record_of_exactly_the_largest_body_is_loaded_and_one_byte_more_is_refused(store):
    """The reader takes a record whose body is at most MAX_BODY bytes as intact (spool.py), so the
    writer must refuse (503) one byte more rather than acknowledge it: the reader would skip such
    a record as damage, and the ping it had acknowledged would be lost. A body of exactly MAX_BODY
    is written, read back and made the object, whole."""
    from gleanpipe.storage.spool import HEAD, KEYLEN, MAX_BODY

    writer = SpoolWriter(store.root / SPOOL, 1 << 30, 3600)
    key, _ = raw()
    room = MAX_BODY - KEYLEN.size - len(key)  # object bytes that make a body of exactly MAX_BODY
    with pytest.raises(StoreError, match=f"^a spool record holds at most {MAX_BODY} bytes, this one has {MAX_BODY + 1}$"):
        writer.append(key, b"x" * (room + 1))
    data = b"y" * room
    writer.append(key, data)
    writer.close()
    (seg,) = segments(store)
    assert seg.stat().st_size == HEAD.size + MAX_BODY  # the header and the one record: nothing of the refused one
    reader = SpoolReader(store)
    [(receipt, got)] = reader.pending(10)
    assert got == key and store.get(key) == data
    reader.ack([receipt])
    assert segments(store) == [] and reader.stats["torn_bytes"] == 0


def test_each_new_segments_name_is_fsynced_before_its_first_record_is_acknowledged(store, monkeypatch):
    """A record's fdatasync makes its bytes durable, not the segment's name in the spool folder:
    after a power cut a segment whose name was never synced may be gone, with every record the
    edge acknowledged in it. So each new segment (the first, and each one after a rotation) has
    its folder fsynced once it has its name, before the append that opened it returns. A power
    cut cannot be caused here: the real fsyncs run, the wrapper records which .seg names the
    folder held at each one."""
    from gleanpipe.storage import spool_writer

    folder = store.root / SPOOL
    events, real = [], spool_writer.fsync_dir

    def recording(path):
        real(path)
        if os.fspath(path) == os.fspath(folder):
            events.append(("fsync_dir", {p.name for p in folder.glob("*.seg")}))

    monkeypatch.setattr(spool_writer, "fsync_dir", recording)
    writer = SpoolWriter(folder, 1, 3600)  # a new segment for each batch (rotation by size)
    for seq in range(3):
        writer.append(*raw(seq=seq))
        events.append(("acked", {p.name for p in folder.glob("*.seg")}))
    writer.close()
    names = [p.name for p in segments(store)]
    assert len(names) == 3
    for name in names:
        acked = next(i for i, (what, seen) in enumerate(events) if what == "acked" and name in seen)
        assert any(what == "fsync_dir" and name in seen for what, seen in events[:acked]), (name, events)


def test_damage_in_a_records_object_bytes_is_caught_by_its_checksum(store, caplog):
    """Only the crc32 tells damage in a record's object bytes (or a key byte changed to another
    ASCII one) from an intact record: the length, magic and key all still read. The damaged
    record must not become an object (create-only, it would stay the ping for ever): the reader
    skips it, and says so, and the records around it load as they were written."""
    import logging

    pings, seg = spooled(store, 3)
    buf = bytearray(seg.read_bytes())
    first, second = (len(encode_record(*p)) for p in pings[:2])
    assert [k for _, _, k, _ in decode_records(bytes(buf))] == [k for k, _ in pings]
    buf[first + second - 5] ^= 0x01  # in the second record's object bytes: its last few, the ping's JSON
    buf[first + 12 + 2 + 4] ^= 0x01  # and a key byte ("raw/" + 1 byte on): still ASCII
    assert [k for _, _, k, _ in decode_records(bytes(buf))] == [pings[0][0]]
    seg.write_bytes(bytes(buf))
    reader = SpoolReader(store)
    with caplog.at_level(logging.WARNING, logger="gleanpipe.spool"):
        assert [k for _, k in reader.pending(10)] == [pings[0][0], pings[2][0]]
    assert [store.get(k) for k in (pings[0][0], pings[2][0])] == [pings[0][1], pings[2][1]]
    assert list(store.list("raw/")) == sorted([pings[0][0], pings[2][0]])  # nothing of the damaged one
    assert reader.stats["torn_bytes"] == second
    (said,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert f"skipped {second} damaged bytes at offset {first}" in said


def test_a_segment_is_deleted_only_after_a_syncfs_that_made_its_objects_durable(store, monkeypatch):
    """The reader writes objects out unsynced (put_unsynced); the segment is their only durable
    copy until one syncfs of the store's file system. Deleting it first, a power cut could take
    both the objects and the records of pings that were acknowledged. A power cut cannot be
    caused here: a spy (which calls through) records, at each syncfs, which segments and objects
    there were; the segment must be there at a syncfs that came after its objects, and go after it."""
    from gleanpipe.storage import spool_reader

    pings, seg = spooled(store, 2)
    events, real = [], spool_reader._syncfs

    def syncfs(path):
        real(path)
        events.append((seg.exists(), all((store.root / k).exists() for k, _ in pings)))

    monkeypatch.setattr(spool_reader, "_syncfs", syncfs)
    reader = SpoolReader(store)
    got = reader.pending(10)
    assert [k for _, k in got] == [k for k, _ in pings] and events == []  # nothing retired yet
    reader.ack([r for r, _ in got])
    assert segments(store) == [] and reader.stats["segments_deleted"] == 1
    assert events == [(True, True)]  # one syncfs, with the objects written and the segment not yet deleted


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs, which needs root")
def test_a_record_that_cannot_be_written_out_is_not_handed_to_the_loader(tmp_path):
    """A full disk while serve writes spooled pings out as objects: the look fails (the loader
    logs it and tries again) and hands out no receipt for a record whose object was not written;
    else the loader would find no object, drop the receipt after its grace, and the segment, the
    ping's only copy, would be retired. A real full disk: a 1 MiB tmpfs, filled, emptied again."""
    with small_disk(tmp_path) as disk:
        store = LocalStore(disk / "store")
        pings, seg = spooled(store, 2)
        filler = disk / "filler"
        fill_disk(filler)
        reader = SpoolReader(store)
        with pytest.raises(StoreError, match="No space left on device"):
            reader.pending(10)
        assert list(store.list("raw/")) == [] and segments(store) == [seg]
        with pytest.raises(StoreError, match="No space left on device"):  # and at each look while it is full
            reader.pending(10)
        filler.unlink()
        got = reader.pending(10)
        assert [k for _, k in got] == [k for k, _ in pings]
        assert [store.get(k) for k, _ in pings] == [d for _, d in pings]  # whole
        reader.ack([r for r, _ in got])
        assert segments(store) == [] and reader.stats["materialised"] == 2
