"""The RawStore contract on every backend: a local folder, fake-gcs-server (gs://) and moto (s3://).

Each test gets a fresh bucket with a key prefix (see emulators.cloud_store_url), so the
prefix handling is exercised everywhere.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from gleanpipe.storage import ObjectMissing, StoreError, open_store
from gleanpipe.storage.cloud import CloudOptions

from emulators import STORE_KINDS, closed_port, unique_bucket

KEY = "raw/org-example-toolbox/baseline/1/0a1b2c3d-0000-4000-8000-000000000001.json"

EVERY_STORE = pytest.mark.parametrize("cloud_store_url", STORE_KINDS, indirect=True)


@pytest.fixture
def store(cloud_store_url):
    s = open_store(cloud_store_url)
    yield s
    s.close()


@EVERY_STORE
def test_put_new_is_create_only(store):
    assert store.put_new(KEY, b"first bytes") is True
    assert store.put_new(KEY, b"second bytes, never stored") is False
    assert store.get(KEY) == b"first bytes"
    assert list(store.list("raw/")) == [KEY]


@EVERY_STORE
def test_concurrent_writers_of_one_key_exactly_one_wins(store):
    results: dict[int, bool] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def write(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = store.put_new(KEY, f"writer {i}".encode())
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    winners = [i for i, won in results.items() if won]
    assert len(results) == 8 and len(winners) == 1
    assert store.get(KEY) == f"writer {winners[0]}".encode()  # the winner's bytes, whole


@EVERY_STORE
def test_get_of_a_missing_key_raises_object_missing(store):
    with pytest.raises(ObjectMissing):
        store.get("raw/org-example-toolbox/baseline/1/never-written.json")
    assert issubclass(ObjectMissing, StoreError)  # callers that only know StoreError still see it


@EVERY_STORE
def test_list_with_prefix_is_sorted_and_strips_the_store_prefix(store):
    keys = [
        "raw/b-app/metrics/1/2.json",
        "raw/a-app/baseline/1/1.json",
        "raw/a-app/baseline/1/0.json",
        "raw/a-app/events/1/3.json",
        "errors/2026-11-23/schema/4.json",
    ]
    for i, key in enumerate(keys):
        assert store.put_new(key, f"{i}".encode(), notify=False)
    assert list(store.list("raw/a-app/")) == [
        "raw/a-app/baseline/1/0.json", "raw/a-app/baseline/1/1.json", "raw/a-app/events/1/3.json"]
    assert list(store.list("errors/")) == ["errors/2026-11-23/schema/4.json"]
    assert list(store.list("raw/zzz/")) == []
    everything = [k for k in store.list("") if not k.startswith(".")]
    assert everything == sorted(keys)
    assert store.get("raw/a-app/events/1/3.json") == b"3"


@pytest.mark.parametrize("cloud_store_url", ["gcs", "s3"], indirect=True)
def test_listing_follows_pages(store):
    store.list_page_size = 2  # 7 keys -> 4 listing requests
    keys = [f"raw/app/metrics/1/{i:02d}.json" for i in range(7)]
    for key in reversed(keys):
        assert store.put_new(key, b"x", notify=False)
    assert list(store.list("raw/")) == keys


@pytest.mark.parametrize("cloud_store_url", ["local", "gcs", "s3"], indirect=True)
def test_delete_removes_one_object_and_tolerates_a_missing_one(store):
    assert store.put_new("debug/tag/1.json", b"1", notify=False)
    assert store.put_new("debug/tag/2.json", b"2", notify=False)
    store.delete("debug/tag/1.json")
    store.delete("debug/tag/1.json")  # already gone: no error
    assert list(store.list("debug/")) == ["debug/tag/2.json"]
    assert store.put_new("debug/tag/1.json", b"again", notify=False)  # the name is free again
    assert store.get("debug/tag/1.json") == b"again"


@pytest.mark.parametrize("cloud_store_url", ["local"], indirect=True)
def test_listing_a_whole_local_store_skips_its_own_folders(store):
    """list("") gives the keys only: not the inbox receipts (.inbox), temp files (.tmp) or spool."""
    keys = ["raw/a-app/baseline/1/0.json", "errors/2026-11-23/schema/1.json"]
    assert store.put_new(keys[0], b"0") and store.put_new(keys[1], b"1", notify=False)
    (store.root / ".tmp" / "left-by-a-killed-writer").write_bytes(b"x")
    (store.root / ".spool").mkdir()
    (store.root / ".spool" / "1.seg").write_bytes(b"x")
    assert len(list((store.root / ".inbox").iterdir())) == 1
    assert list(store.list("")) == sorted(keys)


@pytest.mark.parametrize("cloud_store_url", ["local"], indirect=True)
def test_local_inbox_receipts_come_back_oldest_first(store):
    """pending(n): the n oldest receipts, in the order their objects were written (not by key)."""
    keys = [f"raw/a-app/baseline/1/{i:02d}.json" for i in reversed(range(20))]
    for key in keys:
        assert store.put_new(key, b"x")
    assert [key for _, key in store.pending(5)] == keys[:5]
    assert [key for _, key in store.pending(100)] == keys


@pytest.mark.parametrize("cloud_store_url", ["local"], indirect=True)
def test_local_copies_of_one_key_leave_one_inbox_receipt(store):
    """A copy that finds the key taken ("duplicate") removes the receipt it linked first: the
    loader gets the object once, and "waiting to load" counts it once. Sequential copies, then
    eight at once."""
    assert store.put_new(KEY, b"first") is True
    assert store.put_new(KEY, b"again") is False
    assert [key for _, key in store.pending(100)] == [KEY]
    other = "raw/a-app/baseline/1/other.json"
    barrier = threading.Barrier(8)
    results = []

    def write() -> None:
        barrier.wait(timeout=30)
        results.append(store.put_new(other, b"x"))

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [False] * 7 + [True]
    assert [key for _, key in store.pending(100)] == [KEY, other]
    assert sorted(p.name for p in store.inbox.iterdir()) == [name for name, _ in store.pending(100)]


@EVERY_STORE
def test_large_payload_round_trips_and_stays_create_only(store):
    # Over 8 MiB: the size at which google-cloud-storage would switch to a resumable upload,
    # where fake-gcs-server ignores the create-only precondition.
    big = bytes(range(256)) * (33 * 1024 + 7)
    assert len(big) > 8 * 1024 * 1024
    assert store.put_new(KEY, big) is True
    assert store.put_new(KEY, b"small") is False
    assert store.get(KEY) == big


@EVERY_STORE
def test_unsafe_keys_are_refused(store):
    for key in ("../escape.json", "raw/../../x", "", "raw/a b.json"):
        with pytest.raises(ValueError):
            store.put_new(key, b"x")


@EVERY_STORE
def test_a_key_with_a_part_starting_with_a_dot_is_refused_the_same_way_by_every_store(store):
    """One key rule (storage.base.check_key) for the local and the cloud stores: no part may start
    with "." (the cloud stores refused only "." and ".." parts, the local store any hidden name)."""
    for key in (".inbox/x.json", "raw/.hidden/1/x.json", "raw/app/..json", "./raw/x.json", "raw/../x.json"):
        for call in (lambda: store.put_new(key, b"x", notify=False), lambda: store.get(key),
                     lambda: store.delete(key)):
            with pytest.raises(ValueError) as info:
                call()
            assert str(info.value) == f"unsafe object key: {key!r}"
    assert [k for k in store.list("") if not k.startswith(".")] == []  # nothing was written
    assert store.put_new("raw/_app-1.x/doc_type/1/a.b.json", b"x", notify=False)  # a dot inside a part is fine


@EVERY_STORE
def test_object_key_maps_notification_names_back_to_keys(store, cloud_store_url):
    if cloud_store_url.startswith("file://"):
        assert store.object_key("anything", KEY) == KEY
        return
    bucket = cloud_store_url.split("/")[2]
    assert store.object_key(bucket, f"some/prefix/{KEY}") == KEY
    assert store.object_key(bucket, KEY) is None  # outside the store's prefix
    assert store.object_key("another-bucket", f"some/prefix/{KEY}") is None


# --- failures: StoreError, never a hang ------------------------------------------------------


@pytest.mark.parametrize("cloud_store_url", ["gcs", "s3"], indirect=True)
def test_unreachable_endpoint_raises_store_error_within_the_retry_budget(cloud_store_url, monkeypatch):
    port = closed_port()  # a real closed loopback port: connections are refused
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GLEANPIPE_STORE_RETRY_S", "0.5")
    monkeypatch.setenv("GLEANPIPE_STORE_TIMEOUT_S", "2")
    store = open_store(cloud_store_url)
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot write") as info:
        store.put_new(KEY, b"x")
    assert "gave up after" in str(info.value)  # it did retry, then stopped
    with pytest.raises(StoreError, match="cannot read"):
        store.get(KEY)
    with pytest.raises(StoreError, match="cannot list"):
        list(store.list("raw/"))
    with pytest.raises(StoreError, match="cannot delete"):
        store.delete(KEY)
    assert time.monotonic() - started < 20
    assert not isinstance(info.value, ObjectMissing)


@pytest.mark.parametrize("cloud_store_url", ["gcs", "s3"], indirect=True)
def test_missing_bucket_is_a_store_error_not_a_duplicate(cloud_store_url):
    scheme = cloud_store_url.split("://")[0]
    store = open_store(f"{scheme}://{unique_bucket()}/p")  # never created
    with pytest.raises(StoreError) as info:
        store.put_new(KEY, b"x")
    assert "404" in str(info.value)


def test_options_from_env_are_checked():
    assert CloudOptions.from_env({}) == CloudOptions(timeout_s=3.0, retry_s=3.0)
    assert CloudOptions.from_env({"GLEANPIPE_STORE_RETRY_S": "0", "GLEANPIPE_STORE_TIMEOUT_S": "2.5"}) == \
        CloudOptions(timeout_s=2.5, retry_s=0.0)
    for env, raw in (("GLEANPIPE_STORE_TIMEOUT_S", "0"), ("GLEANPIPE_STORE_TIMEOUT_S", "soon"),
                     ("GLEANPIPE_STORE_RETRY_S", "-1"), ("GLEANPIPE_STORE_RETRY_S", "nan")):
        with pytest.raises(ValueError, match=env):
            CloudOptions.from_env({env: raw})


@pytest.mark.parametrize("url, message", [
    ("gs://", "store URL must look like"),
    ("gs://UPPER/x", "bucket name"),
    ("s3://ok-bucket/bad prefix", "prefix may hold only"),
    ("s3://ok-bucket/../x", "prefix may hold only"),
    ("ftp://x/y", "unknown store scheme"),
])
def test_bad_store_urls_get_a_clear_error(url, message):
    with pytest.raises(ValueError, match=message):
        open_store(url)


def test_gcs_without_credentials_is_a_store_error_on_use(monkeypatch, tmp_path):
    """No emulator and no Application Default Credentials anywhere (a real, empty environment)."""
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud-config"))
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{closed_port()}")  # no metadata server either
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{closed_port()}")
    store = open_store("gs://some-bucket/p")  # opening does not need them yet
    with pytest.raises(StoreError, match="no Google Cloud credentials"):
        store.put_new(KEY, b"x")


@pytest.mark.parametrize("cloud_store_url", ["gcs"], indirect=True)
def test_gcs_emulator_host_may_be_given_without_a_scheme(cloud_store_url, monkeypatch):
    """STORAGE_EMULATOR_HOST may be host:port, as google-cloud-storage itself takes it: the store
    then talks http:// to it (create-only write, read, listing). Untested: every test set the
    variable with its scheme."""
    import os

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", os.environ["STORAGE_EMULATOR_HOST"].removeprefix("http://"))
    store = open_store(cloud_store_url)
    try:
        assert store.put_new(KEY, b"some ping bytes") is True
        assert store.get(KEY) == b"some ping bytes"
        assert store.put_new(KEY, b"other") is False
        assert list(store.list("raw/")) == [KEY]
    finally:
        store.close()


class FlakyProxy:
    """An HTTP proxy in front of an emulator that answers the next requests with planned errors
    (``fail(status, body)``) and forwards every other request. moto and fake-gcs-server never
    answer 409, 429 or 5xx on their own: this is the fault a real service sends, over real HTTP."""

    def __init__(self, upstream: str):
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.planned: list[tuple[int, bytes]] = []
        self.seen: list[tuple[str, int]] = []  # (method, status answered)
        self.requests: list[tuple[str, dict[str, str], bytes]] = []  # (method, headers, body) as they came
        up = urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests.append((self.command, {k.lower(): v for k, v in self.headers.items()}, body))
                if proxy.planned:
                    status, out, headers = *proxy.planned.pop(0), {}
                else:
                    conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                    conn.request(self.command, self.path, body=body, headers={
                        k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")})
                    resp = conn.getresponse()
                    status, out = resp.status, resp.read()
                    headers = {k: v for k, v in resp.getheaders()
                               if k.lower() not in ("content-length", "transfer-encoding", "connection")}
                    conn.close()
                proxy.seen.append((self.command, status))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def fail(self, status: int, body: bytes = b"") -> None:
        self.planned.append((status, body))

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxied(cloud_store_url, monkeypatch):
    """(store, its FlakyProxy, whether it is s3): the store's emulator behind a FlakyProxy."""
    import os

    s3 = cloud_store_url.startswith("s3://")
    variable = "AWS_ENDPOINT_URL" if s3 else "STORAGE_EMULATOR_HOST"
    proxy = FlakyProxy(os.environ[variable])
    monkeypatch.setenv(variable, proxy.url)
    store = open_store(cloud_store_url)
    yield store, proxy, s3
    store.close()
    proxy.stop()


def s3_error(code: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>planned</Message>'
            '<RequestId>1</RequestId></Error>').encode()


@pytest.mark.parametrize("cloud_store_url", ["gcs", "s3"], indirect=True)
def test_busy_and_failing_answers_are_retried_and_a_write_conflict_finds_the_winner(proxied):
    """cloud.py: a call is retried on HTTP 408/429/5xx; s3.py: a 409 (a competing conditional
    write in flight) is retried too, and the retry finds what is there. moto and fake-gcs-server
    never answer these, so no test saw a retry of any of them: the emulator sits behind FlakyProxy,
    which answers the planned errors and forwards the rest."""
    store, proxy, s3 = proxied
    busy = s3_error("TooManyRequests") if s3 else b'{"error": {"code": 429, "message": "rateLimitExceeded"}}'
    broken = s3_error("InternalError") if s3 else b'{"error": {"code": 503, "message": "backendError"}}'
    write = "PUT" if s3 else "POST"
    proxy.fail(429, busy)
    proxy.fail(503 if not s3 else 500, broken)
    assert store.put_new(KEY, b"first") is True
    assert proxy.seen == [(write, 429), (write, 503 if not s3 else 500), (write, 200)]
    proxy.seen.clear()
    proxy.fail(503 if not s3 else 500, broken)
    assert store.get(KEY) == b"first"
    failed, *then = proxy.seen  # (google-cloud-storage may GET twice for one download)
    assert failed == ("GET", 503 if not s3 else 500) and then and set(then) == {("GET", 200)}
    if s3:  # S3's answer while another conditional write of the key is in flight
        proxy.seen.clear()
        proxy.fail(409, s3_error("ConditionalRequestConflict"))
        assert store.put_new(KEY, b"second") is False  # then the winner's object is there: 412
        assert proxy.seen == [("PUT", 409), ("PUT", 412)]
        assert store.get(KEY) == b"first"


def test_local_put_new_returns_only_after_the_file_and_its_folder_are_fsynced(tmp_path, monkeypatch):
    """The submit function's 200 (and serve's with GLEANPIPE_SPOOL=off, and every error record)
    waits for LocalStore.put_new: the object's bytes must be fsynced before it is linked into
    place, and its folder after, before put_new returns. A power cut cannot be caused here, so
    the real os.fsync and os.link run, wrapped only to record the order (8 threads at once, so
    that the folder fsyncs are shared between them as in production)."""
    import os

    from gleanpipe.storage.local import LocalStore

    store = LocalStore(tmp_path / "store")
    lock, events = threading.Lock(), []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd):
        path, size = os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_size
        real_fsync(fd)
        with lock:
            events.append(("fsync", path, size))

    def link(src, dst, *args, **kwargs):
        real_link(src, dst, *args, **kwargs)
        with lock:
            events.append(("link", os.fspath(src), os.fspath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    keys = [f"raw/app-{i % 3}/baseline/1/0a1b2c3d-0000-4000-8000-{i:012d}.json" for i in range(8)]

    def write(key):
        data = key.encode() * 100
        assert store.put_new(key, data) is True
        with lock:
            events.append(("returned", key, len(data)))

    threads = [threading.Thread(target=write, args=(k,)) for k in keys]
    [t.start() for t in threads]
    [t.join(timeout=60) for t in threads]
    for key in keys:
        final = str(tmp_path / "store" / key)
        returned = events.index(("returned", key, len(key.encode()) * 100))
        [(linked, tmp)] = [(i, e[1]) for i, e in enumerate(events) if e[0] == "link" and e[2] == final]
        assert ("fsync", tmp, len(key.encode()) * 100) in events[:linked], key  # the bytes, whole, then the link
        assert any(e[0] == "fsync" and e[1] == os.path.dirname(final) for e in events[linked:returned]), key
    store.close()


def test_a_folder_fsync_that_fails_after_the_link_keeps_the_receipt_and_the_ping_loads_once(tmp_path, monkeypatch):
    """serve with GLEANPIPE_SPOOL=off (and the submit function) answer 503 when a folder fsync
    fails after the object was linked; the SDK's retry then gets "duplicate". Before: the 503
    also dropped the object's inbox receipt, so that acknowledged ping was never loaded.
    A mock: a directory fsync cannot be made to fail on this machine (no device-mapper, and
    tmpfs fsync never fails), so the store's fsync_dir raises EIO once; the rest is real."""
    import errno
    import uuid

    import orjson

    from conftest import APP, DATASET, make_ping
    from gleanpipe import rawobject
    from gleanpipe.load import Loader
    from gleanpipe.naming import DocumentPath
    from gleanpipe.serve import LoaderThread
    from gleanpipe.storage import local
    from gleanpipe.warehouse.duckdb import DuckDBWarehouse

    def raw(seq: int) -> tuple[str, bytes]:
        path = DocumentPath(APP, "baseline", "1", ids[seq])
        meta = {"submission_timestamp": "2026-11-23T08:00:00.000000Z", "headers": {}, "app_id": APP,
                "doc_type": "baseline", "version": "1", "document_id": path.document_id, "key": path.key}
        return path.key, rawobject.encode(meta, orjson.dumps(make_ping(seq=seq)))

    ids = {1: str(uuid.uuid4()), 2: str(uuid.uuid4())}
    store = local.LocalStore(tmp_path / "store")
    warehouse = DuckDBWarehouse(str(tmp_path / "warehouse.duckdb"))
    try:
        first, (key, data) = raw(1), raw(2)
        assert store.put_new(*first) is True  # its folders now exist: the next put_new fsyncs only in GroupSync
        real, calls = local.fsync_dir, []

        def failing_once(path):
            calls.append(str(path))
            if len(calls) == 1:
                raise OSError(errno.EIO, "Input/output error")
            real(path)

        monkeypatch.setattr(local, "fsync_dir", failing_once)
        with pytest.raises(StoreError, match="Input/output error"):
            store.put_new(key, data)  # the edge answers 503
        assert store.get(key) == data  # linked before the fsync failed
        assert [k for _, k in store.pending(10)] == [first[0], key]  # and its receipt is kept
        assert store.put_new(key, data) is False  # the SDK's retry: 200 "duplicate"
        assert str(store.inbox) in calls[1:]  # ...once the receipt's folder is fsynced too
        assert [k for _, k in store.pending(10)] == [first[0], key]

        thread = LoaderThread(store, Loader(store, warehouse), batch=100, interval_s=0.01)
        assert thread.step() == 2
        assert store.pending(10) == []
        rows = warehouse.query(f"SELECT document_id, ping_info.seq FROM {DATASET}.baseline_v1 ORDER BY 2")[1]
        assert rows == [(ids[1], 1), (ids[2], 2)]  # the ping of the 503 + retry, loaded once
    finally:
        warehouse.close()
        store.close()


@pytest.mark.parametrize("cloud_store_url", ["gcs", "s3"], indirect=True)
def test_a_listing_page_that_fails_is_asked_again_from_where_it_was(proxied):
    """cloud.CloudStore.list (the paging loop both stores share): a listing request answered 503
    is retried with the same page token, and the listing goes on to its end, each key once."""
    store, proxy, s3 = proxied
    keys = [f"raw/app/metrics/1/{i:02d}.json" for i in range(5)]
    for key in keys:
        assert store.put_new(key, b"x", notify=False)
    store.list_page_size = 2  # 5 keys -> 3 pages
    listing = store.list("raw/")
    assert [next(listing), next(listing)] == keys[:2]  # the first page
    proxy.seen.clear()
    proxy.fail(503, s3_error("ServiceUnavailable") if s3 else b'{"error": {"code": 503, "message": "backendError"}}')
    assert list(listing) == keys[2:]
    assert proxy.seen == [("GET", 503), ("GET", 200), ("GET", 200)]


@pytest.mark.parametrize("cloud_store_url", ["gcs", "s3"], indirect=True)
def test_cloud_clients_keep_pool_size_connections(store):
    """cloud.POOL_SIZE: the connections each store's client keeps open (one value for both)."""
    from gleanpipe.storage.cloud import POOL_SIZE

    assert POOL_SIZE == 32
    if store.scheme == "s3":
        assert store._client.meta.config.max_pool_connections == POOL_SIZE
    else:
        list(store.list("raw/"))  # the session is made on first use
        assert {a._pool_maxsize for a in store._session.adapters.values()} == {POOL_SIZE}


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs, which needs root")
def test_a_write_the_disk_takes_only_part_of_is_a_store_error_and_leaves_nothing(tmp_path):
    """A nearly full disk takes part of a write (os.write returns less than it was given) before it
    refuses the rest: put_new (the function's 200, and every error record) and put_unsynced (serve
    writing a spooled ping out) must fail, not store the cut bytes as the object, whose create-only
    write would then keep them for ever. A real disk: a 1 MiB tmpfs, filled, then 20 KB freed."""
    import os

    from conftest import fill_disk, small_disk
    from gleanpipe.storage.local import LocalStore

    with small_disk(tmp_path) as disk:
        store = LocalStore(disk / "store")
        assert store.put_new(KEY, b"first") is True  # the folders exist before the disk fills
        store.ack([r for r, _ in store.pending(10)])
        filler = disk / "filler"
        fill_disk(filler)
        os.truncate(filler, filler.stat().st_size - 20_000)
        data = b"x" * 100_000  # more than is free: the first write takes part of it
        other, spooled = KEY.replace("001.json", "002.json"), KEY.replace("001.json", "003.json")
        with pytest.raises(StoreError, match="No space left on device"):
            store.put_new(other, data)
        with pytest.raises(OSError, match="No space left on device"):
            store.put_unsynced(spooled, data)
        assert list(store.list("raw/")) == [KEY]  # no cut object under either key
        assert store.pending(10) == [] and list(store.tmp.iterdir()) == []
        filler.unlink()
        assert store.put_new(other, data) is True and store.get(other) == data  # written whole later
        assert store.put_unsynced(spooled, data) is True and store.get(spooled) == data


@pytest.mark.parametrize("cloud_store_url", ["gcs", "s3"], indirect=True)
def test_a_create_only_write_carries_the_checksum_of_its_bytes(proxied, monkeypatch):
    """gcs.py and s3.py: each upload carries the CRC32C (Cloud Storage) or CRC32 (S3) of the
    object's bytes, which the service checks before it keeps the object: bytes damaged on the way
    are refused (a 5xx for the edge, so the SDK retries), never stored as the ping. Neither
    emulator checks them (both took a wrong one), so this checks what goes over the wire, through
    FlakyProxy: the checksum is there, and it is that of the bytes sent. For S3 also with
    AWS_REQUEST_CHECKSUM_CALCULATION=when_required, where boto3 adds none of its own."""
    import base64
    import zlib

    import google_crc32c
    import orjson

    store, proxy, s3 = proxied
    if s3:
        monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
        store.close()
        store = open_store(store.url)  # its client reads the setting when it is made
    data = b"the object's bytes " * 100
    assert store.put_new(KEY, data) is True
    [(method, headers, body)] = proxy.requests
    if s3:
        assert method == "PUT"
        checksum = headers.get("x-amz-checksum-crc32")
        if checksum is None:  # sent as a trailer of an aws-chunked body
            assert headers["x-amz-trailer"] == "x-amz-checksum-crc32"
            checksum = body.rpartition(b"x-amz-checksum-crc32:")[2].split(b"\r\n")[0].decode()
        assert checksum == base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
        store.close()
    else:
        assert method == "POST"
        metadata = orjson.loads(body.split(b"\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0])
        assert metadata["crc32c"] == base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
        assert data in body
