"""Verifies the real-SDK test client (send_pings.py) against a recording server.

These tests check the client itself (what the official Glean Python SDK puts on
the wire for each scenario), not gleanpipe. Each scenario runs in its own
subprocess because Glean is a process-wide singleton.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from .recording_server import RecordedRequest, RecordingServer

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "send_pings.py"
NAMESPACE = "org-example-toolbox"
PATH_RE = re.compile(
    r"^/submit/org-example-toolbox/(?P<doc_type>[a-z0-9_-]{1,30})/1/"
    r"(?P<doc_id>[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})$"
)

ALL_DOC_TYPES = {"health", "toolbox-usage", "metrics", "anonymous-report", "no-info", "baseline", "events"}
# Every metric type the `all` scenario must put into toolbox-usage.
ALL_METRIC_TYPES = {
    "boolean", "counter", "quantity", "string", "uuid", "url", "text", "datetime",
    "string_list", "timespan", "rate", "timing_distribution", "memory_distribution",
    "custom_distribution", "labeled_counter", "labeled_boolean", "labeled_string",
    "labeled_quantity", "labeled_timing_distribution", "labeled_memory_distribution",
    "labeled_custom_distribution", "dual_labeled_counter", "object",
}  # fmt: skip


def run_client(
    server: RecordingServer, data_dir: Path, scenario: str, *extra: str, check: bool = True
) -> Dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--endpoint", server.url, "--data-dir", str(data_dir),
         "--scenario", scenario, *extra],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, f"send_pings.py exited {proc.returncode}:\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line on stdout, got {proc.stdout!r}"
    return json.loads(lines[0])


def only(reqs: List[RecordedRequest], doc_type: str) -> Dict[str, Any]:
    matching = [r for r in reqs if r.doc_type == doc_type]
    assert len(matching) == 1, f"{doc_type}: {len(matching)} requests"
    return matching[0].json


def assert_metrics_match(body: Dict[str, Any], expected: Dict[str, Dict[str, Any]]) -> None:
    for mtype, by_id in expected.items():
        for metric_id, value in by_id.items():
            got = body.get("metrics", {}).get(mtype, {}).get(metric_id, "<missing>")
            assert got == value, f"metrics.{mtype}.{metric_id}: {got!r} != {value!r}"


# ----------------------------------------------------------------------------- all


@pytest.fixture(scope="module")
def all_run(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("glean-all")
    with RecordingServer() as server:
        out = run_client(
            server, data_dir, "all",
            "--debug-tag", "gleanpipe-e2e", "--source-tags", "automation,e2e",
            "--require-delivery",
        )  # fmt: skip
        reqs = list(server.requests)
    return out, reqs


def test_all_requests_and_doc_types(all_run):
    out, reqs = all_run
    assert {r.doc_type for r in reqs} == ALL_DOC_TYPES == set(out["doc_types"])
    counts = {t: sum(1 for r in reqs if r.doc_type == t) for t in ALL_DOC_TYPES}
    assert counts == {t: (2 if t == "baseline" else 1) for t in ALL_DOC_TYPES}

    for r in reqs:
        assert r.method == "POST"
        assert PATH_RE.match(r.path), r.path
        assert r.raw_body[:2] == b"\x1f\x8b"
        assert r.headers["content-encoding"] == "gzip"
        assert r.headers["content-type"] == "application/json; charset=utf-8"
        assert r.headers["x-telemetry-agent"].startswith("Glean/71.")
        assert r.headers["x-debug-id"] == "gleanpipe-e2e"
        assert r.headers["x-source-tags"] == "automation,e2e"
        assert "user-agent" not in r.headers
        assert isinstance(r.json, dict)

    doc_ids = [r.doc_id for r in reqs]
    assert len(set(doc_ids)) == len(doc_ids)
    # The script's upload log matches what the server saw.
    assert sorted(u["doc_id"] for u in out["uploads"]) == sorted(doc_ids)
    assert all(u["status"] == 200 for u in out["uploads"])
    assert out["pending"] == []
    assert out["namespace"] == NAMESPACE


def test_all_toolbox_usage_has_every_metric_type(all_run):
    out, reqs = all_run
    body = only(reqs, "toolbox-usage")
    [expected] = out["sent"]["toolbox-usage"]
    assert set(expected["metrics"]) == ALL_METRIC_TYPES
    assert set(body["metrics"]) == ALL_METRIC_TYPES
    assert_metrics_match(body, expected["metrics"])
    # a few literal values, independent of the script's report
    m = body["metrics"]
    assert m["counter"]["toolbox.launch_count"] == 6
    assert m["labeled_counter"]["toolbox.tool_used"] == {"hammer": 2, "pliers": 1}
    assert m["string"]["toolbox.active_theme"] == "monokai"
    assert m["string_list"]["toolbox.enabled_plugins"] == ["git", "lint"]
    assert m["datetime"]["toolbox.last_sync_time"] == "2024-05-17T13:45:12.345+02:00"
    assert m["rate"]["toolbox.cache_hit_rate"] == {"numerator": 7, "denominator": 10}
    assert m["timing_distribution"]["toolbox.render_time"]["sum"] == 32_500_000

    assert body["ping_info"]["reason"] == "manual"
    ci = body["client_info"]
    assert ci["client_id"] == out["client_id"]
    assert ci["app_display_version"] == "1.2.3"
    assert ci["app_channel"] == "testing"


def test_all_anonymous_report_has_no_client_id(all_run):
    out, reqs = all_run
    body = only(reqs, "anonymous-report")
    assert "client_info" in body and "ping_info" in body
    assert "client_id" not in body["client_info"]
    assert_metrics_match(body, out["sent"]["anonymous-report"][0]["metrics"])


def test_all_no_info_has_only_metrics(all_run):
    out, reqs = all_run
    body = only(reqs, "no-info")
    assert set(body) == {"metrics"}
    assert_metrics_match(body, out["sent"]["no-info"][0]["metrics"])


def test_all_events_and_baseline(all_run):
    out, reqs = all_run
    body = only(reqs, "events")
    assert body["ping_info"]["reason"] == "inactive"
    mine = [e for e in body["events"] if (e["category"], e["name"]) == ("toolbox", "tool_opened")]
    expected = out["sent"]["events"][0]["events"]
    assert len(mine) == len(expected) == 2
    for got, want in zip(mine, expected):
        extra = dict(got["extra"])
        assert extra.pop("glean_timestamp").isdigit()
        assert extra == want["extra"] == {"tool": "hammer"}
        assert isinstance(got["timestamp"], int)
    assert any(e["category"] == "glean" and e["name"] == "session_start" for e in body["events"])

    baselines = {r.json["ping_info"]["reason"]: r.json for r in reqs if r.doc_type == "baseline"}
    assert set(baselines) == {"active", "inactive"}
    assert_metrics_match(baselines["active"], out["sent"]["baseline"][0]["metrics"])
    assert only(reqs, "health")["ping_info"]["reason"] == "pre_init"

    ids = {r.json["client_info"].get("client_id") for r in reqs if "client_info" in r.json}
    assert ids == {out["client_id"], None}  # None: anonymous-report


# ------------------------------------------------------------------------ deletion


def test_deletion_scenario(tmp_path):
    with RecordingServer() as server:
        out = run_client(server, tmp_path / "glean", "deletion", "--require-delivery")
        reqs = list(server.requests)
    # the deletion-request last (the scenario drains the uploads before it disables upload); the
    # SDK's upload worker sends the two pings before it in either order (toolbox-usage first seen
    # in a `make test` run)
    sent = [r.doc_type for r in reqs]
    assert (sorted(sent[:2]), sent[2:]) == (["health", "toolbox-usage"], ["deletion-request"])
    assert set(out["doc_types"]) == {"health", "toolbox-usage", "deletion-request"}
    usage = only(reqs, "toolbox-usage")
    deletion = only(reqs, "deletion-request")
    assert usage["metrics"] == {"counter": {"toolbox.launch_count": 1}}
    assert deletion["ping_info"]["reason"] == "set_upload_enabled"
    assert out["client_id"]
    assert deletion["client_info"]["client_id"] == usage["client_info"]["client_id"]
    assert deletion["client_info"]["client_id"] == out["client_id"]


# ----------------------------------------------------------------------- one/retry


def test_one_retried_on_next_start_with_same_document_id(tmp_path):
    data_dir = tmp_path / "glean"
    with RecordingServer(status=500) as server:
        first = run_client(server, data_dir, "one")
        failed = list(server.requests)
        assert {r.doc_type for r in failed} == {"health", "toolbox-usage"}
        assert {u["status"] for u in first["uploads"]} == {500}
        assert len(first["pending"]) == 2

        server.status = 200
        second = run_client(server, data_dir, "one", "--require-delivery")
        resent = server.requests[len(failed) :]

    assert second["client_id"] == first["client_id"]
    assert second["pending"] == []
    by_id = {r.doc_id: r for r in resent}
    for doc_id in first["pending"]:
        assert doc_id in by_id, f"pending {doc_id} was not re-sent"
        original = next(r for r in failed if r.doc_id == doc_id)
        assert by_id[doc_id].body == original.body  # same document, same payload
    # the second start sent its own health + toolbox-usage as well
    assert sorted(r.doc_type for r in resent) == sorted(
        ["health", "toolbox-usage", "health", "toolbox-usage"]
    )
