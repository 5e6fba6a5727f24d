"""The Google Cloud trigger chain with real processes on loopback, no mocks:

    ping -> submit (functions-framework) -> gs:// on fake-gcs-server
         -> OBJECT_FINALIZE published to the Pub/Sub emulator -> push subscription
         -> load (functions-framework, CloudEvent target) -> DuckDB row

The push endpoint is a small recording proxy in front of the load process, so the test knows
when each push was answered (and with what) before it stops load and opens its DuckDB file
(DuckDB lets one process hold the file).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import duckdb
import pytest

from conftest import APP, DATASET, SDK_HEADERS, gz, make_ping, post, submit_path
from emulators import PROJECT, FakeGCS, FunctionProcess, unique_bucket

CLIENT = "5d2c4b1a-9e8f-4a7b-8c6d-5e4f3a2b1c0d"


class PushRecorder:
    """Forwards each push to ``target`` and records (request body, target's status)."""

    def __init__(self, target: str):
        self.target = target
        self.pushes: list[tuple[dict, int]] = []
        self.cond = threading.Condition()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                req = urllib.request.Request(recorder.target + self.path, data=body, method="POST",
                                             headers={"Content-Type": self.headers.get("Content-Type", "")})
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        status, out = resp.status, resp.read()
                except urllib.error.HTTPError as exc:
                    status, out = exc.code, exc.read()
                except OSError:
                    status, out = 502, b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
                with recorder.cond:
                    recorder.pushes.append((json.loads(body), status))
                    recorder.cond.notify_all()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 30) -> list[tuple[dict, int]]:
        with self.cond:
            self.cond.wait_for(lambda: sum(s == 200 for _, s in self.pushes) >= count, timeout=timeout)
            return list(self.pushes)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.e2e
def test_ping_reaches_duckdb_through_fake_gcs_pubsub_push_and_load(tmp_path, pubsub_emulator):
    topic = f"raw-{uuid.uuid4().hex[:8]}"
    pubsub_emulator.create_topic(PROJECT, topic)
    gcs = FakeGCS.start(tmp_path, pubsub=(pubsub_emulator, PROJECT, topic), object_prefix="pings/raw/")
    started: list = [gcs]
    try:
        bucket = unique_bucket()
        gcs.create_bucket(bucket)
        env = {"STORAGE_EMULATOR_HOST": gcs.url, "GLEANPIPE_STORE_URL": f"gs://{bucket}/pings",
               "GLEANPIPE_DATA_DIR": str(tmp_path / "data")}
        load = FunctionProcess("load", tmp_path, env, signature_type="cloudevent")
        started.append(load)
        recorder = PushRecorder(load.url)
        started.append(recorder)
        pubsub_emulator.create_push_subscription(PROJECT, f"load-{topic}", topic, recorder.url + "/")
        submit = FunctionProcess("submit", tmp_path, env)
        started.append(submit)

        doc_id = str(uuid.uuid4())
        ping = make_ping(CLIENT, metrics={"counter": {"toolbox.launch_count": 17},
                                          "string": {"toolbox.active_theme": "solarized"}})
        sent = time.monotonic()
        status, _, headers = post(submit.url + submit_path("baseline", doc_id), gz(ping))
        assert (status, headers["X-Gleanpipe-Stored"]) == (200, "new")
        status, _, headers = post(submit.url + submit_path("baseline", doc_id), gz(ping))
        assert (status, headers["X-Gleanpipe-Stored"]) == (200, "duplicate")  # re-sent: no new object
        status, body, _ = post(submit.url + submit_path("baseline"), b"{not json", {"Content-Type": "text/plain"})
        assert status == 400  # rejected: its record goes to pings/errors/, outside the notified prefix

        pushes = recorder.wait_for(1)
        latency = time.monotonic() - sent
        [(push, push_status)] = pushes
        assert push_status == 200
        # What the emulator pushed: a raw Pub/Sub push body carrying the GCS notification
        assert push["message"]["attributes"]["eventType"] == "OBJECT_FINALIZE"
        assert push["message"]["attributes"]["objectId"] == f"pings/raw/{APP}/baseline/1/{doc_id}.json"
        time.sleep(1.0)  # a second push (there must be none) would arrive by now
        assert len(recorder.pushes) == 1
        load.stop()

        con = duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb"), read_only=True)
        try:
            rows = con.execute(
                f"SELECT document_id, client_info.client_id, metrics.counter.toolbox_launch_count, "
                f"metrics.string.toolbox_active_theme, metadata.header.x_telemetry_agent "
                f"FROM {DATASET}.baseline_v1").fetchall()
        finally:
            con.close()
        assert rows == [(doc_id, CLIENT, 17, "solarized", SDK_HEADERS["X-Telemetry-Agent"])]
        print(f"submit -> fake GCS -> Pub/Sub push -> load answered in {latency:.2f}s")
    finally:
        for thing in reversed(started):
            thing.stop()
