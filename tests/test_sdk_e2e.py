"""End to end with the real client: the official Glean Python SDK -> `gleanpipe serve` -> DuckDB.

The SDK runs in a subprocess (tests/glean_client/send_pings.py: Glean is a process-wide
singleton) pointed at a live `gleanpipe serve` on loopback; the assertions read row values.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import DATASET

pytestmark = pytest.mark.e2e
CLIENT_SCRIPT = Path(__file__).parent / "glean_client" / "send_pings.py"


def run_sdk(endpoint: str, glean_dir: Path, scenario: str, *extra: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(CLIENT_SCRIPT), "--endpoint", endpoint, "--data-dir", str(glean_dir),
         "--scenario", scenario, *extra],
        capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def expected_column(metric_type: str, value):
    """What a metric value sent by the SDK must read back as (written out independently of the loader)."""
    def dist(d):
        return {"sum": d["sum"], "values": sorted(({"key": int(k), "value": v} for k, v in d["values"].items()),
                                                   key=lambda kv: kv["key"])}

    if metric_type == "dual_labeled_counter":
        return sorted(({"key": k, "value": sorted(({"key": k2, "value": v2} for k2, v2 in v.items()),
                                                   key=lambda kv: kv["key"])} for k, v in value.items()),
                      key=lambda kv: kv["key"])
    if metric_type.startswith("labeled_"):
        conv = dist if metric_type.endswith("distribution") else (lambda v: v)
        return sorted(({"key": k, "value": conv(v)} for k, v in value.items()), key=lambda kv: kv["key"])
    if metric_type.endswith("distribution"):
        return dist(value)
    if metric_type == "object":
        return json.dumps(value, sort_keys=True)
    return value


def normalise_read(metric_type: str, value):
    """Order-insensitive view of what the warehouse returned (labels and buckets are sets)."""
    def dist(d):
        return {"sum": d["sum"], "values": sorted(d["values"], key=lambda kv: kv["key"])}

    if metric_type == "dual_labeled_counter":
        return sorted(({"key": e["key"], "value": sorted(e["value"], key=lambda kv: kv["key"])} for e in value),
                      key=lambda kv: kv["key"])
    if metric_type.startswith("labeled_"):
        conv = dist if metric_type.endswith("distribution") else (lambda v: v)
        return sorted(({"key": e["key"], "value": conv(e["value"])} for e in value), key=lambda kv: kv["key"])
    if metric_type.endswith("distribution"):
        return dist(value)
    if metric_type == "object":
        return json.dumps(json.loads(value), sort_keys=True)
    return value


def test_every_ping_and_metric_type_from_the_real_sdk(serve, tmp_path):
    sent = run_sdk(serve.url, tmp_path / "glean", "all", "--debug-tag", "e2e-tag", "--source-tags",
                   "automation,e2e", "--require-delivery")
    client_id = sent["client_id"]
    assert client_id and all(u["status"] == 200 for u in sent["uploads"])
    tables = {"toolbox_usage_v1": 1, "metrics_v1": 1, "anonymous_report_v1": 1, "no_info_v1": 1, "baseline_v1": 2,
              "events_v1": 1, "health_v1": 1}
    for table, n in tables.items():
        assert serve.wait_rows(f"SELECT count(*) FROM {DATASET}.{table}", n) == n, table

    # toolbox-usage: every metric type, value by value
    usage = sent["sent"]["toolbox-usage"][0]["metrics"]
    # every type the SDK sends (../shared/docs/glean-wire-format.md): upstream's schema has two more,
    # jwe and labeled_rate, that no current SDK sends; test_load's FULL_METRICS covers them
    assert len(usage) == 23
    for metric_type, metrics in usage.items():
        for metric_id, value in metrics.items():
            column = metric_id.replace(".", "_")
            [(got,)] = serve.query(f'SELECT metrics."{metric_type}"."{column}" FROM {DATASET}.toolbox_usage_v1')[1]
            assert normalise_read(metric_type, got) == expected_column(metric_type, value), (metric_type, metric_id)

    [row] = serve.query(f"""SELECT client_info.client_id, client_info.app_display_version, client_info.app_channel,
        normalized_channel, ping_info.reason, ping_info.parsed_start_time IS NOT NULL, sample_id,
        metadata.header.x_debug_id, metadata.header.parsed_x_source_tags, metadata.header.x_telemetry_agent,
        additional_properties FROM {DATASET}.toolbox_usage_v1""")[1]
    import zlib

    assert row[:8] == (client_id, "1.2.3", "testing", "Other", "manual", True,
                       zlib.crc32(client_id.encode()) % 100, "e2e-tag")
    assert row[8] == ["automation", "e2e"] and row[9].startswith("Glean/71")

    # the built-in metrics ping
    assert serve.query(f"SELECT ping_info.reason, metrics.quantity.toolbox_open_windows, client_info.client_id "
                       f"FROM {DATASET}.metrics_v1")[1] == [("today", 3, client_id)]

    # a ping without client_id, and one without any info section
    assert serve.query(f"SELECT client_info.client_id, sample_id, metrics.counter.toolbox_crash_count "
                       f"FROM {DATASET}.anonymous_report_v1")[1] == [(None, None, 1)]
    assert serve.query(f"SELECT client_info, ping_info.seq, ping_info.reason, ping_info.experiments, "
                       f"metrics.counter.toolbox_probe_count, metrics.string.toolbox_probe_label "
                       f"FROM {DATASET}.no_info_v1")[1] == [(None, None, None, [], 2, "sensor-a")]

    # baseline: active carries the counter, inactive does not
    got = serve.query(f"SELECT ping_info.reason, metrics.counter.toolbox_launch_count, client_info.client_id "
                      f"FROM {DATASET}.baseline_v1 ORDER BY 1")[1]
    assert got == [("active", 6, client_id), ("inactive", None, client_id)]

    # events: in the events ping and one row each in events_stream
    stream = serve.query(f"""SELECT category, name, client_id, ping, extra, event_timestamp IS NOT NULL
        FROM {DATASET}.events_stream ORDER BY event_index""")[1]
    shown = [(c, n, cid, p, sorted(f"{e['key']}={e['value']}" for e in extra if e["key"] != "glean_timestamp"), ts)
             for c, n, cid, p, extra, ts in stream]
    tool = ("toolbox", "tool_opened", client_id, "events", ["tool=hammer"], True)
    assert [s for s in shown if s[0] == "toolbox"] == [tool, tool]
    [session] = [s for s in shown if s[0] == "glean"]
    assert session[1] == "session_start" and "session_seq=1" in session[4]
    [(n_events,)] = serve.query(f"SELECT len(events) FROM {DATASET}.events_v1")[1]
    assert n_events == len(stream) == 3


class LostResponseProxy:
    """Forwards every request to gleanpipe, but answers 503 to the first attempt of each toolbox-usage
    document: the ping is stored, the SDK thinks it failed and re-sends the same document id later."""

    def __init__(self, upstream: str):
        self.attempts: dict[str, int] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                doc_id = self.path.rsplit("/", 1)[-1]
                proxy.attempts[doc_id] = proxy.attempts.get(doc_id, 0) + 1
                req = urllib.request.Request(upstream + self.path, data=body, method="POST",
                                             headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        status = resp.status
                except urllib.error.HTTPError as exc:
                    status = exc.code
                if "/toolbox-usage/" in self.path and proxy.attempts[doc_id] == 1:
                    status = 503
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_resent_document_is_stored_and_loaded_once(serve, tmp_path):
    proxy = LostResponseProxy(serve.url)
    try:
        sent = run_sdk(proxy.url, tmp_path / "glean", "one")
        attempts = [u for u in sent["uploads"] if u["doc_type"] == "toolbox-usage"]
        [lost] = {u["doc_id"] for u in attempts}
        # the SDK retries a 5xx with the same document id (in the same upload run, or at the next start)
        assert [u["status"] for u in attempts][0] == 503
        assert attempts[-1]["status"] == 200
    finally:
        proxy.close()
    assert proxy.attempts[lost] == len(attempts) >= 2
    assert serve.wait_rows(f"SELECT count(*) FROM {DATASET}.toolbox_usage_v1", 1) == 1
    assert serve.query(f"SELECT document_id, metrics.counter.toolbox_launch_count "
                       f"FROM {DATASET}.toolbox_usage_v1")[1] == [(lost, 1)]
    store_objects = list((serve.data_dir / "store" / "raw" / "org-example-toolbox" / "toolbox-usage").rglob("*.json"))
    assert [p.name for p in store_objects] == [f"{lost}.json"]


def test_deletion_request_from_the_sdk_removes_the_clients_data(serve, tmp_path):
    sent = run_sdk(serve.url, tmp_path / "glean", "deletion", "--require-delivery")
    client_id = sent["client_id"]
    assert serve.wait_rows("SELECT count(*) FROM _gleanpipe.deletions", 1) == 1
    assert serve.query(f"SELECT count(*) FROM {DATASET}.toolbox_usage_v1")[1] == [(0,)]
    assert serve.query(f"SELECT count(*) FROM {DATASET}.health_v1")[1] == [(0,)]
    assert serve.query(f"SELECT client_info.client_id, ping_info.reason FROM {DATASET}.deletion_request_v1")[1] == [
        (client_id, "set_upload_enabled")]
    [(client, rows_deleted)] = serve.query("SELECT client_id, rows_deleted FROM _gleanpipe.deletions")[1]
    assert client == client_id and rows_deleted == 2


def test_a_server_endpoint_with_a_trailing_slash_delivers(serve, tmp_path):
    """The SDK puts its server_endpoint before `/submit/...`, so `http://127.0.0.1:PORT/` sends
    `POST //submit/...`. Before: a 404 for every ping (the SDK deletes the ping), and nothing
    recorded, since a 404 is no ping."""
    sent = run_sdk(serve.url + "/", tmp_path / "glean", "one", "--require-delivery")
    assert sent["endpoint"].endswith("/")
    uploads = {u["doc_type"]: u for u in sent["uploads"]}
    assert set(uploads) == {"health", "toolbox-usage"}
    assert all(u["status"] == 200 and "//submit/org-example-toolbox/" in u["url"] for u in uploads.values()), uploads
    assert serve.wait_rows(f"SELECT count(*) FROM {DATASET}.toolbox_usage_v1", 1) == 1
    assert serve.query(f"SELECT document_id, client_info.client_id, metrics.counter.toolbox_launch_count "
                       f"FROM {DATASET}.toolbox_usage_v1")[1] == [
        (uploads["toolbox-usage"]["doc_id"], sent["client_id"], 1)]
    assert serve.wait_rows(f"SELECT count(*) FROM {DATASET}.health_v1", 1) == 1
    assert serve.query(f"SELECT document_id FROM {DATASET}.health_v1")[1] == [(uploads["health"]["doc_id"],)]
