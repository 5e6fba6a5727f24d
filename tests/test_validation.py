"""Tests for gleanpipe.validation and schemas/glean.1.schema.json."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
try:
    import gleanpipe.validation  # noqa: F401
except ModuleNotFoundError:  # not installed: run from the source tree
    sys.path.insert(0, str(REPO / "src"))

from gleanpipe.validation import (MAX_ERROR, MAX_ERRORS, MAX_LISTED_BYTES, PingValidator,  # noqa: E402
                                  default_validator, load_schema, render, validate_ping)

from conftest import SHARED  # noqa: E402

# ../shared beside the checkout, or beside the repository it was cloned from (conftest.SHARED).
SAMPLES = SHARED / "reference" / "mozilla-pipeline-schemas" / "validation" / "glean"

# Substrings each upstream *.fail.json must produce (the path of the offending field, plus the cause).
FAIL_EXPECT: dict[str, list[str]] = {
    "events_session_extra_properties": ["events[0].session:", "unknown_field"],
    "events_session_invalid_sample_rate": ["events[0].session.session_sample_rate:", "1.5"],
    "events_session_missing_required": ["events[0].session:", "'event_seq' is a required property"],
    "events_session_negative_sample_rate": ["events[0].session.session_sample_rate:", "-0.1"],
    "invalid_timing_distribution": ["metrics.timing_distribution.performance.time.load_event_end.values:"],
    "invalid_use_counter": ["metrics:", "use_counter", "number", "enumeration", "usage"],
    "null_timestamp": ["metrics.timespan.test.timespan.value:", "None is not of type 'integer'"],
    "too_long_text": ["metrics.text.test.text:", "is too long"],
}


def _samples(kind: str) -> list[Any]:
    if not SAMPLES.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"upstream samples not found at {SAMPLES}"))]
    return [pytest.param(p, id=p.name) for p in sorted(SAMPLES.glob(f"glean.1.*.{kind}.json"))]


@pytest.mark.parametrize("path", _samples("pass"))
def test_upstream_pass_samples(path: Path) -> None:
    assert validate_ping(json.loads(path.read_text(encoding="utf-8"))) == []


@pytest.mark.parametrize("path", _samples("fail"))
def test_upstream_fail_samples(path: Path) -> None:
    name = path.name[len("glean.1.") : -len(".fail.json")]
    assert name in FAIL_EXPECT, f"no expectation for new fail sample {path.name}"
    errors = validate_ping(json.loads(path.read_text(encoding="utf-8")))
    assert errors, f"{path.name} unexpectedly validated"
    joined = " | ".join(errors)
    for needle in FAIL_EXPECT[name]:
        assert needle in joined, f"{needle!r} not in {joined!r}"


def test_every_fail_expectation_has_a_sample() -> None:
    if not SAMPLES.is_dir():
        pytest.skip(f"upstream samples not found at {SAMPLES}")
    present = {p.name[len("glean.1.") : -len(".fail.json")] for p in SAMPLES.glob("glean.1.*.fail.json")}
    assert set(FAIL_EXPECT) <= present


# --- wire-format doc (docs/glean-wire-format.md) -------------------------------------------------

CLIENT_INFO = {
    "app_build": "1",
    "app_channel": "production",
    "app_display_version": "0.1.0",
    "architecture": "x86_64",
    "build_date": "1970-01-01T00:00:00+00:00",
    "client_id": "0b0e4a36-1f33-4d0b-8a1b-5f3b2c8f0e11",
    "first_run_date": "2026-11-22+00:00",
    "os": "Linux",
    "os_version": "6.8.0",
    "telemetry_sdk_build": "71.0.0",
    "locale": "en-US",
}
PING_INFO = {
    "seq": 0,
    "start_time": "2026-11-22T12:34:25.443+00:00",
    "end_time": "2026-11-22T12:34+00:00",
    "reason": "active",
    "experiments": {"exp-1": {"branch": "b", "extra": {"k": "v"}}},
}


def ping(**sections: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"client_info": copy.deepcopy(CLIENT_INFO), "ping_info": copy.deepcopy(PING_INFO)}
    doc.update(sections)
    return doc


DIST = {"sum": 135174545, "values": {"2097152": 1, "15384774": 2}}
WIRE_EXAMPLES: dict[str, dict[str, Any]] = {
    "boolean": {"toolbox.dark_mode_enabled": True},
    "counter": {"toolbox.launch_count": 1},
    "quantity": {"toolbox.launch_count": 1},
    "string": {"toolbox.active_theme": "monokai"},
    "text": {"toolbox.active_theme": "monokai"},
    "jwe": {"toolbox.token": "eyJhbGciOiJ"},
    "uuid": {"toolbox.install_id": "c3757f87-7bcb-453d-87ba-567157e38e0d"},
    "url": {"toolbox.homepage": "https://example.org/path?q=1"},
    "string_list": {"toolbox.enabled_plugins": ["git", "lint"]},
    "datetime": {"toolbox.last_sync_time": "2024-05-17T13:45:12.345+02:00", "toolbox.day": "2024-01-02+00:00"},
    "timespan": {"toolbox.startup_duration": {"time_unit": "millisecond", "value": 1234}},
    "rate": {"toolbox.cache_hit_rate": {"numerator": 7, "denominator": 10}},
    "timing_distribution": {"toolbox.render_time": DIST},
    "memory_distribution": {"toolbox.heap_usage": {"sum": 7864320, "values": {"524287": 1}}},
    "custom_distribution": {"toolbox.batch_sizes": {"sum": 1050, "values": {"1": 1, "4": 2}}},
    "labeled_counter": {"toolbox.tool_used": {"hammer": 2, "pliers": 1}},
    "labeled_quantity": {"toolbox.tool_used": {"hammer": 2, "pliers": 1}},
    "labeled_boolean": {"toolbox.tool_ok": {"hammer": True, "pliers": False}},
    "labeled_string": {"toolbox.tool_state": {"hammer": "idle"}},
    "labeled_rate": {"toolbox.hits": {"hammer": {"numerator": 1, "denominator": 2}}},
    "labeled_timing_distribution": {"toolbox.load_time_by_tool": {"hammer": DIST}},
    "labeled_memory_distribution": {"toolbox.mem_by_tool": {"hammer": DIST}},
    "labeled_custom_distribution": {"toolbox.size_by_tool": {"hammer": DIST}},
    "dual_labeled_counter": {"toolbox.clicks": {"hammer": {"left": 4}}},
    "object": {"toolbox.open_tabs": [{"id": 1, "title": "Docs"}], "toolbox.layout": {"cols": 2}},
}


def test_schema_knows_exactly_the_25_metric_types() -> None:
    types = set(load_schema()["properties"]["metrics"]["properties"])
    assert types == set(WIRE_EXAMPLES) and len(types) == 25


def test_schema_has_no_format_keyword() -> None:
    assert '"format"' not in json.dumps(load_schema())


@pytest.mark.parametrize("metric_type", sorted(WIRE_EXAMPLES))
def test_wire_format_metric_examples_pass(metric_type: str) -> None:
    assert validate_ping(ping(metrics={metric_type: WIRE_EXAMPLES[metric_type]})) == []


def test_wire_format_all_metrics_and_events_in_one_ping() -> None:
    events = [
        {"category": "glean", "name": "session_start", "timestamp": 0, "extra": {"glean_timestamp": "1763814865443"}},
        {"category": "toolbox", "name": "opened", "timestamp": 12, "extra": {"tool": "hammer"}},
    ]
    assert validate_ping(ping(metrics=WIRE_EXAMPLES, events=events)) == []


def test_legacy_distribution_fields_pass() -> None:
    legacy = {"values": {"1": 0}, "sum": 1, "count": 1, "bucket_count": 10, "overflow": 0, "underflow": 0,
              "range": [1, 100], "histogram_type": "linear", "time_unit": "millisecond"}
    assert validate_ping(ping(metrics={"timing_distribution": {"a.b": legacy}})) == []


def test_ping_without_info_sections_passes() -> None:
    assert validate_ping({"metrics": {"counter": {"toolbox.launch_count": 3}}}) == []


def test_empty_document_passes() -> None:
    assert validate_ping({}) == []


def test_unknown_keys_in_info_sections_pass() -> None:
    doc = ping()
    doc["client_info"]["new_sdk_field"] = {"x": 1}
    doc["ping_info"]["new_sdk_field"] = 1
    assert validate_ping(doc) == []


@pytest.mark.parametrize("present,missing", [("ping_info", "client_info"), ("client_info", "ping_info")])
def test_info_sections_require_each_other(present: str, missing: str) -> None:
    doc = ping()
    del doc[missing]
    errors = validate_ping(doc)
    assert errors == [f"$: '{missing}' is a dependency of '{present}'"]


def test_unknown_top_level_key_fails() -> None:
    assert "$: Additional properties are not allowed ('extra' was unexpected)" in validate_ping({"extra": 1})


def test_unknown_metric_type_fails() -> None:
    errors = validate_ping(ping(metrics={"use_counter": {"a.b": 1}}))
    assert len(errors) == 1 and errors[0].startswith("metrics: ") and "use_counter" in errors[0]


@pytest.mark.parametrize(
    "doc,expected",
    [
        (ping(metrics={"counter": {"toolbox.launch_count": "x"}}),
         "metrics.counter.toolbox.launch_count: 'x' is not of type 'integer'"),
        (ping(metrics={"boolean": {"a.b": 1}}), "metrics.boolean.a.b: 1 is not of type 'boolean'"),
        (ping(metrics={"string_list": {"a.b": ["x", 2]}}), "metrics.string_list.a.b[1]: 2 is not of type 'string'"),
        (ping(metrics={"uuid": {"a.b": "nope"}}), "metrics.uuid.a.b: 'nope' does not match"),
        (ping(metrics={"url": {"a.b": "data:text/plain,hi"}}), "metrics.url.a.b: 'data:text/plain,hi' does not match"),
        (ping(metrics={"datetime": {"a.b": "yesterday"}}), "metrics.datetime.a.b: 'yesterday' does not match"),
        (ping(metrics={"timespan": {"a.b": {"value": 1, "time_unit": "fortnight"}}}),
         "metrics.timespan.a.b.time_unit: 'fortnight' is not one of"),
        (ping(metrics={"rate": {"a.b": {"numerator": -1, "denominator": 1}}}),
         "metrics.rate.a.b.numerator: -1 is less than the minimum of 0"),
        (ping(metrics={"rate": {"a.b": {"numerator": 1, "denominator": 1, "x": 1}}}),
         "metrics.rate.a.b: Additional properties are not allowed ('x' was unexpected)"),
        (ping(metrics={"custom_distribution": {"a.b": {"sum": 1}}}),
         "metrics.custom_distribution.a.b: 'values' is a required property"),
        (ping(metrics={"labeled_counter": {"a.b": {"hammer": 1.5}}}),
         "metrics.labeled_counter.a.b.hammer: 1.5 is not of type 'integer'"),
        (ping(metrics={"dual_labeled_counter": {"a.b": {"k": {"c": "1"}}}}),
         "metrics.dual_labeled_counter.a.b.k.c: '1' is not of type 'integer'"),
        (ping(metrics={"object": {"a.b": "x"}}), "metrics.object.a.b: 'x' is not of type 'object', 'array'"),
        (ping(metrics={"counter": {"Bad.Name": 1}}), "metrics.counter: 'Bad.Name' does not match"),
        (ping(events=[{"category": "a", "name": "b", "timestamp": -1}]),
         "events[0].timestamp: -1 is less than the minimum of 0"),
        (ping(events=[{"category": "a", "name": "b", "timestamp": 1, "extra": {"n": 1}}]),
         "events[0].extra.n: 1 is not of type 'string'"),
        (ping(events=[{"category": "a", "name": "b", "timestamp": 1, "value": 1}]),
         "events[0]: Additional properties are not allowed ('value' was unexpected)"),
        ({"client_info": {**CLIENT_INFO, "client_id": "not-a-uuid"}, "ping_info": PING_INFO},
         "client_info.client_id: 'not-a-uuid' does not match"),
        ({"client_info": {**CLIENT_INFO, "windows_build_number": "22631"}, "ping_info": PING_INFO},
         "client_info.windows_build_number: '22631' is not of type 'integer'"),
        ({"client_info": CLIENT_INFO, "ping_info": {**PING_INFO, "seq": "1"}},
         "ping_info.seq: '1' is not of type 'integer'"),
        ({"client_info": CLIENT_INFO, "ping_info": {**PING_INFO, "reason": "r" * 31}}, "ping_info.reason: "),
        ({"client_info": CLIENT_INFO, "ping_info": {**PING_INFO, "experiments": {"e": {"extra": None}}}},
         "ping_info.experiments.e: 'branch' is a required property"),
        ([], "$: [] is not of type 'object'"),
    ],
)
def test_wrong_values_fail_naming_the_path(doc: Any, expected: str) -> None:
    errors = validate_ping(doc)
    assert any(e.startswith(expected) for e in errors), errors


def test_all_errors_collected_and_sorted() -> None:
    doc = {
        "client_info": {k: v for k, v in CLIENT_INFO.items() if k != "os"},
        "ping_info": {**PING_INFO, "seq": "one"},
        "metrics": {"counter": {"a.b": "x"}, "boolean": {"a.c": "y"}},
        "events": [{"category": "a", "name": "b"}],
    }
    assert validate_ping(doc) == [
        "client_info: 'os' is a required property",
        "events[0]: 'timestamp' is a required property",
        "metrics.boolean.a.c: 'y' is not of type 'boolean'",
        "metrics.counter.a.b: 'x' is not of type 'integer'",
        "ping_info.seq: 'one' is not of type 'integer'",
    ]


def test_long_instances_are_truncated() -> None:
    errors = validate_ping({"metrics": {"counter": {"a.b": "z" * 5000}}})
    assert len(errors) == 1 and len(errors[0]) < 120
    assert errors[0].startswith("metrics.counter.a.b: 'zzz") and "..." in errors[0]


@pytest.mark.parametrize("size", [0, MAX_LISTED_BYTES + 1])  # jsonschema's errors, and jsonschema-rs's first one
def test_one_error_is_cut_to_max_error_characters(size) -> None:
    """An unknown key of n characters gives a message of 57 + n: 200 (MAX_ERROR) is kept whole,
    201 is cut to exactly 200, ending in '...'."""
    def message(n):
        [error] = validate_ping({"metrics": {"counter": {"a.b": 1}, "x" * n: {}}}, size)
        assert error.startswith("metrics: ")
        return error[len("metrics: "):]

    whole = f"Additional properties are not allowed ('{'x' * 143}' was unexpected)"
    assert len(whole) == MAX_ERROR == 200 and message(143) == whole
    cut = message(144)
    assert cut == f"Additional properties are not allowed ('{'x' * 144}' was unexpected)"[:197] + "..."
    assert len(cut) == MAX_ERROR and cut.endswith("' was unexpec...")
    assert len(message(5000)) == MAX_ERROR


def test_validators_disagreeing_never_yield_empty() -> None:
    # Python's re lets '$' match before a trailing newline (jsonschema); jsonschema-rs does not.
    errors = validate_ping({"metrics": {"counter": {"a.b\n": 1}}})
    assert len(errors) == 1


def test_render_limit_and_more_suffix() -> None:
    errors = [f"metrics.counter.m{i}: bad" for i in range(13)]
    text = render(errors, limit=10)
    assert text.endswith("; metrics.counter.m9: bad (+3 more)")
    assert text.count("; ") == 9
    assert render(errors[:2]) == "metrics.counter.m0: bad; metrics.counter.m1: bad"
    assert render([]) == ""


def test_render_caps_length_keeping_suffix() -> None:
    errors = ["x" * 300] * 12
    text = PingValidator.render(errors)
    # three errors fit whole in 1024 characters, the fourth is cut: nine are not shown whole
    # (before: "(+2 more)", counting only the errors past the tenth)
    assert len(text) == 1024 and text.endswith("... (+9 more)")


def test_render_counts_an_error_that_ends_right_at_the_cut_as_shown() -> None:
    """An error that ends exactly where the 1024 characters are cut is shown whole: only the one
    after it is counted in "(+N more)" (counting it too passed every test)."""
    errors = ["a" * 1011, "b" * 20]
    assert PingValidator.render(errors) == "a" * 1011 + "... (+1 more)"
    assert len(PingValidator.render(errors)) == 1024


def test_default_validator_is_built_once_and_judges_pings() -> None:
    # built once per process (compiling the schema is the dear part), and it is the real schema's
    assert default_validator() is default_validator()
    assert default_validator().validate({"metrics": {"counter": {"a.b": 1}}}, 40) == []
    assert default_validator().validate({"metrics": {"counter": {"a.b": "one"}}}, 40) != []


def test_schema_path_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gleanpipe.config import Config

    custom = tmp_path / "s.json"
    custom.write_text(json.dumps({"type": "object", "required": ["x"]}), encoding="utf-8")
    monkeypatch.setenv("GLEANPIPE_SCHEMA_PATH", str(custom))
    path = Config.from_env().schema_path  # config.py reads the variable; validation.py is given it
    assert load_schema(path) == {"type": "object", "required": ["x"]}
    assert PingValidator(load_schema(path)).validate({}) == ["$: 'x' is a required property"]
    assert default_validator(path).validate({}) == ["$: 'x' is a required property"]
    assert default_validator().validate({}) == []  # the bundled schema


def test_list_indexes_sort_as_numbers() -> None:
    errors = validate_ping({"metrics": {"string_list": {"a.b": [1] * 12}}})
    assert [e.split(":")[0] for e in errors] == [f"metrics.string_list.a.b[{i}]" for i in range(12)]


def test_a_ping_with_a_million_errors_costs_a_hundred() -> None:
    """Before: every error was collected (pure Python) and sorted, though 10 are shown: a 2 KB gzip
    body with a million errors took 11 s of CPU and 271 MB. Collection now stops after MAX_ERRORS."""
    doc = {"metrics": {"string_list": {"a.b": [1] * 30_000}}}  # 60 KB of JSON: under MAX_LISTED_BYTES
    size = len(json.dumps(doc, separators=(",", ":")))
    assert size <= MAX_LISTED_BYTES
    errors = validate_ping(doc, size)
    assert len(errors) == MAX_ERRORS and errors.more == "capped"
    assert errors[:2] == ["metrics.string_list.a.b[0]: 1 is not of type 'string'",
                          "metrics.string_list.a.b[1]: 1 is not of type 'string'"]
    assert render(errors).endswith("; metrics.string_list.a.b[9]: 1 is not of type 'string' (+90 more; counting stops at 100)")


def test_a_large_payload_reports_its_first_error_only() -> None:
    """Over MAX_LISTED_BYTES the pure-Python pass is not run at all (it walks every valid value
    before an error): jsonschema-rs gives the first error and stops there."""
    doc = {"metrics": {"string_list": {"a.b": ["x"] * 100_000 + [1, 2]}}}
    errors = validate_ping(doc, len(json.dumps(doc)))
    assert errors == ['metrics.string_list.a.b[100000]: 1 is not of type "string"'] and errors.more == "large"
    assert render(errors) == ('metrics.string_list.a.b[100000]: 1 is not of type "string" '
                              f"(only the first error is looked for in a payload over {MAX_LISTED_BYTES} bytes)")


def test_every_error_is_listed_up_to_exactly_max_listed_bytes() -> None:
    """README: every schema error is looked for in a payload of up to 64 KiB (MAX_LISTED_BYTES); only
    a larger one gets its first error alone. The bound itself was not tested: a payload of exactly
    MAX_LISTED_BYTES bytes passed every test with its errors listed or with only its first."""
    def doc_of(size: int) -> tuple[dict, int]:
        doc = {"metrics": {"string_list": {"a.b": [1, 2, ""]}}}
        pad = size - len(json.dumps(doc, separators=(",", ":")))
        doc["metrics"]["string_list"]["a.b"][2] = "x" * pad
        return doc, len(json.dumps(doc, separators=(",", ":")))

    doc, size = doc_of(MAX_LISTED_BYTES)
    assert size == MAX_LISTED_BYTES
    errors = validate_ping(doc, size)
    assert errors == ["metrics.string_list.a.b[0]: 1 is not of type 'string'",
                      "metrics.string_list.a.b[1]: 2 is not of type 'string'"] and errors.more == ""
    assert render(errors) == "; ".join(errors)
    doc, size = doc_of(MAX_LISTED_BYTES + 1)
    assert size == MAX_LISTED_BYTES + 1
    errors = validate_ping(doc, size)
    assert errors == ['metrics.string_list.a.b[0]: 1 is not of type "string"'] and errors.more == "large"


def test_render_counts_a_single_error_left_over() -> None:
    """Eleven errors: ten are shown and "(+1 more)" says so; ten errors need no count."""
    errors = [f"metrics.counter.m{i}: bad" for i in range(11)]
    assert render(errors) == "; ".join(errors[:10]) + " (+1 more)"
    assert render(errors[:10]) == "; ".join(errors[:10])


@pytest.mark.parametrize("url, ok", [("database://db.example.com/x", True), ("dataurl:x", True), ("data-sync://x", True),
                                     ("https://example.com/", True), ("data:text/plain,hi", False)])
def test_only_data_urls_are_refused(url: str, ok: bool) -> None:
    """The Glean SDK refuses `data:` URLs only. Before: the schema refused every scheme starting
    with "data" (`database://...`), and its 400 made the SDK delete the whole ping."""
    errors = validate_ping({"metrics": {"url": {"probe.link": url}}})
    assert (errors == []) is ok, errors


# --- values nested too deep for repr() or jsonschema-rs: never a RecursionError or ValueError. The edge
# refuses them first (nesting.MAX_JSON_DEPTH), but rendering an error must not depend on that.


def chain(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _too_deep_for_repr() -> int:
    """A depth that repr() refuses (RecursionError) here, and so at any deeper stack. 3.11's repr of
    a list gives up at the recursion limit (1000); 3.12 and 3.13 count it against a C limit of their
    own, and took the 1,010 levels these tests used (3.12.1 refuses 2,020, 3.13.0 16,160 but not 3,000),
    so that there they checked nothing."""
    depth = sys.getrecursionlimit() + 10
    while depth < 10_000_000:
        try:
            repr(chain(depth))
        except RecursionError:
            return depth
        depth *= 2
    raise AssertionError(f"repr() took a list nested {depth} levels deep")


TOO_DEEP_FOR_REPR = _too_deep_for_repr()


def test_an_error_beside_a_value_too_deep_for_repr_is_rendered() -> None:
    """Before: the error's message is quoted without the ping's repr(), but _message took that
    repr() to look for it (a RecursionError, the edge's 500 from 967 levels under gunicorn)."""
    doc = ping(x=chain(TOO_DEEP_FOR_REPR))
    assert validate_ping(doc) == ["$: Additional properties are not allowed ('x' was unexpected)"]


def test_an_offending_value_too_deep_for_repr_still_gives_an_error() -> None:
    """jsonschema's own message repr()s the value (a RecursionError); jsonschema-rs, asked for its
    first error instead, gives up past about 255 levels: the ping is still reported invalid."""
    doc = ping(metrics={"string_list": {"toolbox.tags": [chain(TOO_DEEP_FOR_REPR)]}})
    assert validate_ping(doc) == ["$: document does not match the ping schema"]
    shallow = ping(metrics={"string_list": {"toolbox.tags": [chain(40)]}})
    assert validate_ping(shallow) == [f"metrics.string_list.toolbox.tags[0]: {repr(chain(40))[:57]}... is not of type 'string'"]


def test_a_large_payload_nested_past_jsonschema_rs_gets_an_error_not_its_value_error() -> None:
    """Over MAX_LISTED_BYTES only jsonschema-rs's first error is asked for; past about 255 levels it
    raises ValueError("Recursion limit reached"), which was the edge's 500."""
    errors = validate_ping(ping(x=chain(300)), MAX_LISTED_BYTES + 1)
    assert (list(errors), errors.more) == (["$: document does not match the ping schema"], "large")
    errors = validate_ping(ping(x=chain(200)), MAX_LISTED_BYTES + 1)
    assert (list(errors), errors.more) == (["$: Additional properties are not allowed ('x' was unexpected)"], "large")
