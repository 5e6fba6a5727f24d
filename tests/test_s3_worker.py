"""The S3 trigger on moto: submit -> s3:// store -> S3 ObjectCreated notification -> SQS ->
`gleanpipe worker` -> DuckDB rows. The store prefix holds a `=`, which S3 sends URL-encoded
(`env%3Dprod`), so a key that was not decoded would not be found."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import orjson
import pytest
from functions_framework import create_app

from gleanpipe.load import Loader
from gleanpipe.storage import open_store
from gleanpipe.warehouse.duckdb import DuckDBWarehouse
from gleanpipe.worker import MAX_BATCH, S3QueueWorker

from conftest import APP, DATASET, ROOT, SDK_HEADERS, gz, make_ping, submit_path
from emulators import closed_port, unique_bucket

CLIENT = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d"
PREFIX = "env=prod/pings"


@pytest.fixture
def s3_pipeline(aws_env, fn_env, monkeypatch, tmp_path):
    bucket = unique_bucket()
    aws_env.create_bucket(bucket)
    queue_url = aws_env.sqs.create_queue(QueueName=f"raw-{uuid.uuid4().hex[:12]}",
                                         Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    arn = aws_env.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    aws_env.s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [{
        "QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": f"{PREFIX}/raw/"}]}}}]})
    url = f"s3://{bucket}/{PREFIX}"
    monkeypatch.setenv("GLEANPIPE_STORE_URL", url)
    return {"bucket": bucket, "queue": queue_url, "store_url": url, "sqs": aws_env.sqs, "s3": aws_env.s3,
            "warehouse": tmp_path / "worker.duckdb"}


def submit(count: int, launches_from: int = 1) -> list[str]:
    client = create_app(target="submit", source=str(ROOT / "functions" / "main.py")).test_client()
    ids = []
    for i in range(count):
        doc_id = str(uuid.uuid4())
        ping = make_ping(CLIENT, metrics={"counter": {"toolbox.launch_count": launches_from + i}})
        assert client.post(submit_path("baseline", doc_id), data=gz(ping), headers=SDK_HEADERS).status_code == 200
        ids.append(doc_id)
    return ids


def queue_depth(p) -> int:
    attrs = p["sqs"].get_queue_attributes(QueueUrl=p["queue"], AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def rows(path):
    wh = DuckDBWarehouse(str(path), read_only=True)
    try:
        return wh.query(f"SELECT document_id, metrics.counter.toolbox_launch_count FROM {DATASET}.baseline_v1 "
                        f"ORDER BY 2")[1]
    finally:
        wh.close()


def rows_of(w: S3QueueWorker):
    return w.loader.warehouse.query(f"SELECT document_id, metrics.counter.toolbox_launch_count FROM {DATASET}.baseline_v1")[1]


def worker_for(p, store=None) -> tuple[S3QueueWorker, DuckDBWarehouse]:
    wh = DuckDBWarehouse(str(p["warehouse"]))
    return S3QueueWorker(p["queue"], Loader(store or open_store(p["store_url"]), wh), wait_s=1), wh


def drain(w: S3QueueWorker, rounds: int = 5) -> None:
    """Receive until a receive comes back empty (at most ``rounds`` receives)."""
    for _ in range(rounds):
        if not w.poll_once():
            return


def test_worker_cli_loads_what_s3_announces(s3_pipeline, tmp_path):
    docs = submit(3, launches_from=5)
    p = s3_pipeline
    proc = subprocess.run(
        [sys.executable, "-m", "gleanpipe.cli", "worker", "--queue", p["queue"], "--store-url", p["store_url"],
         "--warehouse-url", f"duckdb://{p['warehouse']}", "--wait", "1", "--max-messages", "4"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    # four messages: the s3:TestEvent S3 sends when notifications are configured, then one per ping
    assert stats["received"] == 4 and stats["deleted"] == 4 and stats["ignored"] == 1
    assert stats["objects"] == 3 and stats["load"]["inserted"] == 3 and stats["load"]["errors"] == 0
    assert rows(p["warehouse"]) == [(docs[0], 5), (docs[1], 6), (docs[2], 7)]
    assert queue_depth(p) == 0


def test_a_message_delivered_twice_leaves_one_row(s3_pipeline):
    p = s3_pipeline
    [doc] = submit(1)
    received = p["sqs"].receive_message(QueueUrl=p["queue"], MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    bodies = [m["Body"] for m in received if "Records" in orjson.loads(m["Body"])]
    [body] = bodies
    record = orjson.loads(body)["Records"][0]
    assert record["eventName"].startswith("ObjectCreated:")
    assert record["s3"]["object"]["key"].startswith("env%3Dprod")  # keys come URL-encoded (moto: "/" too)
    for m in received:  # put them back: the worker gets the original delivery...
        p["sqs"].change_message_visibility(QueueUrl=p["queue"], ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    w, wh = worker_for(p)
    try:
        drain(w, rounds=2)
        assert rows_of(w) == [(doc, 1)]
        p["sqs"].send_message(QueueUrl=p["queue"], MessageBody=body)  # ...and then the same notification again
        drain(w, rounds=2)
    finally:
        wh.close()
    assert w.stats.objects == 2 and w.stats.counts["inserted"] == 1 and w.stats.counts["duplicates"] == 1
    assert rows(p["warehouse"]) == [(doc, 1)]
    assert queue_depth(p) == 0


def spy_on_receives(w) -> list[tuple[int, int]]:
    """(messages asked for, messages received) of each receive of worker ``w`` from now on: a spy
    on its SQS client that calls through to moto."""
    receives = []
    real = w.sqs.receive_message

    def receive(**kwargs):
        resp = real(**kwargs)
        receives.append((kwargs["MaxNumberOfMessages"], len(resp.get("Messages", []))))
        return resp

    w.sqs.receive_message = receive
    return receives


def test_one_receive_takes_at_most_max_batch_messages(s3_pipeline):
    p = s3_pipeline
    # a visibility timeout longer than the test, so a receive sees no message handed out before
    p["sqs"].set_queue_attributes(QueueUrl=p["queue"], Attributes={"VisibilityTimeout": "60"})
    docs = submit(12)  # 13 messages: S3's s3:TestEvent, then one per ping
    w, wh = worker_for(p)
    receives = spy_on_receives(w)
    try:
        w.run(once=True)
        assert receives == [(MAX_BATCH, 10)] and w.stats.received == w.stats.deleted == 10
        w.run(once=True)
        assert receives == [(10, 10), (10, 3)] and w.stats.received == w.stats.deleted == 13
        assert w.stats.objects == 12 and w.stats.counts["inserted"] == 12
    finally:
        wh.close()
    assert rows(p["warehouse"]) == [(doc, i + 1) for i, doc in enumerate(docs)]
    assert queue_depth(p) == 0


def test_max_messages_past_one_batch_is_received_a_batch_at_a_time(s3_pipeline):
    """`--max-messages 13`: SQS takes at most 10 per receive, so the worker asks for 10, then for
    the 3 still wanted, and stops."""
    p = s3_pipeline
    p["sqs"].set_queue_attributes(QueueUrl=p["queue"], Attributes={"VisibilityTimeout": "60"})
    submit(12)  # 13 messages: S3's s3:TestEvent, then one per ping
    w, wh = worker_for(p)
    receives = spy_on_receives(w)
    try:
        stats = w.run(max_messages=13)
    finally:
        wh.close()
    assert receives == [(10, 10), (3, 3)]
    assert (stats.received, stats.deleted, stats.objects, stats.counts["inserted"]) == (13, 13, 12, 12)
    assert queue_depth(p) == 0


def test_two_notifications_of_one_object_in_one_receive_load_it_once(s3_pipeline):
    """The same object named by two messages of one receive is loaded (and counted) once."""
    p = s3_pipeline
    [doc] = submit(1)
    received = p["sqs"].receive_message(QueueUrl=p["queue"], MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    [body] = [m["Body"] for m in received if "Records" in orjson.loads(m["Body"])]
    p["sqs"].send_message(QueueUrl=p["queue"], MessageBody=body)
    for m in received:  # visible again, with the copy: three messages, two of them naming the ping
        p["sqs"].change_message_visibility(QueueUrl=p["queue"], ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    w, wh = worker_for(p)
    try:
        assert w.poll_once() == 3
    finally:
        wh.close()
    assert (w.stats.received, w.stats.deleted, w.stats.ignored, w.stats.objects) == (3, 3, 1, 1)
    assert (w.stats.counts["inserted"], w.stats.counts["duplicates"]) == (1, 0)
    assert rows(p["warehouse"]) == [(doc, 1)]
    assert queue_depth(p) == 0


def test_a_failed_load_leaves_the_message_for_redelivery(s3_pipeline, monkeypatch):
    p = s3_pipeline
    [doc] = submit(1, launches_from=42)
    # The worker's S3 reads go to a closed port (a real connection failure); SQS still works.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("GLEANPIPE_STORE_RETRY_S", "0.2")
    broken, wh = worker_for(p)
    try:
        drain(broken, rounds=2)
    finally:
        wh.close()
    assert broken.stats.left_for_retry >= 1 and broken.stats.objects == 0
    assert queue_depth(p) == 1  # the ObjectCreated message is still there
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    time.sleep(1.2)  # the queue's visibility timeout: SQS delivers it again
    healthy, wh = worker_for(p)
    try:
        drain(healthy, rounds=2)
    finally:
        wh.close()
    assert rows(p["warehouse"]) == [(doc, 42)]
    assert queue_depth(p) == 0


def test_test_events_other_events_foreign_objects_and_junk_are_deleted_without_loading(s3_pipeline, caplog):
    p = s3_pipeline
    record = {"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": p["bucket"]},
                                                          "object": {"key": f"{PREFIX}/raw/x.json"}}}
    foreign = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "not-our-bucket"},
                                                        "object": {"key": f"{PREFIX}/raw/x.json"}}}
    for body in ({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": p["bucket"]},
                 {"Records": [record]}, {"Records": [foreign]}, "not json at all", {"Records": "nope"}):
        p["sqs"].send_message(QueueUrl=p["queue"], MessageBody=body if isinstance(body, str) else json.dumps(body))
    w, wh = worker_for(p)
    try:
        drain(w, rounds=3)
    finally:
        wh.close()
    assert w.stats.objects == 0 and w.stats.ignored >= 3 and w.stats.malformed == 2
    assert queue_depth(p) == 0
    text = caplog.text
    assert "not an S3 notification" in text and "not-our-bucket" in text


def test_worker_cli_rejects_a_queue_that_does_not_exist(aws_env, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "gleanpipe.cli", "worker", "--queue", f"{aws_env.url}/123456789012/missing-queue",
         "--data-dir", str(tmp_path), "--store-url", f"s3://{unique_bucket()}", "--wait", "0", "--once"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "cannot consume" in proc.stderr and "Traceback" not in proc.stderr


def test_the_long_running_worker_stops_at_once_for_a_queue_that_does_not_exist(aws_env, tmp_path):
    """A missing queue is no trouble to wait out (queue_trouble_is_transient): the worker without
    --once, which waits out an outage, ends at the first receive with exit code 1 and the reason.
    Untested before: only --once was run against a missing queue, and --once retries nothing."""
    queue = f"{aws_env.url}/123456789012/missing-queue"
    # a worker that retried would log "trying again" after its first receive and never end: the
    # timeout ends it (no clock is asserted: a Python start with boto3 on a busy 2-core VM varies)
    proc = subprocess.run(
        [sys.executable, "-m", "gleanpipe.cli", "worker", "--queue", queue, "--data-dir", str(tmp_path),
         "--store-url", f"s3://{unique_bucket()}", "--wait", "0"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert f"Error: cannot consume {queue}: An error occurred (AWS.SimpleQueueService.NonExistentQueue)" in proc.stderr
    assert "trying again" not in proc.stderr and "Traceback" not in proc.stderr


def test_the_region_comes_from_aws_region_too(aws_env, monkeypatch, tmp_path):
    """Before: AWS_REGION (set by Lambda and read by the newer AWS SDKs) was ignored, as this boto3
    reads only AWS_DEFAULT_REGION, so a worker for a queue in eu-west-1 asked us-east-1 and was
    told the queue does not exist."""
    import boto3

    sqs = boto3.client("sqs", region_name="eu-west-1", endpoint_url=aws_env.url)
    queue = sqs.create_queue(QueueName=f"raw-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    proc = subprocess.run(
        [sys.executable, "-m", "gleanpipe.cli", "worker", "--queue", queue, "--data-dir", str(tmp_path),
         "--store-url", f"s3://{unique_bucket()}", "--wait", "0", "--once"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["received"] == 0  # the queue was found, and is empty


@pytest.mark.parametrize("workers", ["0", "2"])
def test_replay_from_an_s3_store_into_a_fresh_warehouse(s3_pipeline, tmp_path, workers):
    """`gleanpipe replay --store-url s3://...`: every raw object, read from S3 (in worker processes
    with --workers 2, each opening the store itself), one row each; a second replay adds none."""
    docs = submit(3, launches_from=2)
    p = s3_pipeline
    warehouse = tmp_path / "replayed.duckdb"
    cmd = [sys.executable, "-m", "gleanpipe.cli", "replay", "--store-url", p["store_url"],
           "--warehouse-url", f"duckdb://{warehouse}", "--workers", workers, "--batch", "2", "--no-progress"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert rows(warehouse) == [(docs[0], 2), (docs[1], 3), (docs[2], 4)]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert rows(warehouse) == [(docs[0], 2), (docs[1], 3), (docs[2], 4)]
    assert "replayed 3 objects: inserted 3, duplicates 0," in first.stdout
    assert "replayed 3 objects: inserted 0, duplicates 3," in again.stdout


def test_worker_waits_out_an_sqs_outage_then_loads(aws_env, fn_env, monkeypatch, tmp_path):
    """The queue's endpoint goes away (a moto server of this test, stopped) while two pings are
    announced; the worker keeps trying with growing pauses, and loads both once it is back."""
    from emulators import MotoServer

    own = MotoServer().start()  # its state lives in this process's moto backends, so it survives a restart
    bucket = unique_bucket()
    own.create_bucket(bucket)
    queue_url = own.sqs.create_queue(QueueName=f"raw-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    arn = own.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    own.s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [{
        "QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    monkeypatch.setenv("AWS_ENDPOINT_URL", own.url)
    monkeypatch.setenv("GLEANPIPE_STORE_URL", f"s3://{bucket}/{PREFIX}")
    docs = submit(2, launches_from=8)
    own.stop()  # the outage
    warehouse = tmp_path / "w.duckdb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gleanpipe.cli", "worker", "--queue", queue_url, "--store-url", f"s3://{bucket}/{PREFIX}",
         "--warehouse-url", f"duckdb://{warehouse}", "--wait", "1", "--max-messages", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**__import__("os").environ, "GLEANPIPE_STORE_RETRY_S": "0"})
    seen = []
    try:
        for line in proc.stderr:  # until the second refused receive: the pause doubled
            seen.append(line)
            if "trying again in 2s" in line:
                break
        from moto.server import ThreadedMotoServer

        back = ThreadedMotoServer(ip_address="127.0.0.1", port=own.port, verbose=False)
        back.start()
        out, err = proc.communicate(timeout=60)
        back.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(seen) + err
    assert proc.returncode == 0, err
    refused = [line for line in seen if "cannot receive from" in line]
    assert ["trying again in 1s" in refused[0], "trying again in 2s" in refused[1]] == [True, True]
    assert "Traceback" not in err
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["objects"] == 2 and stats["load"]["inserted"] == 2
    assert rows(warehouse) == [(docs[0], 8), (docs[1], 9)]


def test_worker_waits_out_an_endpoint_that_drops_the_connection_mid_request(aws_env, tmp_path):
    """Before: a connection that broke during a receive (the endpoint went away in the middle of
    an SQS long poll: botocore's ConnectionClosedError) was taken for a final answer, and the
    worker exited 1. A real TCP server that reads each request and hangs up stands in for that
    endpoint (moto stopped in-process finishes its requests instead)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted = []

    def hang_up() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn.recv(65536))
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    queue_url = f"http://127.0.0.1:{port}/123456789012/raw"
    env = {**__import__("os").environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gleanpipe.cli", "worker", "--queue", queue_url, "--store-url", "s3://bucket/p",
         "--warehouse-url", f"duckdb://{tmp_path / 'w.duckdb'}", "--wait", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "trying again in 2s" in line:
                break
    finally:
        proc.kill()
        proc.wait()
        listener.close()
    refused = [line for line in seen if "cannot receive from" in line]
    assert len(refused) == 2, "".join(seen)
    assert "Connection was closed before we received a valid response" in refused[0]
    assert "trying again in 1s" in refused[0] and "trying again in 2s" in refused[1]
    assert len(accepted) >= 2 and accepted[0].startswith(b"POST /")  # it asked again after the first hang-up


def test_with_an_endpoint_and_no_credentials_dedupe_and_the_queue_work(s3_pipeline, monkeypatch):
    """The README's emulator path with no AWS keys anywhere. Before: requests went unsigned; moto
    answered the re-sent ping's conditional PUT 403 (so 503 for ever, not "duplicate") and filed
    the unsigned receive under another account, so the worker saw an empty queue."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = open_store(s3_pipeline["store_url"])
    key, data = f"raw/{APP}/baseline/1/{uuid.uuid4()}.json", b'{"seen": 1}\n{}'
    assert store.put_new(key, data) is True
    assert store.put_new(key, data) is False
    docs = submit(2, launches_from=4)
    w, _ = worker_for(s3_pipeline, store)
    drain(w)
    assert sorted(rows_of(w)) == sorted([(docs[0], 4), (docs[1], 5)])


def test_status_of_a_cloud_store_says_its_backlog_is_unknown(aws_env, tmp_path):
    """Before: "waiting to load: 0" for any gs:// or s3:// store, whatever waited in its queue."""
    import duckdb

    bucket = unique_bucket()
    aws_env.create_bucket(bucket)
    duckdb.connect(str(tmp_path / "warehouse.duckdb")).close()
    proc = subprocess.run([sys.executable, "-m", "gleanpipe.cli", "status", "--data-dir", str(tmp_path),
                           "--store-url", f"s3://{bucket}/pings"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "waiting to load: unknown (a cloud store's backlog is in its trigger's queue)" in proc.stdout.splitlines()


def test_a_long_poll_longer_than_the_store_timeout_waits_its_whole_time(s3_pipeline, monkeypatch):
    """The worker's SQS read timeout is GLEANPIPE_STORE_TIMEOUT_S plus the long-poll wait: with a
    1 s store timeout, a 2 s long poll of an empty queue returns nothing after its 2 s, not a read
    timeout (which the worker would take for SQS trouble and wait out, again and again). The tests
    ran a 1 s poll under the 3 s default, so this was not tested."""
    p = s3_pipeline
    monkeypatch.setenv("GLEANPIPE_STORE_TIMEOUT_S", "1")
    wh = DuckDBWarehouse(str(p["warehouse"]))
    try:
        w = S3QueueWorker(p["queue"], Loader(open_store(p["store_url"]), wh), wait_s=2)
        assert w.options.timeout_s == 1.0
        assert w.poll_once() == 1  # the s3:TestEvent sent when the notification was configured
        started = time.monotonic()
        assert w.poll_once() == 0
        assert time.monotonic() - started >= 1.9  # moto held the receive for the whole long poll
        [doc] = submit(1, launches_from=7)  # and the next receive takes what arrived
        assert w.poll_once() == 1
    finally:
        wh.close()
    assert w.stats.objects == 1 and rows(p["warehouse"]) == [(doc, 7)]


def test_once_ends_at_the_first_sqs_trouble_even_a_transient_one(aws_env, tmp_path):
    """`gleanpipe worker --once` is one receive, its loads, then exit: a queue endpoint that
    refuses the connection (transient, which the long-running worker waits out) ends it with
    exit code 1 and the reason, at once. Untested before: only a missing queue (not transient)
    was run with --once, so --once retrying for ever went unnoticed."""
    queue = f"http://127.0.0.1:{closed_port()}/123456789012/raw"
    proc = subprocess.run(  # the timeout is the failure of a --once that keeps retrying
        [sys.executable, "-m", "gleanpipe.cli", "worker", "--queue", queue, "--data-dir", str(tmp_path),
         "--store-url", f"s3://{unique_bucket()}", "--wait", "0", "--once"],
        capture_output=True, text=True, timeout=20,
        env={**__import__("os").environ, "AWS_ENDPOINT_URL_SQS": queue.rsplit("/", 2)[0]})
    assert proc.returncode == 1, proc.stderr
    assert f"Error: cannot consume {queue}: Could not connect to the endpoint URL" in proc.stderr, proc.stderr
    assert "trying again" not in proc.stderr and "Traceback" not in proc.stderr


def test_the_worker_takes_a_long_poll_of_0_to_20_seconds(aws_env):
    """SQS long-polls for at most 20 s: the worker refuses more when it is made (its CLI's
    --wait range says the same first). Untested: only the CLI's range was tried."""
    assert S3QueueWorker("q", None, wait_s=20).wait_s == 20
    assert S3QueueWorker("q", None, wait_s=0).wait_s == 0
    for bad in (21, -1):
        with pytest.raises(ValueError) as info:
            S3QueueWorker("q", None, wait_s=bad)
        assert str(info.value) == f"GLEANPIPE_WORKER_WAIT_S must be 0-20 (SQS's long-poll limit), got {bad}"


def test_a_second_worker_on_the_same_duckdb_file_is_refused_and_the_first_loads_on(s3_pipeline):
    """README: one worker per warehouse; a worker holds its duckdb:// file while it runs. A second
    worker started beside it (found by the cloud soak, which starts one now and then) ends at once
    with exit code 1, naming the first by pid and command line, and receives nothing: the first
    goes on loading. Untested before: only query, status and replay were run against a held file."""
    p = s3_pipeline
    path = p["warehouse"]
    args = [sys.executable, "-m", "gleanpipe.cli", "worker", "--queue", p["queue"], "--store-url", p["store_url"],
            "--warehouse-url", f"duckdb://{path}", "--wait", "1"]
    first = subprocess.Popen([*args, "--max-messages", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = first.stderr.readline()  # printed once the worker holds the warehouse
        assert started.startswith("gleanpipe worker: "), started
        second = subprocess.run([*args, "--once"], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and second.stdout == ""
        assert second.stderr == (f"Error: the warehouse {path} is held by PID {first.pid} "
                                 f"({' '.join([*args, '--max-messages', '2'])[:200]}): let that process end (or stop "
                                 "it), then run this again\n")
        [doc] = submit(1, launches_from=3)
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0 and "Traceback" not in err, err
    stats = json.loads(out.strip().splitlines()[-1])  # the s3:TestEvent, then the ping
    assert (stats["received"], stats["deleted"], stats["objects"], stats["load"]["inserted"]) == (2, 2, 1, 1)
    assert rows(path) == [(doc, 3)]
    assert queue_depth(p) == 0
