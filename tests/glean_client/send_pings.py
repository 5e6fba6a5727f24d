#!/usr/bin/env python
"""Real Glean SDK client for gleanpipe's end-to-end tests.

Runs the official Glean Python SDK (glean-sdk 71, a process-wide singleton:
run this script in a subprocess, once per simulated app start) against a
server on loopback and prints ONE JSON line to stdout describing exactly what
it recorded and which documents it tried to upload.

    python send_pings.py --endpoint http://127.0.0.1:PORT --data-dir DIR \\
        --scenario all|deletion|one [--debug-tag TAG] [--source-tags a,b] \\
        [--require-delivery] [--timeout SECONDS]

Glean setup: application id `org.example.toolbox` (URL namespace
`org-example-toolbox`), app version `1.2.3`, channel `testing`, upload
enabled, `data_dir=DIR` (reuse DIR to simulate the next start of the same
client: same client_id, pending pings are re-sent with the same document id),
`Configuration(server_endpoint=ENDPOINT)`, pings are not logged.
`--debug-tag` / `--source-tags` set `GLEAN_DEBUG_VIEW_TAG` /
`GLEAN_SOURCE_TAGS` for the SDK (-> `X-Debug-ID` / `X-Source-Tags` headers);
without them both variables are removed from the environment.
metrics.yaml / pings.yaml next to this file are loaded with
`glean.load_metrics` / `glean.load_pings`.

Every request is `POST /submit/org-example-toolbox/<doc-type>/1/<uuid>`.

Scenarios and what each sends (doc types, in submission order):

`all` -> doc types {health, toolbox-usage, metrics, anonymous-report, no-info, baseline, events}
    health            reason pre_init (sent by Glean.initialize itself; only glean.* metrics)
    toolbox-usage     reason "manual", with client_id; every app metric type:
                      boolean, counter, quantity, string, uuid, url, text, datetime,
                      string_list, timespan, rate, timing_distribution,
                      memory_distribution, custom_distribution, labeled_counter,
                      labeled_boolean, labeled_string, labeled_quantity,
                      labeled_timing_distribution, labeled_memory_distribution,
                      labeled_custom_distribution, dual_labeled_counter, object
                      (fixed values, see ALL_VALUES; e.g. counter toolbox.launch_count
                      = 6 (3 x add(2)), labeled_counter toolbox.tool_used =
                      {"hammer": 2, "pliers": 1}, string toolbox.active_theme = "monokai")
    metrics           reason "today" (the built-in ping, submitted by hand: the Python SDK
                      never schedules it): quantity toolbox.open_windows = 3
    anonymous-report  no reason, NO client_id: counter toolbox.crash_count = 1,
                      string toolbox.crash_signature
    no-info           NO ping_info / client_info at all (include_info_sections: false):
                      counter toolbox.probe_count = 2, string toolbox.probe_label
    baseline          reason "active" (Glean.handle_client_active()), carries
                      counter toolbox.launch_count = 6 plus glean.* metrics
    baseline          reason "inactive" (Glean.handle_client_inactive()), glean.* only
    events            reason "inactive" (handle_client_inactive()): event
                      toolbox.tool_opened twice with extra {"tool": "hammer"} (the SDK
                      adds extra.glean_timestamp) plus the SDK's own glean.session_start
    => 8 requests: 2 x baseline, 1 x each other doc type.

`deletion` -> doc types {health, toolbox-usage, deletion-request}
    health            reason pre_init
    toolbox-usage     reason "manual", counter toolbox.launch_count = 1 (the script
                      waits until it was uploaded before the next step)
    deletion-request  reason "set_upload_enabled" (Glean.set_upload_enabled(False)),
                      client_info.client_id = the same client_id as toolbox-usage
    => 3 requests.

`one` -> doc types {health, toolbox-usage}: fast, for retry/dedupe tests
    health            reason pre_init
    toolbox-usage     reason "manual", counter toolbox.launch_count = 1
    => 2 requests (plus any pings left pending by an earlier run with the same
       --data-dir, re-sent with their original document id).

Uploads: Glean.shutdown() waits for the SDK's upload worker process. The Python
SDK starts at most one upload worker at a time and a worker only sees pings
that existed when it started, so a ping submitted while a worker is running can
stay on disk until the next app start. After shutdown the script therefore
checks the pending-ping directories and, only for pings that were never
attempted in this run, starts one more upload pass (at most 3).
Failed attempts (5xx, network error) are not re-tried by the script beyond
what the SDK itself does (up to 3 recoverable failures per upload pass).

Output (one line of JSON on stdout):
    {
      "scenario": "all", "application_id": "org.example.toolbox",
      "namespace": "org-example-toolbox", "app_version": "1.2.3", "channel": "testing",
      "endpoint": "...", "data_dir": "...", "debug_tag": null, "source_tags": null,
      "client_id": "<uuid from the SDK>",
      "doc_types": ["anonymous-report", "baseline", ...],   # expected in this run
      "sent": {                                             # what was recorded, per doc type
        "toolbox-usage": [{"reason": "manual", "include_client_id": true,
                           "include_info_sections": true,
                           "metrics": {"counter": {"toolbox.launch_count": 6}, ...},
                           "events": []}],
        "events": [{"reason": "inactive", ..., "events": [{"category": "toolbox",
                    "name": "tool_opened", "extra": {"tool": "hammer"}}, ...]}],
        ...
      },
      "uploads": [{"doc_type", "doc_id", "url", "result", "status", ...}],  # attempts, this run
      "pending": ["<doc id still on disk>", ...],
      "extra_upload_passes": 0,
      "elapsed_s": 1.4
    }
"metrics" holds the exact wire form (`{"<type>": {"<category>.<name>": value}}`)
of the app's own metrics only; the SDK adds glean.* metrics to some pings.
Distribution values are taken from the SDK's test API (bucketing is the SDK's)
and checked against the recorded samples' sum and count.

Exit status: 0 ok; 1 the scenario failed (message on stderr); 2 timeout;
3 with --require-delivery: some submitted ping was not answered with 2xx.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import threading
import time
import traceback
import uuid as _uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
# upload_log must be importable as a top-level module in the SDK's upload worker
# process (which gets this process' sys.path as PYTHONPATH).
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

APPLICATION_ID = "org.example.toolbox"
NAMESPACE = "org-example-toolbox"
APP_VERSION = "1.2.3"
CHANNEL = "testing"
METRICS_YAML = HERE / "metrics.yaml"
PINGS_YAML = HERE / "pings.yaml"
UPLOAD_LOG_NAME = "gleanpipe-uploads.jsonl"  # inside --data-dir
PENDING_DIRS = ("pending_pings", "deletion_request")

# Fixed values recorded by the `all` scenario.
FIXED_UUID = "5f0e6a2c-1b3d-4c5e-8f70-9a1b2c3d4e5f"
FIXED_DATETIME = _dt.datetime(
    2024, 5, 17, 13, 45, 12, 345000, tzinfo=_dt.timezone(_dt.timedelta(hours=2))
)
FIXED_DATETIME_WIRE = "2024-05-17T13:45:12.345+02:00"  # millisecond resolution

# attr name -> (type, value as it must appear on the wire, or a sample spec for
# distributions: {"sum": <wire sum>, "count": <n samples>} or per label)
ALL_VALUES: Dict[str, Any] = {
    "dark_mode_enabled": ("boolean", True),
    "launch_count": ("counter", 6),
    "open_windows": ("quantity", 3),
    "active_theme": ("string", "monokai"),
    "install_id": ("uuid", FIXED_UUID),
    "homepage_url": ("url", "https://example.com/toolbox?ref=gleanpipe"),
    "release_notes": ("text", 'Toolbox 1.2.3\n- hammer: faster \u2713\n- pliers: "grip" fix'),
    "last_sync_time": ("datetime", FIXED_DATETIME_WIRE),
    "enabled_plugins": ("string_list", ["git", "lint"]),
    "startup_duration": ("timespan", {"time_unit": "millisecond", "value": 1234}),
    "cache_hit_rate": ("rate", {"numerator": 7, "denominator": 10}),
    # ns samples 2 ms, 15 ms, 15.5 ms
    "render_time": ("timing_distribution", {"sum": 32_500_000, "count": 3}),
    # kilobyte samples 512, 1024, 7680 -> bytes on the wire
    "heap_usage": ("memory_distribution", {"sum": (512 + 1024 + 7680) * 1024, "count": 3}),
    "batch_sizes": ("custom_distribution", {"sum": 59, "count": 4}),
    "tool_used": ("labeled_counter", {"hammer": 2, "pliers": 1}),
    "tool_enabled": ("labeled_boolean", {"hammer": True, "saw": False}),
    "tool_version": ("labeled_string", {"hammer": "2.0.1", "pliers": "1.4"}),
    "tool_inventory": ("labeled_quantity", {"hammer": 5, "saw": 2}),
    # millisecond samples -> ns on the wire
    "load_time_by_tool": (
        "labeled_timing_distribution",
        {"hammer": {"sum": 17_000_000, "count": 2}, "pliers": {"sum": 30_000_000, "count": 1}},
    ),
    "payload_size_by_tool": (
        "labeled_memory_distribution",
        {"hammer": {"sum": 2100, "count": 2}},
    ),
    "items_by_tool": (
        "labeled_custom_distribution",
        {"hammer": {"sum": 5, "count": 2}, "saw": {"sum": 99, "count": 1}},
    ),
    "clicks": ("dual_labeled_counter", {"hammer": {"left": 4, "right": 1}, "saw": {"left": 2}}),
    "open_tabs": ("object", [{"id": 1, "title": "Docs"}, {"id": 2, "title": "Issues"}]),
}
DISTRIBUTION_TYPES = {"timing_distribution", "memory_distribution", "custom_distribution"}
TOOL_OPENED_EXTRAS = [{"tool": "hammer"}, {"tool": "hammer"}]


class ScenarioError(Exception):
    pass


# --------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(f"send_pings: {msg}", file=sys.stderr, flush=True)


def _wire(mtype: str, value: Any) -> Any:
    """A value from the SDK's test API -> its JSON form in a ping payload."""
    if value is None:
        return None
    if mtype.startswith("labeled_"):
        return {label: _wire(mtype[len("labeled_"):], v) for label, v in value.items()}
    if mtype in DISTRIBUTION_TYPES:
        return {"sum": value.sum, "values": {str(k): v for k, v in value.values.items()}}
    if mtype == "uuid":
        return str(value)
    if mtype == "rate":
        return {"numerator": value.numerator, "denominator": value.denominator}
    if mtype == "string_list":
        return list(value)
    if mtype == "dual_labeled_counter":
        return {k: dict(v) for k, v in value.items()}
    return value


def _check_distribution(name: str, got: Any, spec: Dict[str, int], mtype: str) -> None:
    if got is None:
        raise ScenarioError(f"{name}: no value recorded")
    if got.sum != spec["sum"] or got.count != spec["count"]:
        raise ScenarioError(
            f"{name} ({mtype}): SDK has sum={got.sum} count={got.count}, "
            f"expected sum={spec['sum']} count={spec['count']}"
        )


def _pending_doc_ids(data_dir: Path) -> List[str]:
    out = []
    for sub in PENDING_DIRS:
        d = data_dir / sub
        if d.is_dir():
            for f in d.iterdir():
                try:
                    _uuid.UUID(f.name)
                except ValueError:
                    continue
                out.append(f.name)
    return sorted(out)


# --------------------------------------------------------------------------- client


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data_dir = Path(args.data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = str(self.data_dir / UPLOAD_LOG_NAME)
        self.run_id = str(_uuid.uuid4())
        self.deadline = time.monotonic() + args.timeout
        self.sent: Dict[str, List[Dict[str, Any]]] = {}
        self.doc_types = {"health"}  # Glean.initialize always sends health (pre_init)
        self.extra_passes = 0
        self.client_id: Optional[str] = None

    # -- setup -------------------------------------------------------------
    def setup(self) -> None:
        # Debug/test-traffic headers are read by glean-core from the environment
        # at initialize; make them exactly what was asked for.
        for var, val in (
            ("GLEAN_DEBUG_VIEW_TAG", self.args.debug_tag),
            ("GLEAN_SOURCE_TAGS", self.args.source_tags),
        ):
            if val:
                os.environ[var] = val
            else:
                os.environ.pop(var, None)
        os.environ.pop("GLEAN_LOG_PINGS", None)

        import glean
        from glean import Configuration, Glean
        from upload_log import LoggingUploader

        self.glean_mod = glean
        self.Glean = Glean
        # Load (and validate) the yaml files before touching the network.
        self.metrics = glean.load_metrics(METRICS_YAML)
        self.pings = glean.load_pings(PINGS_YAML)
        self._build_unmapped_metrics()
        self.t = self.metrics.toolbox

        Glean.initialize(
            application_id=APPLICATION_ID,
            application_version=APP_VERSION,
            upload_enabled=True,
            configuration=Configuration(
                server_endpoint=self.args.endpoint,
                channel=CHANNEL,
                ping_uploader=LoggingUploader(self.log_path, self.run_id),
            ),
            data_dir=self.data_dir,
        )
        from glean import _uniffi

        _uniffi.glean_set_log_pings(False)
        from glean._builtins import metrics as builtin_metrics

        self._client_id_metric = builtin_metrics.glean.internal.metrics.client_id
        self.client_id = self._get_client_id()
        self._add("health", reason="pre_init", metrics={}, sdk_internal=True)

    def _build_unmapped_metrics(self) -> None:
        """glean-sdk 71's load_metrics maps no Python class to `url`, `text`,
        `rate` and `dual_labeled_counter` (it leaves a placeholder raising
        TypeError "The metric type 'url' is not supported by the Glean Python
        bindings"). Build them from the same yaml definitions with the SDK's own
        metric classes, like generated code would."""
        from glean import _uniffi
        from glean import metrics as gm
        from glean._loader import UnsupportedMetricType, getattr_conv
        from glean_parser.parser import parse_objects

        result = parse_objects([METRICS_YAML], {})
        errors = list(result)
        if errors:
            raise ScenarioError("metrics.yaml: " + "\n".join(errors))
        for category_name, category in result.value.items():
            if category_name in ("pings", "tags"):
                continue
            cursor = self.metrics
            for part in category_name.split("."):
                cursor = getattr(cursor, part)
            for name, m in category.items():
                if not isinstance(getattr(cursor, name, None), UnsupportedMetricType):
                    continue
                cmd = gm.CommonMetricData(
                    category=m.category,
                    name=m.name,
                    send_in_pings=list(m.send_in_pings),
                    lifetime=getattr_conv(m, "lifetime"),
                    disabled=m.disabled,
                )
                if m.type == "url":
                    obj = gm.UrlMetricType(cmd)
                elif m.type == "text":
                    obj = gm.TextMetricType(cmd)
                elif m.type == "rate":
                    obj = gm.RateMetricType(cmd)
                elif m.type == "dual_labeled_counter":
                    obj = _uniffi.DualLabeledCounterMetric(
                        cmd, m.ordered_keys, m.ordered_categories
                    )
                else:
                    raise ScenarioError(f"{category_name}.{name}: unsupported type {m.type}")
                setattr(cursor, name, obj)

    def _get_client_id(self) -> Optional[str]:
        try:
            v = self._client_id_metric.test_get_value()
            return str(v) if v is not None else None
        except Exception as e:  # pragma: no cover - test API missing
            _log(f"could not read client_id: {e!r}")
            return None

    def _add(self, doc_type: str, **desc: Any) -> None:
        self.doc_types.add(doc_type)
        d = {
            "reason": desc.pop("reason", None),
            "include_client_id": desc.pop("include_client_id", True),
            "include_info_sections": desc.pop("include_info_sections", True),
            "metrics": desc.pop("metrics", {}),
            "events": desc.pop("events", []),
        }
        d.update(desc)
        self.sent.setdefault(doc_type, []).append(d)

    # -- recording & snapshots --------------------------------------------
    def _snapshot(self, ping: str, names: List[str], expected: Dict[str, Any]) -> Dict:
        """Wire-form {type: {id: value}} of `names` as stored for `ping`, checked
        against the intended values."""
        out: Dict[str, Dict[str, Any]] = {}
        for name in names:
            mtype, want = expected[name]
            metric = getattr(self.t, name)
            got_raw = metric.test_get_value(ping)
            if mtype in DISTRIBUTION_TYPES:
                _check_distribution(name, got_raw, want, mtype)
            elif mtype.startswith("labeled_") and mtype[len("labeled_"):] in DISTRIBUTION_TYPES:
                if set(got_raw or {}) != set(want):
                    raise ScenarioError(f"{name}: labels {sorted(got_raw or {})} != {sorted(want)}")
                for label, spec in want.items():
                    _check_distribution(f"{name}[{label}]", got_raw[label], spec, mtype)
            got = _wire(mtype, got_raw)
            if mtype == "datetime":
                # The SDK's test API returns a Python datetime; the wire form is
                # ISO 8601 at the metric's resolution (millisecond here).
                if got_raw is None:
                    raise ScenarioError(f"{name}: no value recorded")
                got = want
            elif mtype == "timespan":
                got = {"time_unit": "millisecond", "value": got_raw}
            if mtype not in DISTRIBUTION_TYPES and not (
                mtype.startswith("labeled_") and mtype[len("labeled_"):] in DISTRIBUTION_TYPES
            ):
                if got != want:
                    raise ScenarioError(f"{name} ({mtype}): SDK has {got!r}, expected {want!r}")
            out.setdefault(mtype, {})[f"toolbox.{name}"] = got
        return out

    def _record_all_types(self) -> None:
        t = self.t
        t.dark_mode_enabled.set(True)
        for _ in range(3):
            t.launch_count.add(2)
        t.open_windows.set(3)
        t.active_theme.set("monokai")
        t.install_id.set(FIXED_UUID)
        t.homepage_url.set(ALL_VALUES["homepage_url"][1])
        t.release_notes.set(ALL_VALUES["release_notes"][1])
        t.last_sync_time.set(FIXED_DATETIME)
        t.enabled_plugins.add("git")
        t.enabled_plugins.add("lint")
        t.startup_duration.set_raw_nanos(1_234_000_000)
        t.cache_hit_rate.add_to_numerator(7)
        t.cache_hit_rate.add_to_denominator(10)
        t.render_time.accumulate_samples([2_000_000, 15_000_000, 15_500_000])
        t.heap_usage.accumulate_samples([512, 1024, 7680])
        t.batch_sizes.accumulate_samples([1, 4, 4, 50])
        t.tool_used["hammer"].add(2)
        t.tool_used["pliers"].add(1)
        t.tool_enabled["hammer"].set(True)
        t.tool_enabled["saw"].set(False)
        t.tool_version["hammer"].set("2.0.1")
        t.tool_version["pliers"].set("1.4")
        t.tool_inventory["hammer"].set(5)
        t.tool_inventory["saw"].set(2)
        t.load_time_by_tool["hammer"].accumulate_samples([5, 12])
        t.load_time_by_tool["pliers"].accumulate_samples([30])
        t.payload_size_by_tool["hammer"].accumulate_samples([100, 2000])
        t.items_by_tool["hammer"].accumulate_samples([1, 4])
        t.items_by_tool["saw"].accumulate_samples([99])
        t.clicks.get("hammer", "left").add(4)
        t.clicks.get("hammer", "right").add(1)
        t.clicks.get("saw", "left").add(2)
        t.open_tabs.set(
            t.OpenTabsObject(
                [t.OpenTabsObjectItem(id=1, title="Docs"), t.OpenTabsObjectItem(id=2, title="Issues")]
            )
        )
        for extra in TOOL_OPENED_EXTRAS:
            t.tool_opened.record(t.ToolOpenedExtra(**extra))

    def _submit_usage(self, metrics: Dict[str, Any]) -> None:
        p = self.pings
        p.toolbox_usage.submit(p.toolbox_usage_reason_codes.MANUAL.value)
        self._add("toolbox-usage", reason="manual", metrics=metrics)

    # -- scenarios ----------------------------------------------------------
    def scenario_all(self) -> None:
        t, p = self.t, self.pings
        self._record_all_types()

        usage = self._snapshot("toolbox-usage", list(ALL_VALUES), ALL_VALUES)
        baseline = self._snapshot("baseline", ["launch_count"], ALL_VALUES)
        metrics_ping = self._snapshot("metrics", ["open_windows"], ALL_VALUES)
        events = t.tool_opened.test_get_value("events") or []
        got_extras = [dict(e.extra or {}) for e in events]
        if got_extras != TOOL_OPENED_EXTRAS:
            raise ScenarioError(f"tool_opened events: SDK has {got_extras}")
        self._submit_usage(usage)

        # The built-in `metrics` ping: the Python SDK never schedules it, so submit it by hand.
        from glean._builtins import pings as builtin_pings

        builtin_pings.metrics.submit(builtin_pings.metrics_reason_codes.TODAY.value)
        self._add("metrics", reason="today", metrics=metrics_ping)

        t.crash_count.add(1)
        t.crash_signature.set("OOM@toolbox::render")
        p.anonymous_report.submit()
        self._add(
            "anonymous-report",
            include_client_id=False,
            metrics={
                "counter": {"toolbox.crash_count": 1},
                "string": {"toolbox.crash_signature": "OOM@toolbox::render"},
            },
        )

        t.probe_count.add(2)
        t.probe_label.set("sensor-a")
        p.no_info.submit()
        self._add(
            "no-info",
            reason=None,
            include_client_id=False,
            include_info_sections=False,
            metrics={
                "counter": {"toolbox.probe_count": 2},
                "string": {"toolbox.probe_label": "sensor-a"},
            },
        )

        self.Glean.handle_client_active()
        self._add("baseline", reason="active", metrics=baseline)
        self.Glean.handle_client_inactive()
        self._add("baseline", reason="inactive", metrics={})
        self._add(
            "events",
            reason="inactive",
            events=[
                {"category": "toolbox", "name": "tool_opened", "extra": dict(e)}
                for e in TOOL_OPENED_EXTRAS
            ],
            sdk_events=["glean.session_start"],
        )

    def scenario_one(self) -> None:
        self.t.launch_count.add(1)
        got = self.t.launch_count.test_get_value("toolbox-usage")
        if got != 1:
            raise ScenarioError(f"launch_count: SDK has {got!r}, expected 1")
        self._submit_usage({"counter": {"toolbox.launch_count": 1}})

    def scenario_deletion(self) -> None:
        self.scenario_one()
        # Let the toolbox-usage ping go out before upload is disabled (disabling
        # drops queued pings other than deletion-request).
        self._barrier()
        self.drain_uploads()
        self.Glean.set_upload_enabled(False)
        self._add("deletion-request", reason="set_upload_enabled", metrics={})

    # -- uploads -------------------------------------------------------------
    def _barrier(self) -> None:
        """Block until the SDK's dispatcher ran everything queued so far (the
        test API waits for it)."""
        self.t.launch_count.test_get_value()

    def _wait_for_upload_worker(self) -> None:
        from glean._process_dispatcher import ProcessDispatcher

        p = ProcessDispatcher._last_process
        if p is None:
            return
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for the Glean upload worker")
        p.wait(timeout=remaining)  # raises subprocess.TimeoutExpired
        ProcessDispatcher._last_process = None

    def attempts(self) -> List[Dict[str, Any]]:
        from upload_log import read_log

        return read_log(self.log_path, self.run_id)

    def drain_uploads(self, max_extra: int = 3) -> None:
        from glean.net.ping_upload_worker import PingUploadWorker

        while True:
            self._wait_for_upload_worker()
            pending = set(_pending_doc_ids(self.data_dir))
            attempted = {a.get("doc_id") for a in self.attempts()}
            never = pending - attempted
            if not never:
                return
            if self.extra_passes >= max_extra:
                _log(f"giving up on never-attempted pings: {sorted(never)}")
                return
            self.extra_passes += 1
            PingUploadWorker.process()

    def finish(self) -> None:
        self.Glean.shutdown()  # drains the dispatcher, waits for the upload worker
        self.drain_uploads()


def _parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", required=True, help="e.g. http://127.0.0.1:8080")
    ap.add_argument("--data-dir", required=True, help="Glean data directory (reuse = same client)")
    ap.add_argument("--scenario", required=True, choices=["all", "deletion", "one"])
    ap.add_argument("--debug-tag", default=None, help="-> X-Debug-ID ([a-zA-Z0-9-]{1,20})")
    ap.add_argument("--source-tags", default=None, help="comma-separated -> X-Source-Tags")
    ap.add_argument(
        "--require-delivery",
        action="store_true",
        help="exit 3 unless every ping of this run was answered with 2xx",
    )
    ap.add_argument("--timeout", type=float, default=20.0, help="overall limit in seconds")
    return ap.parse_args(argv)


def _start_watchdog(seconds: float) -> None:
    def fire() -> None:
        _log(f"timed out after {seconds:.0f}s")
        try:
            from glean._process_dispatcher import ProcessDispatcher

            p = ProcessDispatcher._last_process
            if p is not None and p.poll() is None:
                p.kill()
        except Exception:
            pass
        os._exit(2)

    timer = threading.Timer(seconds + 5, fire)
    timer.daemon = True
    timer.start()


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse_args(argv)
    started = time.monotonic()
    _start_watchdog(args.timeout)
    client = Client(args)
    try:
        client.setup()
        getattr(client, f"scenario_{args.scenario}")()
        client.finish()
    except TimeoutError as e:
        _log(f"timeout: {e}")
        return 2
    except Exception as e:
        _log(f"scenario {args.scenario!r} failed: {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)
        return 1

    attempts = client.attempts()
    pending = _pending_doc_ids(client.data_dir)
    out = {
        "scenario": args.scenario,
        "application_id": APPLICATION_ID,
        "namespace": NAMESPACE,
        "app_version": APP_VERSION,
        "channel": CHANNEL,
        "endpoint": args.endpoint,
        "data_dir": str(client.data_dir),
        "debug_tag": args.debug_tag,
        "source_tags": args.source_tags.split(",") if args.source_tags else None,
        "client_id": client.client_id,
        "doc_types": sorted(client.doc_types),
        "sent": client.sent,
        "uploads": [
            {k: a.get(k) for k in ("doc_type", "doc_id", "url", "result", "status", "pid", "t")}
            for a in attempts
        ],
        "pending": pending,
        "extra_upload_passes": client.extra_passes,
        "elapsed_s": round(time.monotonic() - started, 3),
    }
    print(json.dumps(out, sort_keys=True), flush=True)

    if args.require_delivery:
        delivered = {
            a["doc_type"]
            for a in attempts
            if a.get("status") is not None and 200 <= a["status"] < 300
        }
        missing = sorted(client.doc_types - delivered)
        if missing or pending:
            _log(f"not delivered: doc types {missing}, still pending {pending}")
            return 3
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown (Glean's atexit hook, Rust threads): everything
    # is already on disk and uploaded at this point.
    sys.exit(code)
