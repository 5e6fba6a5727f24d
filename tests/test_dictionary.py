"""The dictionary against a real `gleanpipe serve` (dictionary_site.site): apps add,
classification, pre-created columns, the JSON API, the pages (escaping), the static build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from html.parser import HTMLParser

import duckdb
import pytest

from gleanpipe.dictionary.catalog import split_struct
from gleanpipe.dictionary.pages import PAGE_ID_RE
from gleanpipe.table_schema import METRIC_TYPES

from conftest import DATASET, gz, make_ping, post, submit_path
from dictionary_site import EVIL, EVIL_EVENT, EVIL_LABEL, GLEAN, api, cli, get, site  # noqa: F401 (site: fixture)

pytestmark = pytest.mark.e2e


def test_apps_add_reports_what_it_created(tmp_path):
    # No serve running: apps add opens the warehouse file itself.
    out = cli(tmp_path / "data", "apps", "add", "org.example.toolbox", "--metrics", str(GLEAN / "metrics.yaml"),
              "--pings", str(GLEAN / "pings.yaml"))
    assert out.returncode == 0, out.stderr
    tables = "anonymous_report_v1, baseline_v1, metrics_v1, no_info_v1, toolbox_usage_v1"
    # the columns counted in the tables they were made in (it said "in" every table the definitions touch)
    assert out.stdout == (f"org.example.toolbox (dataset {DATASET}): 28 metrics, 3 pings, in {tables}; 29 columns "
                          "created (2 in anonymous_report_v1, 1 in baseline_v1, 1 in metrics_v1, 2 in no_info_v1, "
                          "23 in toolbox_usage_v1)\n")
    # Adding it again replaces the definitions, says so, and creates nothing new.
    again = cli(tmp_path / "data", "apps", "add", "org.example.toolbox", "--metrics", str(GLEAN / "metrics.yaml"))
    assert again.returncode == 0
    assert again.stdout == (f"org.example.toolbox (dataset {DATASET}): 28 metrics, 0 pings, in {tables}; 0 columns "
                            "created\nreplaced the definitions of org.example.toolbox: 28 metrics, 3 pings\n")
    listed = json.loads(cli(tmp_path / "data", "apps", "list", "--format", "json").stdout)
    assert listed == [{"app_id": "org.example.toolbox", "dataset": DATASET, "defined": True, "ping_types": 0,
                       "pings_received": 0, "metrics_defined": 28, "last_seen": None}]
    assert cli(tmp_path / "data", "apps", "list", "--format", "csv").stdout == (
        "app_id,dataset,defined,ping_types,pings_received,metrics_defined,last_seen\n"
        f"org.example.toolbox,{DATASET},true,0,0,28,\n")  # one line ending, no blank line after it
    # The app id as the submit URL spells it is the same dataset: its definitions replace those
    # of org.example.toolbox, which the user is told (it was silent).
    dashed = cli(tmp_path / "data", "apps", "add", "org-example-toolbox", "--pings", str(GLEAN / "pings.yaml"))
    assert dashed.returncode == 0
    assert dashed.stdout.splitlines()[1] == (f"replaced the definitions of org.example.toolbox (another app id for "
                                             f"dataset {DATASET}): 28 metrics, 0 pings")


def test_apps_add_shows_parse_errors_compactly(tmp_path):
    bad = tmp_path / "metrics.yaml"
    bad.write_text("---\n$schema: moz://mozilla.org/schemas/glean/metrics/2-0-0\ntoolbox:\n  x:\n    type: countr\n")
    out = cli(tmp_path / "data", "apps", "add", "org.example.toolbox", "--metrics", str(bad))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "Documentation for this node" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0] == "Error: the definitions do not parse:"
    assert any(line.strip().startswith(f"{bad}: toolbox.x: 'countr' is not one of") for line in lines)
    assert any("toolbox.x: Missing required properties" in line for line in lines)
    missing = cli(tmp_path / "data", "apps", "add", "x", "--metrics", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and f"File '{tmp_path / 'nope.yaml'}' does not exist." in missing.stderr
    badid = cli(tmp_path / "data", "apps", "add", "../etc", "--metrics", str(GLEAN / "metrics.yaml"))
    assert badid.returncode == 2 and "Invalid value for 'APP_ID': '../etc'" in badid.stderr
    assert "Traceback" not in badid.stderr
    assert not (tmp_path / "data" / "warehouse.duckdb").exists()  # nothing written on bad input


def test_apps_add_refuses_alias_bombs_and_deep_nesting_in_one_line_each(tmp_path):
    """A "billion laughs" of YAML aliases kept `apps add` busy for ever (glean_parser checks the
    definitions as the aliases expand them), a smaller one gave a 5.8 MB error message, and a
    file nested a few hundred deep ended in a RecursionError's traceback. Each is refused at once,
    in one line, naming the file and the line; a file within the limits parses as before."""
    schema = "$schema: moz://mozilla.org/schemas/glean/metrics/2-0-0\n"
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text(schema + 'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{n}: &{n} [{','.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi")))
    flow = tmp_path / "flow.yaml"
    flow.write_text(schema + "deep: " + "[" * 1000 + "]" * 1000 + "\n")
    block = tmp_path / "block.yaml"
    block.write_text(schema + "deep:\n" + "".join("  " * i + "k:\n" for i in range(1, 400)) + "  " * 400 + "x\n")
    json_file = tmp_path / "deep.json"
    json_file.write_text('{"$schema": "moz://mozilla.org/schemas/glean/metrics/2-0-0", "x": '
                         + "[" * 3000 + "]" * 3000 + "}")
    said = {
        laughs: f"{laughs}:6: its aliases (*name) make it more than 100000 nodes larger than it is written "
                "(MAX_ALIAS_NODES): write the definitions out, or use fewer aliases",
        flow: f"{flow}:2: nests deeper than the 64 levels a definitions file may have (MAX_NESTING)",
        block: f"{block}:66: nests deeper than the 64 levels a definitions file may have (MAX_NESTING)",
        json_file: f"{json_file}: nests 3001 deep, over the 64 levels a definitions file may have (MAX_NESTING)",
    }
    for path, line in said.items():
        started = time.monotonic()
        out = cli(tmp_path / "data", "apps", "add", "org.example.toolbox", "--metrics", str(path))
        assert (out.returncode, out.stdout, out.stderr) == (1, "", f"Error: the definitions do not parse:\n  {line}\n")
        assert time.monotonic() - started < 30
    # within the limits: glean_parser's own words, each problem cut to 500 characters at most
    small = tmp_path / "small.yaml"
    small.write_text(schema + "big: " + "x" * 10_000 + "\nsixty: " + "[" * 62 + "]" * 62 + "\n")
    out = cli(tmp_path / "data", "apps", "add", "org.example.toolbox", "--metrics", str(small))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    lines = out.stderr.splitlines()[1:]
    assert lines and all(len(line) <= 2 + 500 + len("... (99999 more characters)") for line in lines)
    assert any(line.startswith(f"  {small}: 'xxx") and line.endswith(" more characters)") for line in lines)
    assert not (tmp_path / "data" / "warehouse.duckdb").exists()  # nothing written on bad input


def test_apps_add_refuses_a_field_written_twice_in_a_metric_or_a_ping(tmp_path):
    """`type: counter` and, lower down, `type: quantity` in one metric: YAML keeps the last, and the
    metric was stored as a quantity without a word (found by fuzzing apps add). Refused as a
    metric written twice is, with the lines of both; a merge (`<<: *defaults`) is meant to be
    overridden and still works."""
    common = ("    lifetime: ping\n    send_in_pings: [metrics]\n    bugs: [https://example.com/1]\n"
              "    data_reviews: [https://example.com/1]\n    notification_emails: [t@example.com]\n"
              "    expires: never\n")
    metrics = tmp_path / "metrics.yaml"
    metrics.write_text("---\n$schema: moz://mozilla.org/schemas/glean/metrics/2-0-0\ntoolbox:\n"
                       "  launch_count:\n    type: counter\n    description: Launches.\n    type: quantity\n"
                       "    unit: launches\n" + common +
                       "  opened:\n    type: event\n    description: Opened.\n    extra_keys:\n"
                       "      tab: {type: string, description: one, description: two}\n" + common)
    pings = tmp_path / "pings.yaml"
    ping = ("  bugs: [https://example.com/1]\n  data_reviews: [https://example.com/1]\n"
            "  notification_emails: [t@example.com]\n")
    pings.write_text("---\n$schema: moz://mozilla.org/schemas/glean/pings/2-0-0\nusage:\n  description: Usage.\n"
                     "  include_client_id: true\n  include_client_id: false\n" + ping)
    out = cli(tmp_path / "data", "apps", "add", "org.example.toolbox", "--metrics", str(metrics), "--pings", str(pings))
    assert (out.returncode, out.stdout, out.stderr) == (1, "", (
        "Error: the definitions do not parse:\n"
        f"  {metrics}:7: Duplicate key 'type' in toolbox.launch_count already defined at line 5: YAML keeps only "
        "the last\n"
        f"  {metrics}:19: Duplicate key 'description' in toolbox.opened.extra_keys.tab already defined at line 19: "
        "YAML keeps only the last\n"
        f"  {pings}:6: Duplicate key 'include_client_id' in usage already defined at line 5: YAML keeps only the "
        "last\n"))
    assert not (tmp_path / "data" / "warehouse.duckdb").exists()  # nothing written on bad input
    merged = tmp_path / "merged.yaml"
    merged.write_text("---\n$schema: moz://mozilla.org/schemas/glean/metrics/2-0-0\ntoolbox:\n"
                      "  launch_count: &counter\n    type: counter\n    description: Launches.\n" + common +
                      "  crash_count:\n    <<: *counter\n    description: Crashes.\n")
    out = cli(tmp_path / "data", "apps", "add", "org.example.toolbox", "--metrics", str(merged))
    assert (out.returncode, out.stderr) == (0, ""), out.stderr
    assert out.stdout.startswith("org.example.toolbox (dataset org_example_toolbox): 2 metrics, 0 pings")


def test_apps_add_refuses_a_ping_named_as_the_events_table_with_or_without_serve(tmp_path):
    """glean_parser allows a ping named `events-stream`, whose table would be the one that holds
    every ping's events. Before: without serve, `apps add` failed with DuckDB's "Binder Error:
    Referenced column event_index not found in FROM clause..."; through serve, with "the app's
    definitions are not as `gleanpipe apps add` sends them", which they were. Now both refuse it
    as the parse errors are said, naming the file and the ping, and store nothing."""
    from conftest import ServeProcess

    pings = tmp_path / "pings.yaml"
    ping = ("  description: A ping.\n  include_client_id: true\n  bugs: [https://example.com/1]\n"
            "  data_reviews: [https://example.com/1]\n  notification_emails: [t@example.com]\n")
    pings.write_text(f"---\n$schema: moz://mozilla.org/schemas/glean/pings/2-0-0\nevents-stream:\n{ping}usage:\n{ping}")
    said = (f"Error: the definitions do not parse:\n  {pings}: events-stream: the name of the table that holds every "
            "ping's events (events_stream): no ping of that name is loaded; rename the ping\n")
    out = cli(tmp_path / "data", "apps", "add", "one", "--pings", str(pings))
    assert (out.returncode, out.stdout, out.stderr) == (1, "", said)
    assert not (tmp_path / "data" / "warehouse.duckdb").exists()  # nothing written
    server = ServeProcess(tmp_path / "served").start()
    try:
        through = cli(tmp_path / "served", "apps", "add", "one", "--pings", str(pings))
        assert (through.returncode, through.stdout, through.stderr) == (1, "", said)
        assert json.loads(cli(tmp_path / "served", "apps", "list", "--format", "json").stdout) == []
    finally:
        assert server.stop() == 0


def test_apps_add_refuses_a_metric_category_or_ping_defined_twice_with_or_without_serve(tmp_path):
    """YAML keeps the last of two equal keys, and so does glean_parser's parse: a metric, or a
    whole category, written twice in one metrics.yaml was stored as its last copy, the first one
    dropped without a word (glean_parser's lint calls both errors: REDEFINED_METRIC,
    REDEFINED_CATEGORY). Now they are refused as glean_parser refuses the same metric in two files
    and a ping twice in one pings.yaml, with the lines of both, the same with and without serve,
    and nothing is stored: the app keeps its definitions."""
    from conftest import ServeProcess

    head = "---\n$schema: moz://mozilla.org/schemas/glean/metrics/2-0-0\n"
    body = ("    lifetime: ping\n    send_in_pings: [metrics]\n    bugs: [https://example.com/1]\n"
            "    data_reviews: [https://example.com/1]\n    notification_emails: [t@example.com]\n"
            "    expires: never\n    description: A metric.\n")  # 7 lines
    twice = tmp_path / "twice.yaml"  # lines 4 and 13
    twice.write_text(f"{head}toolbox:\n  launch_count:\n    type: counter\n{body}"
                     f"  launch_count:\n    type: string\n{body}")
    categories = tmp_path / "categories.yaml"  # toolbox at lines 3 and 13 (with `<<:` merges, which may repeat keys)
    categories.write_text(f"{head}toolbox:\n  a: &a\n    type: counter\n{body}"
                          f"toolbox:\n  b:\n    <<: *a\n    type: string\n")
    other = tmp_path / "other.yaml"
    other.write_text(f"{head}toolbox:\n  launch_count:\n    type: counter\n{body}")
    pings = tmp_path / "pings.yaml"
    ping = ("  description: A ping.\n  include_client_id: true\n  bugs: [https://example.com/1]\n"
            "  data_reviews: [https://example.com/1]\n  notification_emails: [t@example.com]\n")
    pings.write_text(f"---\n$schema: moz://mozilla.org/schemas/glean/pings/2-0-0\nusage:\n{ping}usage:\n{ping}")
    said = {
        ("--metrics", str(twice)): [f"{twice}:13: Duplicate metric name 'toolbox.launch_count' already defined at "
                                    "line 4: YAML keeps only the last definition"],
        ("--metrics", str(categories)): [f"{categories}:13: Duplicate category 'toolbox' already defined at line 3: "
                                         "YAML keeps only this one, without the metrics of the first; write each "
                                         "category once"],
        ("--metrics", str(other), "--metrics", str(twice)): [  # ours first, then glean_parser's own
            f"{twice}:13: Duplicate metric name 'toolbox.launch_count' already defined at line 4: YAML keeps only "
            "the last definition",
            f"{twice}:13: Duplicate metric name 'toolbox.launch_count' already defined in '{other}'"],
        ("--pings", str(pings)): [f"{pings}: Duplicate ping named 'usage'."],  # glean_parser's, as before
    }
    glean = ("--metrics", str(GLEAN / "metrics.yaml"), "--pings", str(GLEAN / "pings.yaml"))
    assert cli(tmp_path / "data", "apps", "add", "org.example.toolbox", *glean).returncode == 0
    for args, lines in said.items():
        out = cli(tmp_path / "data", "apps", "add", "org.example.toolbox", *args)
        assert (out.returncode, out.stdout, out.stderr) == (
            1, "", "Error: the definitions do not parse:\n" + "".join(f"  {line}\n" for line in lines)), args
    kept = [{"app_id": "org.example.toolbox", "dataset": DATASET, "defined": True, "ping_types": 0,
             "pings_received": 0, "metrics_defined": 28, "last_seen": None}]
    assert json.loads(cli(tmp_path / "data", "apps", "list", "--format", "json").stdout) == kept
    server = ServeProcess(tmp_path / "data").start()
    try:
        for args, lines in said.items():
            out = cli(tmp_path / "data", "apps", "add", "org.example.toolbox", *args)
            assert (out.returncode, out.stdout, out.stderr) == (
                1, "", "Error: the definitions do not parse:\n" + "".join(f"  {line}\n" for line in lines)), args
        assert json.loads(cli(tmp_path / "data", "apps", "list", "--format", "json").stdout) == kept
    finally:
        assert server.stop() == 0


def test_apps_add_warns_of_metrics_that_share_a_column(tmp_path):
    """a.b_c and a_b.c are both valid Glean ids and both become the column a_b_c: a counter of each
    lands in one column, and nothing said so."""
    common = ("    lifetime: ping\n    send_in_pings: [metrics]\n    bugs: [https://example.com/1]\n"
              "    data_reviews: [https://example.com/1]\n    notification_emails: [t@example.com]\n"
              "    expires: never\n    description: A metric.\n")
    metrics = tmp_path / "metrics.yaml"
    metrics.write_text("---\n$schema: moz://mozilla.org/schemas/glean/metrics/2-0-0\n"
                       "a:\n  b_c:\n    type: counter\n" + common + "  b_d:\n    type: counter\n" + common +
                       "a_b:\n  c:\n    type: counter\n" + common + "  d:\n    type: string\n" + common)
    out = cli(tmp_path / "data", "apps", "add", "odd", "--metrics", str(metrics))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "odd (dataset odd): 4 metrics, 0 pings, in metrics_v1; 3 columns created (3 in metrics_v1)\n"
    # a.b_d (counter) and a_b.d (string) have columns of their own: only a.b_c and a_b.c share one
    assert out.stderr == ("warning: a.b_c and a_b.c share the column metrics.counter.a_b_c: their values cannot be "
                          "told apart (in one ping, the second goes to additional_properties); rename one\n")


def test_definitions_precreate_columns_with_the_loader_types(site):
    app = api(site, f"apps/{DATASET}.json")
    by_table: dict[str, dict[tuple[str, str], str]] = {}
    for table, data_type in site.query(f"SELECT table_name, data_type FROM duckdb_columns() WHERE schema_name = "
                                       f"'{DATASET}' AND column_name = 'metrics'")[1]:
        by_table[table] = {(m, c): t for m, ts in split_struct(data_type) for c, t in split_struct(ts)}
    scratch = duckdb.connect()
    checked = 0
    for metric in app["metrics"]:
        if not metric["defined"] or metric["type"] == "event":
            continue
        wire = "counter" if metric["type"] == "denominator" else metric["type"]
        scratch.execute(f"CREATE OR REPLACE TABLE t (c {METRIC_TYPES[wire].duckdb()})")
        expected = scratch.execute("SELECT data_type FROM duckdb_columns() WHERE table_name = 't'").fetchone()[0]
        for where in metric["where"]:
            column = where["column"].split(".")[-1]
            assert by_table[where["table"]][(wire, column)] == expected, metric["id"]
            checked += 1
    assert checked >= 28
    # An app with definitions but no data: its tables exist, typed, and empty.
    cols, rows = site.query("SELECT table_name, data_type FROM duckdb_columns() WHERE schema_name = 'org_example_xss' "
                            "AND column_name = 'metrics' ORDER BY 1")
    labeled = 'STRUCT(labeled_counter STRUCT(evil_label_set STRUCT("key" VARCHAR, "value" BIGINT)[]))'
    counter = "STRUCT(counter STRUCT(evil_payload BIGINT))"
    assert rows == [("custom_thing", labeled), ("custom_thing_v1", labeled),  # each table and its view
                    ("metrics", counter), ("metrics_v1", counter)]
    assert site.query("SELECT count(*) FROM org_example_xss.metrics_v1")[1] == [(0,)]
    # Values the SDK sent landed in the pre-created columns.
    assert site.query(f"SELECT metrics.counter.toolbox_launch_count FROM {DATASET}.toolbox_usage_v1")[1] == [(6,)]


def test_observed_and_defined_metrics_are_classified(site):
    app = api(site, f"apps/{DATASET}.json")
    m = {x["id"]: x for x in app["metrics"]}
    assert (m["toolbox.launch_count"]["status"], m["toolbox.launch_count"]["values_seen"]) == ("defined", 2)
    assert {w["table"] for w in m["toolbox.launch_count"]["where"]} == {"baseline_v1", "toolbox_usage_v1"}
    assert m["toolbox.tool_opened"]["type"] == "event" and m["toolbox.tool_opened"]["values_seen"] == 2
    assert m["toolbox_secret_counter"] == {**m["toolbox_secret_counter"], "defined": False, "status": "undocumented",
                                           "type": "counter", "values_seen": 1}
    assert m["toolbox_hostile"]["status"] == "undocumented"
    assert m["glean_validation_pings_submitted"]["status"] == "built-in (Glean SDK)"
    assert m["glean.session_start"]["status"] == "built-in (Glean SDK)"
    assert all(x["status"] == "defined" for x in app["metrics"] if x["defined"])  # the SDK sent every one
    xss = {x["id"]: x for x in api(site, "apps/org_example_xss.json")["metrics"]}
    assert xss["evil.payload"]["status"] == "no data yet" and xss["evil.payload"]["values_seen"] == 0
    pings = {p["name"]: p for p in app["pings"]}
    assert pings["toolbox-usage"]["status"] == "defined" and pings["toolbox-usage"]["rows"] == 1
    assert pings["baseline"]["status"] == "built-in" and pings["baseline"]["rows"] == 2
    assert len(app["daily_active_clients"]) == 1 and app["daily_active_clients"][0]["clients"] == 1
    apps = {a["dataset"]: a for a in api(site, "apps.json")}
    assert apps[DATASET]["pings_received"] == 9 and apps[DATASET]["ping_types"] == 7
    assert apps["org_example_xss"]["pings_received"] == 0 and apps["org_example_xss"]["last_seen"] is None


def test_ping_api_and_page(site):
    p = api(site, f"apps/{DATASET}/pings/toolbox-usage.json")
    assert sorted(p["reasons"]) == ["manual", "shutdown"] and p["include_client_id"] is True
    assert p["table"] == "toolbox_usage_v1" and p["rows"] == 1
    seen = datetime.fromisoformat(p["last_seen"].replace("Z", "+00:00"))  # its submission, a moment ago
    assert timedelta(0) <= datetime.now(timezone.utc) - seen < timedelta(hours=1)
    assert len(p["daily"]) == 1 and p["daily"][0]["pings"] == 1 and p["daily"][0]["clients"] == 1
    assert "toolbox.launch_count" in p["metrics"]
    assert api(site, f"apps/{DATASET}/pings/anonymous-report.json")["include_client_id"] is False
    status, headers, body = get(f"{site.url}/dictionary/apps/{DATASET}/pings/toolbox-usage.html")
    html = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert '<dd id="row-count">1</dd>' in html and "<svg" in html and 'class="bar"' in html
    assert "org_example_toolbox.toolbox_usage_v1" in html


def test_every_metric_page_has_runnable_sql_and_chart_data(site):
    app = api(site, f"apps/{DATASET}.json")
    for summary in app["metrics"]:
        if not PAGE_ID_RE.fullmatch(summary["id"]):  # the hostile event name: listed, no page
            assert summary["id"] == f"{EVIL_EVENT}.x"
            continue
        m = api(site, f"apps/{DATASET}/metrics/{summary['id']}.json")
        assert m["queries"], summary["id"]
        for q in m["queries"]:
            view = re.sub(r"_v[0-9]+$", "", q["table"])  # the SQL reads the table's deduplicated view
            assert f"{DATASET}.{view}" in q["sql"]["duckdb"] and q["table"] not in q["sql"]["duckdb"]
            assert f"`{DATASET}.{view}`" in q["sql"]["bigquery"]
            site.query(q["sql"]["duckdb"])  # ready to run: raises on any error
            for sql in q["sql"].values():  # BigQuery reads `metrics.x` in a table named metrics as the table's
                assert not re.findall(r"(?<![\w.`])metrics\.", sql), sql
            # a DuckDB DATE() of a TIMESTAMPTZ takes the session's zone: the SQL is for any DuckDB client
            assert "DATE(submission_timestamp)" not in q["sql"]["duckdb"]
        assert m["chart"] and m["chart"]["series"], summary["id"]
    launch = api(site, f"apps/{DATASET}/metrics/toolbox.launch_count.json")
    assert launch["chart"]["title"] == "daily sum"
    assert [pt[1] for pt in launch["chart"]["series"][0]["points"]] == [6.0]
    assert {c["table"]: c["series"][0]["points"][0][1] for c in launch["charts"]} == {"baseline_v1": 6.0,
                                                                                   "toolbox_usage_v1": 6.0}
    used = api(site, f"apps/{DATASET}/metrics/toolbox.tool_used.json")
    assert {s["name"]: s["points"][0][1] for s in used["chart"]["series"]} == {"hammer": 2.0, "pliers": 1.0}
    assert used["labels"] == ["hammer", "pliers", "saw"]
    timing = api(site, f"apps/{DATASET}/metrics/toolbox.render_time.json")
    assert [s["name"] for s in timing["chart"]["series"]] == ["p50", "p95"]
    assert all(isinstance(s["points"][0][1], int) for s in timing["chart"]["series"])
    event = api(site, f"apps/{DATASET}/metrics/toolbox.tool_opened.json")
    assert event["chart"]["series"][0]["points"][0][1] == 2 and "extra_keys" in event
    assert "WHERE category = 'toolbox' AND name = 'tool_opened'" in event["queries"][0]["sql"]["duckdb"]
    assert site.query(event["queries"][0]["sql"]["duckdb"])[1][0][1:] == (2, 1)


def test_metric_page_html(site):
    status, _, body = get(f"{site.url}/dictionary/apps/{DATASET}/metrics/toolbox.launch_count.html")
    html = body.decode()
    assert status == 200
    assert 'class="chart"' in html and ("<polyline" in html or "<circle" in html)
    assert 'class="sql-duckdb"' in html and 'class="sql-bigquery"' in html and "button class=\"copy\"" in html
    assert "SUM(p.metrics.counter.toolbox_launch_count)" in html
    assert "How many times a tool was launched" in html
    assert "https://github.com/example/gleanpipe/issues/1" in html
    # "sent in pings": a link to the page of each of the app's pings it names
    assert (f'<a href="../../../apps/{DATASET}/pings/baseline.html">baseline</a>, '
            f'<a href="../../../apps/{DATASET}/pings/toolbox-usage.html">toolbox-usage</a></dd>') in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html.replace(
        'href="https://github.com/example/gleanpipe/issues/1"', ""))  # no network assets


def test_user_text_is_escaped(site):
    _, headers, body = get(f"{site.url}/dictionary/apps/org_example_xss/metrics/evil.payload.html")
    html = body.decode()
    assert "<script>window.__xss" not in html and "<img src=x" not in html
    assert "&lt;/script&gt;&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    assert html.count("<script") == 2  # the page's own JSON and JS, nothing else
    assert "\\u003c/script\\u003e" in html  # inside the embedded JSON
    assert "script-src 'unsafe-inline'" in headers["Content-Security-Policy"]
    _, _, body = get(f"{site.url}/dictionary/apps/{DATASET}/index.html")
    app_html = body.decode()
    assert EVIL_LABEL not in app_html and EVIL_EVENT not in app_html
    assert "&lt;svg onload=window.__xss=4&gt;.x" in app_html  # listed, escaped, without a page link
    _, _, body = get(f"{site.url}/dictionary/apps/{DATASET}/metrics/toolbox_hostile.html")
    assert EVIL_LABEL not in body.decode() and "&lt;img src=x onerror=&quot;window.__xss=3&quot;&gt;" in body.decode()
    # the chart's legend shows the label's first 16 characters: escaped too, not a cut-off tag
    assert "<img" not in body.decode() and '<text class="legend" x="70" y="229">&lt;img src=x onerr</text>' in body.decode()
    _, _, body = get(f"{site.url}/dictionary/apps/{DATASET}/metrics/toolbox.active_theme.html")
    assert "<script>window.__xss" not in body.decode()


def test_quotes_in_a_description_stay_inside_the_attribute_that_holds_it(site):
    """The app page's search reads each metric row's data-search attribute, made of the id, the
    description and the type: a description's quote must not end the attribute (its text would
    become attributes of the row, an onerror= among them)."""
    class Rows(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows = []

        def handle_starttag(self, tag, attrs):
            if tag == "tr" and attrs:
                self.rows.append(attrs)

    _, _, body = get(f"{site.url}/dictionary/apps/org_example_xss/index.html")
    parser = Rows()
    parser.feed(body.decode())
    assert [name for attrs in parser.rows for name, _ in attrs] == ["data-search"] * len(parser.rows)
    assert [("data-search", f"evil.payload {EVIL.lower()} counter")] in parser.rows


def test_bad_requests_get_clear_errors(site):
    status, headers, body = get(f"{site.url}/dictionary/api/apps/nope.json")
    assert status == 404 and json.loads(body) == {"error": "no app 'nope'"}
    status, _, body = get(f"{site.url}/dictionary/api/apps/{DATASET}/metrics/no.such.json")
    assert status == 404 and "no metric 'no.such'" in json.loads(body)["error"]
    status, headers, body = get(f"{site.url}/dictionary/apps/{DATASET}/pings/nope.html")
    assert status == 404 and headers["Content-Type"].startswith("text/html") and b"no ping" in body
    for table_spelling in ("toolbox_usage", "toolbox_usage_v1"):  # the ping's table, not its name
        status, _, body = get(f"{site.url}/dictionary/api/apps/{DATASET}/pings/{table_spelling}.json")
        assert (status, json.loads(body)) == (404, {"error": f"no ping {table_spelling!r} in {DATASET}: pings go "
                                                             "by their Glean name, 'toolbox-usage'"})
    for path in ("/dictionary/apps/..%2F..%2Fetc/index.html", "/dictionary/apps/a/b/c/d", "/dictionary/x';--"):
        assert get(site.url + path)[0] == 404
    # the path is in the 404 page's text: escaped, so a link to it cannot put markup on the page
    status, headers, body = get(f"{site.url}/dictionary/%3Cimg%20src=x%20onerror=%22window.__xss=5%22%3E")
    assert (status, headers["Content-Type"]) == (404, "text/html; charset=utf-8")
    assert b"<img" not in body and b"<p>no page &#x27;&lt;img src=x onerror=&quot;window.__xss=5&quot;&gt;&#x27;</p>" in body
    status, headers, _ = get(f"{site.url}/dictionary")
    assert status == 301 and headers["Location"] == "/dictionary/"
    status, _, _ = post(f"{site.url}/dictionary/api/apps.json", b"{}", {"Content-Type": "application/json"})
    assert status == 405
    assert get(f"{site.url}/dictionary/")[0] == 200
    assert get(f"{site.url}/submit")[0] == 404  # the submit edge still answers its own paths
    assert get(f"{site.url}/dictionaryx")[0] == 404


def test_apps_add_and_dictionary_build_say_one_of_a_kind_in_the_singular(tmp_path):
    """Before: "1 metrics, 1 pings, ...; 1 columns created" and "wrote ... 1 apps, 1 pings"."""
    metrics = tmp_path / "metrics.yaml"
    metrics.write_text("---\n$schema: moz://mozilla.org/schemas/glean/metrics/2-0-0\n"
                       "a:\n  b:\n    type: counter\n    lifetime: ping\n    send_in_pings: [metrics]\n"
                       "    bugs: [https://example.com/1]\n    data_reviews: [https://example.com/1]\n"
                       "    notification_emails: [t@example.com]\n    expires: never\n    description: A metric.\n")
    pings = tmp_path / "pings.yaml"
    pings.write_text("---\n$schema: moz://mozilla.org/schemas/glean/pings/2-0-0\n"
                     "usage:\n  description: A ping.\n  include_client_id: true\n  bugs: [https://example.com/1]\n"
                     "  data_reviews: [https://example.com/1]\n  notification_emails: [t@example.com]\n")
    out = cli(tmp_path / "data", "apps", "add", "one", "--metrics", str(metrics), "--pings", str(pings))
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == ("one (dataset one): 1 metric, 1 ping, in metrics_v1, usage_v1; 1 column created "
                          "(1 in metrics_v1)\n")
    built = cli(tmp_path / "data", "dictionary", "build", "--out", str(tmp_path / "site"))
    assert (built.returncode, built.stderr) == (0, "")
    site = tmp_path / "site"  # the pings: usage and metrics (the metric's send_in_pings)
    assert built.stdout == f"wrote 10 files to {site}: 1 app, 2 pings, 1 metric; open {site / 'index.html'}\n"


@pytest.mark.parametrize("command, limit, what", [
    (["dictionary", "build", "--out", "site"], 300, "the dictionary's data"),
    (["apps", "list"], 200, "the list of apps"),
], ids=["dictionary build", "apps list"])
def test_a_command_through_serve_over_its_query_limit_says_what_to_do(tmp_path, command, limit, what):
    """`dictionary build` and `apps list` while serve runs read through serve, which refuses an
    answer over its GLEANPIPE_QUERY_MAX_BYTES. Before: "the result is over 300 bytes as JSON, the
    most serve answers (GLEANPIPE_QUERY_MAX_BYTES): add a LIMIT or select fewer columns", for SQL
    the user never wrote. With serve stopped, as the message says, the command reads the file itself."""
    from conftest import ServeProcess

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    added = cli(data_dir, "apps", "add", "org.example.toolbox", "--metrics", str(GLEAN / "metrics.yaml"),
                "--pings", str(GLEAN / "pings.yaml"))
    assert added.returncode == 0, added.stderr
    args = [str(tmp_path / a) if a == "site" else a for a in command]
    server = ServeProcess(data_dir, env={"GLEANPIPE_QUERY_MAX_BYTES": str(limit)}).start()
    try:
        refused = cli(data_dir, *args)
    finally:
        assert server.stop() == 0
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (
        f"Error: {what} is over {limit} bytes as JSON, the most the running serve answers "
        "(GLEANPIPE_QUERY_MAX_BYTES): restart serve with a higher GLEANPIPE_QUERY_MAX_BYTES, or stop serve and run "
        f"{' '.join(command[:2])} again (it then reads the DuckDB file itself, with no such limit)\n")
    again = cli(data_dir, *args)
    assert (again.returncode, again.stderr) == (0, ""), again.stderr


def test_dictionary_pages_over_serves_query_limit_are_a_500_that_says_what_to_do_with_one_log_line(tmp_path):
    """A real serve whose GLEANPIPE_QUERY_MAX_BYTES (300) the app's definitions are over: its
    /dictionary page and API answer 500 with the limit named and what to do, and serve logs one
    line. Before: "ResultTooLarge: ..." and a traceback in serve's log for a limit the user set;
    then a 413 "Content Too Large", which is for a request's content (these GETs have none) and
    put serve's fault on the reader: a 4xx."""
    import urllib.error
    import urllib.request

    from conftest import ServeProcess

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    added = cli(data_dir, "apps", "add", "org.example.toolbox", "--metrics", str(GLEAN / "metrics.yaml"),
                "--pings", str(GLEAN / "pings.yaml"))
    assert added.returncode == 0, added.stderr
    message = ("this page's data is over 300 bytes as JSON, the most the running serve answers "
               "(GLEANPIPE_QUERY_MAX_BYTES): restart serve with a higher GLEANPIPE_QUERY_MAX_BYTES, or stop serve "
               "and run `gleanpipe dictionary build` (it then reads the DuckDB file itself, with no such limit)")
    server = ServeProcess(data_dir, env={"GLEANPIPE_QUERY_MAX_BYTES": "300"}).start()
    try:
        answers = {}
        for path in ("/dictionary/api/apps/org_example_toolbox.json", "/dictionary/apps/org_example_toolbox/"):
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(server.url + path, timeout=30)
            answers[path] = (caught.value.code, caught.value.headers["Content-Type"], caught.value.read().decode())
    finally:
        assert server.stop() == 0
    assert answers["/dictionary/api/apps/org_example_toolbox.json"] == (
        500, "application/json", json.dumps({"error": message}, separators=(",", ":")))
    status, ctype, page = answers["/dictionary/apps/org_example_toolbox/"]
    assert (status, ctype) == (500, "text/html; charset=utf-8")
    assert "<h1>500 Internal Server Error</h1>" in page
    assert "run `gleanpipe dictionary build` (it then reads the DuckDB file itself, with no such limit)" in page
    log = server.read_log()
    assert "Traceback" not in log and "ResultTooLarge" not in log, log
    assert log.count(f"dictionary page /api/apps/org_example_toolbox.json: {message}\n") == 1, log


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def test_static_build_matches_the_api_and_links_resolve(site, tmp_path):
    out = tmp_path / "site"
    built = cli(site.data_dir, "dictionary", "build", "--out", str(out))
    assert built.returncode == 0, built.stderr
    assert re.search(r"wrote \d+ files .*: 2 apps, \d+ pings, \d+ metrics", built.stdout)
    assert json.loads((out / "api" / f"apps/{DATASET}.json").read_text()) == api(site, f"apps/{DATASET}.json")
    pages = list(out.rglob("*.html"))
    assert len(pages) > 40
    for page in pages:
        parser = Links()
        parser.feed(page.read_text())
        for href in parser.hrefs:
            if href.startswith("https://"):
                continue
            assert not href.startswith("/"), (page, href)  # relative only: works from file://
            assert (page.parent / href).resolve().is_file(), (page, href)
    served = get(f"{site.url}/dictionary/apps/{DATASET}/metrics/toolbox.launch_count.html")[2].decode()
    static = (out / "apps" / DATASET / "metrics" / "toolbox.launch_count.html").read_text()
    strip = lambda h: re.sub(r"\d{2}:\d{2}:\d{2}", "", h)
    assert strip(served) == strip(static)  # same template, same data


def test_readme_metric_daily_example_runs(site):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", readme, re.S) if "metric_daily" in b)
    sql = re.search(r'gleanpipe query "(.*)"', block, re.S).group(1)
    out = cli(site.data_dir, "query", "--format", "json", sql)
    assert out.returncode == 0, out.stderr
    assert [(r["label"], r["uses"]) for r in json.loads(out.stdout)] == [("hammer", 2.0), ("pliers", 1.0)]


def test_dictionary_setting_turns_the_pages_off(tmp_path):
    from conftest import APP, SDK_HEADERS, ServeProcess, gz, make_ping, submit_path
    from gleanpipe.config import SETTINGS, Config

    assert SETTINGS["GLEANPIPE_DICTIONARY"].default == "on"
    assert Config.from_env(environ={}).dictionary is True
    assert Config.from_env(environ={"GLEANPIPE_DICTIONARY": "off"}).dictionary is False
    with pytest.raises(ValueError, match="GLEANPIPE_DICTIONARY must be on or off, got 'maybe'"):
        Config.from_env(environ={"GLEANPIPE_DICTIONARY": "maybe"})
    bad = subprocess.run([sys.executable, "-m", "gleanpipe.cli", "serve", "--data-dir", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "GLEANPIPE_DICTIONARY": "maybe"})
    assert bad.returncode == 2 and "GLEANPIPE_DICTIONARY must be on or off" in bad.stderr
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = ServeProcess(data_dir, env={"GLEANPIPE_DICTIONARY": "off"}).start()
    try:
        assert get(f"{server.url}/dictionary/")[0] == 404
        assert get(f"{server.url}/dictionary/api/apps.json")[0] == 404
        status, _, _ = post(server.url + submit_path("baseline", app=APP), gz(make_ping()), SDK_HEADERS)
        assert status == 200
    finally:
        server.stop()


def test_duckdb_sql_counts_utc_days_in_any_session_zone():
    """The dictionary's DuckDB SQL is for pasting into any DuckDB client. DATE() of a TIMESTAMPTZ
    takes the session's zone: in Los Angeles, a ping at 03:00 UTC counted for the day before."""
    import duckdb

    from gleanpipe.dictionary import sqlgen

    con = duckdb.connect()
    con.execute("SET TimeZone = 'America/Los_Angeles'")
    con.execute("CREATE SCHEMA app; CREATE TABLE app.baseline_v1 (submission_timestamp TIMESTAMPTZ, "
                "client_info STRUCT(client_id VARCHAR), metrics STRUCT(counter STRUCT(a_b BIGINT)))")
    con.execute("CREATE VIEW app.baseline AS SELECT * FROM app.baseline_v1")
    con.execute("INSERT INTO app.baseline_v1 VALUES ('2026-11-23 03:00:00+00', {'client_id': 'c'}, {'counter': {'a_b': 5}})")
    rows = con.execute(sqlgen.metric_sql("duckdb", "app", "baseline_v1", "counter", "a_b")).fetchall()
    assert [(str(day), total) for day, total, _ in rows] == [("2026-11-23", 5)]


def test_a_name_sent_under_several_types_has_a_page_for_each(site):
    # t.x as a counter, a string and a labeled counter (a sender's mistake, or three releases):
    # three columns, so three undocumented metrics, each with its own id and page
    ping = make_ping("0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d",
                     {"counter": {"t.x": 5}, "string": {"t.x": "five"}, "labeled_counter": {"t.x": {"a": 2}}})
    status, body, _ = post(site.url + submit_path("metrics", app="org-example-types"), gz(ping))
    assert status == 200, body
    assert site.wait_rows("SELECT count(*) FROM org_example_types.metrics_v1", 1) == 1
    metrics = {m["id"]: m for m in api(site, "apps/org_example_types.json")["metrics"]}
    assert {i: m["type"] for i, m in metrics.items() if i.startswith("t_x")} == {
        "t_x.counter": "counter", "t_x.string": "string", "t_x.labeled_counter": "labeled_counter"}
    [(day,)] = site.query("SELECT DISTINCT CAST(CAST(timezone('UTC', submission_timestamp) AS DATE) AS VARCHAR) "
                          "FROM org_example_types.metrics_v1")[1]
    # each page charts its own column's values: the counter's 5, the string's one ping, the label's 2
    for metric_id, column, title, series in (
            ("t_x.counter", "metrics.counter.t_x", "daily sum", [("sum", 5.0)]),
            ("t_x.string", "metrics.string.t_x", "pings per value (top 5)", [("five", 1.0)]),
            ("t_x.labeled_counter", "metrics.labeled_counter.t_x", "daily sum per label (top 5)", [("a", 2.0)])):
        page = api(site, f"apps/org_example_types/metrics/{metric_id}.json")
        assert [q["column"] for q in page["queries"]] == [column]
        assert f"{column.split('.')[1]}.t_x" in page["queries"][0]["sql"]["duckdb"].replace('"', "")
        assert page["chart"] == {"table": "metrics_v1", "title": title, "unit": "",
                                 "series": [{"name": n, "points": [[day, v]]} for n, v in series]}, metric_id


# --- in process: a real DuckDB warehouse read through Catalog, no serve ------------------------

def _load(store, warehouse, doc_type: str, ping: dict, ts: str = "2026-11-23T08:00:00.000000Z") -> None:
    import uuid

    from gleanpipe import rawobject
    from gleanpipe.load import Loader
    from gleanpipe.naming import DocumentPath
    from conftest import APP

    path = DocumentPath(APP, doc_type, "1", str(uuid.uuid4()))
    meta = {"submission_timestamp": ts, "uri": f"/submit/{APP}/{doc_type}/1/{path.document_id}", "headers": {},
            "app_id": APP, "doc_type": doc_type, "version": "1", "document_id": path.document_id, "key": path.key}
    assert store.put_new(path.key, rawobject.encode(meta, json.dumps(ping).encode()))
    assert Loader(store, warehouse).load_keys([path.key]).inserted == 1


def test_a_built_in_ping_without_definitions_says_it_carries_the_client_id(store, warehouse):
    """Glean's own pings (baseline, metrics, events, deletion-request, health) carry client_id; an
    app with no pings.yaml still gets "carries client_id: yes" on their pages, not "unknown"."""
    from gleanpipe.dictionary.catalog import Catalog
    from gleanpipe.dictionary.pages import render_ping

    _load(store, warehouse, "baseline", make_ping("3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"))
    _load(store, warehouse, "custom-thing", make_ping("3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"))
    catalog = Catalog(warehouse.query)
    baseline = catalog.ping(DATASET, "baseline")
    assert (baseline["status"], baseline["include_client_id"]) == ("built-in", True)
    assert "<dt>carries client_id</dt><dd>yes</dd>" in render_ping(baseline)
    custom = catalog.ping(DATASET, "custom-thing")  # neither defined nor built in: nobody says
    assert (custom["status"], custom["include_client_id"]) == ("undocumented", None)
    assert "<dt>carries client_id</dt><dd>unknown</dd>" in render_ping(custom)


def test_labeled_charts_show_the_top_five_labels_and_a_rate_per_label(store, warehouse):
    """A labeled metric's chart has one series per label, for the 5 largest (README: "the top five
    labels of labeled metrics"); a labeled_rate's series are its rate per label (numerators /
    denominators), not the sums."""
    from gleanpipe.dictionary.catalog import Catalog

    client = "3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    _load(store, warehouse, "metrics", make_ping(client, {
        "labeled_counter": {"toolbox.tool_used": {"a": 6, "b": 5, "c": 4, "d": 3, "e": 2, "f": 1}},
        "labeled_rate": {"toolbox.hits": {"l1": {"numerator": 1, "denominator": 4},
                                          "l2": {"numerator": 3, "denominator": 5}}}}))
    catalog = Catalog(warehouse.query)
    used = catalog.metric(DATASET, "toolbox_tool_used")["chart"]
    assert used["title"] == "daily sum per label (top 5)"
    assert [(s["name"], [p[1] for p in s["points"]]) for s in used["series"]] == [
        ("a", [6.0]), ("b", [5.0]), ("c", [4.0]), ("d", [3.0]), ("e", [2.0])]
    hits = catalog.metric(DATASET, "toolbox_hits")["chart"]
    assert hits["title"] == "rate per label (top 5)"
    assert [(s["name"], [p[1] for p in s["points"]]) for s in hits["series"]] == [("l2", [0.6]), ("l1", [0.25])]


def test_distribution_charts_name_the_unit_glean_records_in_not_the_definitions(store, warehouse):
    """Glean records timings in nanoseconds and memory in bytes, whatever the definition's
    time_unit (millisecond) or memory_unit (kilobyte): a chart of 20 ms read "p50 20M" beside
    "unit millisecond". The chart's title says the unit of its values; a custom distribution has none."""
    from gleanpipe.dictionary.catalog import Catalog
    from gleanpipe.dictionary.pages import render_metric

    client = "3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    _load(store, warehouse, "metrics", make_ping(client, {
        "timing_distribution": {"toolbox.load_time": {"sum": 60_000_000, "values": {"19951584": 3}}},
        "memory_distribution": {"toolbox.file_size": {"sum": 409_600, "values": {"101142": 1, "299428": 1}}},
        "custom_distribution": {"toolbox.spread": {"sum": 7, "values": {"3": 1, "4": 1}}}}))
    catalog = Catalog(warehouse.query)
    charts = {name: catalog.metric(DATASET, name)["chart"]
              for name in ("toolbox_load_time", "toolbox_file_size", "toolbox_spread")}
    assert {name: (c["title"], c["unit"]) for name, c in charts.items()} == {
        "toolbox_load_time": ("percentiles from the buckets, in nanoseconds (bucket lower bounds)", "nanoseconds"),
        "toolbox_file_size": ("percentiles from the buckets, in bytes (bucket lower bounds)", "bytes"),
        "toolbox_spread": ("percentiles from the buckets (bucket lower bounds)", "")}
    assert [[p[1] for p in s["points"]] for s in charts["toolbox_load_time"]["series"]] == [[19951584], [19951584]]
    page = render_metric(catalog.metric(DATASET, "toolbox_load_time"))
    assert "percentiles from the buckets, in nanoseconds (bucket lower bounds)" in page


def test_a_percentile_on_a_bucket_edge_is_that_buckets_lower_bound():
    """The p-th percentile sample is the first whose running count reaches p% of the samples:
    of 2 samples (in buckets 1 and 2), the median is the first (bucket 1); of 4 (1, 1, 2, 3)
    the 50th is the second (bucket 1) and the 75th the third (bucket 2)."""
    from gleanpipe.dictionary.catalog import percentile

    assert percentile([(2, 1), (1, 1)], 50) == 1
    assert [percentile([(1, 2), (2, 1), (3, 1)], p) for p in (50, 75, 76, 100)] == [1, 2, 3, 3]


SMALL_METRICS = """---
$schema: moz://mozilla.org/schemas/glean/metrics/2-0-0
toolbox:
  launch_count:
    type: counter
    description: Launches.
    lifetime: ping
    send_in_pings: [metrics]
    bugs: [https://example.com/bug/1]
    data_reviews: [https://example.com/review/1]
    notification_emails: [x@example.com]
    expires: never
"""


def test_a_defined_metric_is_listed_where_it_really_arrived_too(store, warehouse, tmp_path):
    """A metric defined for the metrics ping that arrives in baseline pings as well (an older
    release, a wrong send_in_pings): its page names both tables and has a query for each."""
    from gleanpipe.dictionary.catalog import Catalog, store_app
    from gleanpipe.dictionary.definitions import parse

    (tmp_path / "metrics.yaml").write_text(SMALL_METRICS)
    store_app(warehouse, parse("org-example-toolbox", [tmp_path / "metrics.yaml"], []))
    _load(store, warehouse, "baseline", make_ping("3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
                                                  {"counter": {"toolbox.launch_count": 4}}))
    metric = Catalog(warehouse.query).metric(DATASET, "toolbox.launch_count")
    assert (metric["defined"], metric["values_seen"]) == (True, 1)
    assert metric["where"] == [{"table": "baseline_v1", "column": "metrics.counter.toolbox_launch_count"},
                               {"table": "metrics_v1", "column": "metrics.counter.toolbox_launch_count"}]
    assert [q["table"] for q in metric["queries"]] == ["baseline_v1", "metrics_v1"]
    assert [c["series"][0]["points"][0][1] for c in metric["charts"]] == [4.0]


def test_a_ping_defined_without_the_client_id_says_no_on_its_page(warehouse):
    """pings.yaml `include_client_id: false` (anonymous-report) shows as "carries client_id: no"."""
    from gleanpipe.dictionary.catalog import Catalog, store_app
    from gleanpipe.dictionary.definitions import parse
    from gleanpipe.dictionary.pages import render_ping

    store_app(warehouse, parse("org-example-toolbox", [], [GLEAN / "pings.yaml"]))
    catalog = Catalog(warehouse.query)
    anonymous, usage = catalog.ping(DATASET, "anonymous-report"), catalog.ping(DATASET, "toolbox-usage")
    assert (anonymous["include_client_id"], usage["include_client_id"]) == (False, True)
    assert "<dt>carries client_id</dt><dd>no</dd>" in render_ping(anonymous)
    assert "<dt>carries client_id</dt><dd>yes</dd>" in render_ping(usage)


def test_the_labeled_quantity_query_averages_and_the_labeled_counter_query_sums(store, warehouse):
    """The page's SQL, run: a quantity is a level (window count, size), so per label and day it is
    averaged; a counter counts, so it is summed."""
    from gleanpipe.dictionary.catalog import Catalog

    client = "3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    for sizes, used in (({"s": 3}, {"hammer": 1}), ({"s": 7}, {"hammer": 4})):
        _load(store, warehouse, "metrics", make_ping(client, {"labeled_quantity": {"toolbox.sizes": sizes},
                                                              "labeled_counter": {"toolbox.tool_used": used}}))
    catalog = Catalog(warehouse.query)
    for metric_id, want in (("toolbox_sizes", 5), ("toolbox_tool_used", 5)):
        [query] = catalog.metric(DATASET, metric_id)["queries"]
        got = [(label, float(value)) for _, label, value in warehouse.query(query["sql"]["duckdb"])[1]]
        assert got == [("s" if metric_id == "toolbox_sizes" else "hammer", float(want))], metric_id


def test_only_http_links_in_bugs_and_data_reviews_become_links(warehouse, tmp_path):
    """A bug or data review that is not an http(s) URL (glean_parser takes any URI, so also
    `javascript:`) is shown as text, never as a link a reader could click."""
    from gleanpipe.dictionary.catalog import Catalog, store_app
    from gleanpipe.dictionary.definitions import parse
    from gleanpipe.dictionary.pages import render_ping

    (tmp_path / "pings.yaml").write_text("""---
$schema: moz://mozilla.org/schemas/glean/pings/2-0-0
odd-links:
  description: Links of every kind.
  include_client_id: true
  bugs: [javascript:alert(document.domain), https://example.com/bug/1]
  data_reviews: ["data:text/html;base64,PHNjcmlwdD4="]
  notification_emails: [x@example.com]
""")
    store_app(warehouse, parse("org-example-toolbox", [], [tmp_path / "pings.yaml"]))
    html = render_ping(Catalog(warehouse.query).ping(DATASET, "odd-links"))
    hrefs = re.findall(r'<a href="([^"]*)" rel="noopener noreferrer">', html)
    assert hrefs == ["https://example.com/bug/1"]
    assert "<li>javascript:alert(document.domain)</li>" in html
    assert "<li>data:text/html;base64,PHNjcmlwdD4=</li>" in html


def test_a_pings_description_and_reasons_are_escaped_on_the_app_and_ping_pages(warehouse, tmp_path):
    """pings.yaml text (description, reasons) is the app's to write, and shown on two pages: the
    app page's ping table and the ping's own page. Neither may carry it as markup."""
    from gleanpipe.dictionary.catalog import Catalog, store_app
    from gleanpipe.dictionary.definitions import parse
    from gleanpipe.dictionary.pages import render_app, render_ping

    (tmp_path / "pings.yaml").write_text(f"""---
$schema: moz://mozilla.org/schemas/glean/pings/2-0-0
odd-text:
  description: {json.dumps(EVIL)}
  include_client_id: true
  reasons:
    {json.dumps(EVIL_EVENT)}: {json.dumps(EVIL_LABEL)}
  bugs: [https://example.com/bug/1]
  data_reviews: [https://example.com/review/1]
  notification_emails: [x@example.com]
""")
    store_app(warehouse, parse("org-example-toolbox", [], [tmp_path / "pings.yaml"]))
    catalog = Catalog(warehouse.query)
    escaped = "&lt;/script&gt;&lt;script&gt;window.__xss=1&lt;/script&gt;&lt;img src=x onerror=&quot;window.__xss=2&quot;&gt;"
    for html in (render_app(catalog.app(DATASET)), render_ping(catalog.ping(DATASET, "odd-text"))):
        assert "<img src=x" not in html and "window.__xss=1</script>" not in html
        assert escaped in html
        assert html.count("<script") == 2  # the page's own JSON and JS
    ping_html = render_ping(catalog.ping(DATASET, "odd-text"))
    assert ("<dt><code>&lt;svg onload=window.__xss=4&gt;</code></dt>"
            "<dd class=\"desc\">&lt;img src=x onerror=&quot;window.__xss=3&quot;&gt;</dd>") in ping_html


def test_a_ping_whose_name_can_have_no_page_is_listed_without_a_link(warehouse):
    """A ping name no page can have, stored before serve's /apps/add checked ping names (it checked
    their tables only), is listed as text, with no link to a page that does not exist."""
    from gleanpipe.dictionary.catalog import Catalog, store_app
    from gleanpipe.dictionary.pages import render_app

    store_app(warehouse, {"app_id": "org-example-toolbox", "dataset": DATASET, "metrics": [],
                          "pings": [{"name": "two words", "table": "two_words_v1"},
                                    {"name": "fine-name", "table": "fine_name_v1"}]})
    html = render_app(Catalog(warehouse.query).app(DATASET))
    assert re.findall(r'<a href="([^"]*)">', html) == ["../../index.html",
                                                        f"../../apps/{DATASET}/index.html",
                                                        f"../../apps/{DATASET}/pings/fine-name.html"]
    assert "<tr><td>two words</td>" in html


def test_a_page_that_fails_to_render_is_a_500_that_says_why(tmp_path):
    """A definition the pages cannot show (a description that is a list, stored by an /apps/add that
    did not check it, which test_admin_query now refuses) made every page of its app gunicorn's bare
    "Internal Server Error": the rendering ran outside the code that answers a failed query with a
    500 that says why. Now it is that 500, with the error; the JSON API still answers."""
    from conftest import ServeProcess
    from gleanpipe.dictionary.catalog import store_app
    from gleanpipe.warehouse.duckdb import DuckDBWarehouse

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    wh = DuckDBWarehouse(str(data_dir / "warehouse.duckdb"))
    metric = {"id": "toolbox.x", "category": "toolbox", "name": "x", "type": "counter", "description": ["a", "list"],
              "send_in_pings": ["metrics"], "wire_type": "counter", "column": "toolbox_x", "labels": None}
    store_app(wh, {"app_id": "org-example-toolbox", "dataset": DATASET, "metrics": [metric], "pings": []})
    wh.close()
    server = ServeProcess(data_dir).start()
    try:
        status, headers, body = get(f"{server.url}/dictionary/apps/{DATASET}/")
        assert (status, headers["Content-Type"]) == (500, "text/html; charset=utf-8")
        assert "<p>TypeError: can only concatenate str (not &quot;list&quot;) to str</p>" in body.decode()
        assert get(f"{server.url}/dictionary/api/apps/{DATASET}.json")[0] == 200
    finally:
        assert server.stop() == 0
    assert f"dictionary page /apps/{DATASET}/ failed" in server.read_log()


def test_each_metric_status_has_its_own_badge_style(store, warehouse, tmp_path):
    """The app page's badges are styled by status: undocumented (orange), no data yet (grey),
    built-in (purple)."""
    from gleanpipe.dictionary.catalog import Catalog, store_app
    from gleanpipe.dictionary.definitions import parse
    from gleanpipe.dictionary.pages import render_app

    (tmp_path / "metrics.yaml").write_text(SMALL_METRICS.replace("launch_count", "never_sent"))
    store_app(warehouse, parse("org-example-toolbox", [tmp_path / "metrics.yaml"], []))
    _load(store, warehouse, "metrics", make_ping("3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", {
        "counter": {"toolbox.secret": 1, "glean.validation.pings_submitted": 1}}))
    html = render_app(Catalog(warehouse.query).app(DATASET))
    metrics_table = html[html.index('<table id="metrics"'):]
    badges = dict(re.findall(r'<td><a href="[^"]*">([^<]*)</a></td>.*?(<span class="badge[^"]*">[^<]*</span>)',
                             metrics_table))
    assert badges == {"glean_validation_pings_submitted": '<span class="badge builtin">built-in (Glean SDK)</span>',
                      "toolbox.never_sent": '<span class="badge nodata">no data yet</span>',
                      "toolbox_secret": '<span class="badge undocumented">undocumented</span>'}


def test_a_metrics_last_seen_is_the_time_of_the_last_ping_that_carries_it(store, warehouse):
    """An observed metric's last_seen is the latest submission_timestamp of the rows that have a
    value for it (catalog._observed_metrics' max(CASE ...)), not the table's latest row: a metric
    the app stopped sending keeps the time it was last sent. Its tests had one row, where every
    version of that aggregate gives the same (found by a mutation round, review30)."""
    from gleanpipe.dictionary.catalog import Catalog

    client = "3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    _load(store, warehouse, "metrics", make_ping(client, {"counter": {"toolbox.old": 1, "toolbox.both": 1}}),
          ts="2026-11-20T08:00:00.000000Z")
    _load(store, warehouse, "metrics", make_ping(client, {"counter": {"toolbox.both": 2}}))  # 2026-11-23
    _load(store, warehouse, "metrics", make_ping(client, {"counter": {"toolbox.mid": 3}}), ts="2026-11-21T08:00:00.000000Z")
    app = Catalog(warehouse.query).app(DATASET)
    assert sorted((m["id"], m["values_seen"], m["last_seen"]) for m in app["metrics"] if m["type"] == "counter") == [
        ("toolbox_both", 2, "2026-11-23T08:00:00+00:00"), ("toolbox_mid", 1, "2026-11-21T08:00:00+00:00"),
        ("toolbox_old", 1, "2026-11-20T08:00:00+00:00")]


def test_an_app_with_data_but_no_definitions_is_listed_under_its_app_id(store, warehouse, data_dir):
    """Before `apps add`, an app that has sent pings was listed (apps list, the JSON API, the
    pages) with its dataset name as app id, org_example_toolbox; the id its pings were sent under,
    org-example-toolbox, is in each row's metadata.app_id. The dataset stays the dataset."""
    from conftest import APP, ServeProcess

    _load(store, warehouse, "baseline", make_ping("3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"))
    _load(store, warehouse, "metrics", make_ping("3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", {"counter": {"a.b": 1}}))
    warehouse.close()
    listed = cli(data_dir, "apps", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [{"app_id": APP, "dataset": DATASET, "defined": False, "ping_types": 2,
                                          "pings_received": 2, "metrics_defined": 0,
                                          "last_seen": "2026-11-23T08:00:00+00:00"}]
    server = ServeProcess(data_dir).start()
    try:
        assert [(a["app_id"], a["dataset"]) for a in api(server, "apps.json")] == [(APP, DATASET)]
        app = api(server, f"apps/{DATASET}.json")
        assert (app["app_id"], app["dataset"], app["defined"]) == (APP, DATASET, False)
        # a metric seen in the rows: how many carry it, and when the last of them came
        assert [(m["id"], m["values_seen"], m["last_seen"]) for m in app["metrics"] if m["type"] == "counter"] == [
            ("a_b", 1, "2026-11-23T08:00:00+00:00")]
        assert api(server, f"apps/{DATASET}/pings/baseline.json")["app_id"] == APP
        status, _, page = get(f"{server.url}/dictionary/")
        assert status == 200 and f">{APP}</a></td><td><code>{DATASET}</code>" in page.decode()
    finally:
        server.stop()


def test_an_app_with_events_pings_only_is_listed_under_its_app_id(store, warehouse, data_dir):
    """The app id is read from a ping table's metadata.app_id; events_stream, which has no metadata
    column, sorts first for an app that sends only events pings and must be passed over. Nothing
    pinned that: every test's app had a baseline table, found before events_stream."""
    from conftest import APP
    from test_load import EVENTS

    _load(store, warehouse, "events", make_ping("3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", events=EVENTS))
    assert warehouse.query(f"SELECT count(*) FROM {DATASET}.events_stream")[1] == [(2,)]
    warehouse.close()
    listed = cli(data_dir, "apps", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert [(a["app_id"], a["dataset"], a["pings_received"]) for a in json.loads(listed.stdout)] == [(APP, DATASET, 1)]


def test_an_app_whose_tables_are_empty_keeps_its_dataset_name_as_app_id(store, warehouse):
    """No row to read the app id from (every row deleted, no definitions): the dataset name, as before."""
    from gleanpipe.dictionary.catalog import Catalog

    _load(store, warehouse, "baseline", make_ping("3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"))
    warehouse.execute([(f"DELETE FROM {DATASET}.baseline_v1", None)])
    apps = Catalog(warehouse.query).apps()
    assert [(a["app_id"], a["dataset"], a["pings_received"]) for a in apps] == [(DATASET, DATASET, 0)]


def test_the_event_query_finds_a_category_and_name_with_a_quote_and_a_backslash(store, warehouse):
    """An event's category and name are text from pings. The literal doubled backslashes in
    DuckDB too, where a backslash is no escape ('a\\\\b' there is four characters: the query found
    nothing), and doubled quotes for BigQuery, where '' ends one literal and starts another."""
    from gleanpipe.dictionary import sqlgen

    client = "3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    odd = ("it's", "a\\b")
    _load(store, warehouse, "events", make_ping(client, events=[
        {"category": odd[0], "name": odd[1], "timestamp": 0}, {"category": odd[0], "name": odd[1], "timestamp": 1},
        {"category": "it", "name": "a", "timestamp": 2}]))
    sql = sqlgen.metric_sql("duckdb", DATASET, "events_stream_v1", None, "", event=odd)
    assert "WHERE category = 'it''s' AND name = 'a\\b'\n" in sql
    assert [tuple(r[1:]) for r in warehouse.query(sql)[1]] == [(2, 1)]
    bq = sqlgen.metric_sql("bigquery", DATASET, "events_stream_v1", None, "", event=("it's\n", "a\\b"))
    assert "WHERE category = 'it\\'s\\n' AND name = 'a\\\\b'\n" in bq


def test_the_sql_of_a_metric_takes_only_plain_names_as_identifiers():
    """Names reach the SQL as identifiers unquoted (BigQuery's backticks hold the whole path): one
    that is not [A-Za-z0-9_] is refused, not pasted in."""
    from gleanpipe.dictionary import sqlgen

    for dataset, table, wire, column in ((f"{DATASET}; DROP TABLE x", "metrics_v1", "counter", "c"),
                                         (DATASET, "metrics_v1`", "counter", "c"),
                                         (DATASET, "metrics_v1", "counter) FROM t --", "c"),
                                         (DATASET, "metrics_v1", "counter", "c.x")):
        for dialect in sqlgen.DIALECTS:
            with pytest.raises(ValueError, match="not a safe identifier"):
                sqlgen.metric_sql(dialect, dataset, table, wire, column)


def test_the_string_query_lists_the_most_sent_values_first(store, warehouse):
    """The page's SQL for a string metric, run: the values by the pings that carry them, most first."""
    from gleanpipe.dictionary.catalog import Catalog

    client = "3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    for theme in ("light", "dark", "dark", "blue", "dark", "blue"):
        _load(store, warehouse, "metrics", make_ping(client, {"string": {"toolbox.theme": theme}}))
    [query] = Catalog(warehouse.query).metric(DATASET, "toolbox_theme")["queries"]
    assert [tuple(r) for r in warehouse.query(query["sql"]["duckdb"])[1]] == [("dark", 3), ("blue", 2), ("light", 1)]


def test_a_pings_daily_volume_counts_each_client_once_a_day(store, warehouse):
    """The ping page's daily rows: pings, and distinct clients (one client's two pings are one)."""
    from gleanpipe.dictionary.catalog import Catalog

    first, second = "3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "4a6c7b9f-2d3e-4f60-9bac-1d2e3f4a5b6c"
    for client, ts in ((first, "2026-11-23T08:00:00.000000Z"), (first, "2026-11-23T23:59:59.000000Z"),
                       (second, "2026-11-23T09:00:00.000000Z"), (first, "2026-11-24T00:00:00.000000Z")):
        _load(store, warehouse, "baseline", make_ping(client), ts)
    assert Catalog(warehouse.query).ping(DATASET, "baseline")["daily"] == [
        {"day": "2026-11-23", "pings": 3, "clients": 2}, {"day": "2026-11-24", "pings": 1, "clients": 1}]


def test_a_column_left_by_dropped_definitions_is_listed_only_once_values_arrive(store, warehouse, tmp_path):
    """`apps add` again without a metric leaves its pre-created column: an empty column is no
    metric seen, so the app lists it only when pings carry it (then as undocumented)."""
    from gleanpipe.dictionary.catalog import Catalog, store_app
    from gleanpipe.dictionary.definitions import parse

    (tmp_path / "two.yaml").write_text(SMALL_METRICS + SMALL_METRICS.split("toolbox:\n")[1].replace(
        "launch_count:", "tools_opened:"))
    (tmp_path / "one.yaml").write_text(SMALL_METRICS)
    store_app(warehouse, parse("org-example-toolbox", [tmp_path / "two.yaml"], []))
    assert [m["id"] for m in Catalog(warehouse.query).app(DATASET)["metrics"]] == [
        "toolbox.launch_count", "toolbox.tools_opened"]
    store_app(warehouse, parse("org-example-toolbox", [tmp_path / "one.yaml"], []))
    listed = Catalog(warehouse.query).app(DATASET)["metrics"]
    assert [(m["id"], m["status"], m["values_seen"]) for m in listed] == [("toolbox.launch_count", "no data yet", 0)]
    _load(store, warehouse, "metrics", make_ping("3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
                                                 {"counter": {"toolbox.tools_opened": 2}}))
    listed = Catalog(warehouse.query).app(DATASET)["metrics"]
    assert [(m["id"], m["status"], m["values_seen"]) for m in listed] == [
        ("toolbox.launch_count", "no data yet", 0), ("toolbox_tools_opened", "undocumented", 1)]


def _metrics_yaml(n: int) -> str:
    """n metrics for the metrics ping, five types in turn: two aggregated in metric_daily (one
    labeled), a string (metric_daily's labels are its values), a distribution, a uuid (counted)."""
    out = ["---", "$schema: moz://mozilla.org/schemas/glean/metrics/2-0-0", "big:"]
    for i in range(n):
        kind = ("counter", "labeled_counter", "string", "timing_distribution", "uuid")[i % 5]
        out.append(f"  m{i:03d}:\n    type: {kind}\n    description: Metric {i}.\n    lifetime: ping\n"
                   "    send_in_pings: [metrics]\n    bugs: [https://example.com/bug/1]\n"
                   "    data_reviews: [https://example.com/review/1]\n    notification_emails: [x@example.com]\n"
                   "    expires: never\n" + ("    time_unit: millisecond\n" if kind == "timing_distribution" else ""))
    return "\n".join(out) + "\n"


def _metric_values(n: int, day: int) -> dict:
    values: dict[str, dict] = {}
    for i in range(n):
        kind = ("counter", "labeled_counter", "string", "timing_distribution", "uuid")[i % 5]
        values.setdefault(kind, {})[f"big.m{i:03d}"] = {
            "counter": i + day, "labeled_counter": {f"l{k}": k + day for k in range(7)}, "string": f"s{day % 2}",
            "timing_distribution": {"sum": 30, "values": {"19951584": 1 + day}},
            "uuid": "6c8e8b0a-2f0f-4f7a-9c6b-2f0a2f0a2f0a"}[kind]
    return values


def test_a_build_reads_each_apps_definitions_once_and_no_metric_chart_reads_the_whole_app(tmp_path):
    """`dictionary build` of an app with 2N metric columns runs the queries of one with N plus one
    or two small ones per added metric (its chart). Before, every metric page read the app's whole
    metric_daily view again (one to two queries whose cost grows with the app's metric columns: a
    build took time in their square; 1,000 columns did not finish in 15 minutes) and all the app's
    definitions (two queries). The charts stay those of the view's rows."""
    from gleanpipe.dictionary.build import build
    from gleanpipe.dictionary.catalog import Catalog, store_app
    from gleanpipe.dictionary.definitions import parse
    from gleanpipe.storage.local import LocalStore
    from gleanpipe.warehouse.duckdb import DuckDBWarehouse

    clients = ("3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "4a4b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
    runs = {}
    for n in (10, 20):
        (tmp_path / f"m{n}.yaml").write_text(_metrics_yaml(n))
        store, warehouse = LocalStore(str(tmp_path / f"store{n}")), DuckDBWarehouse(str(tmp_path / f"w{n}.duckdb"))
        try:
            store_app(warehouse, parse("org-example-toolbox", [tmp_path / f"m{n}.yaml"], []))
            for day, client in ((23, clients[0]), (23, clients[1]), (24, clients[0])):
                _load(store, warehouse, "metrics", make_ping(client, _metric_values(n, day)),
                      f"2026-11-{day}T08:00:00.000000Z")
            sent: list[str] = []

            def query(sql, params=None, warehouse=warehouse, sent=sent):
                sent.append(sql)
                return warehouse.query(sql, params)

            counts = build(query, tmp_path / f"site{n}")
            # the charts are the view's rows (the same SQL, read for one column)
            catalog = Catalog(warehouse.query)
            for i in range(0, n, 5):
                [counter] = catalog.metric(DATASET, f"big.m{i:03d}")["charts"]
                assert counter["series"][0]["points"] == [[d, s] for d, s in warehouse.query(
                    f"SELECT CAST(day AS VARCHAR), sum_value FROM {DATASET}.metric_daily WHERE metric = ? "
                    "ORDER BY day", [f"big_m{i:03d}"])[1]]
        finally:
            warehouse.close()
        runs[n] = counts, sent

    (small, sent_small), (big, sent_big) = runs[10], runs[20]
    assert (small["metrics"], big["metrics"]) == (10, 20)
    for sent in (sent_small, sent_big):
        # read once for the app, not again for each metric
        assert sum("_gleanpipe.metric_definitions" in s for s in sent) == 1
        assert sum("AS n0" in s for s in sent) == 1  # the counts per metric column of metrics_v1
        assert not [s for s in sent if f'"{DATASET}".metric_daily' in s]  # the app's whole view
    # per added metric: counter 1 (its daily rows), labeled_counter and string 2 (top labels, their
    # rows), timing_distribution 1 (its buckets), uuid 1 (pings per day); 7 per 5 metrics
    assert len(sent_big) - len(sent_small) == 14

    built = tmp_path / "site20"
    counter = json.loads((built / "api/apps" / DATASET / "metrics/big.m015.json").read_text())
    assert (counter["status"], counter["values_seen"], counter["chart"]["title"]) == ("defined", 3, "daily sum")
    assert counter["chart"]["series"] == [{"name": "sum", "points": [["2026-11-23", 76.0], ["2026-11-24", 39.0]]}]
    labeled = json.loads((built / "api/apps" / DATASET / "metrics/big.m016.json").read_text())
    assert labeled["chart"]["title"] == "daily sum per label (top 5)"
    assert [(s["name"], s["points"]) for s in labeled["chart"]["series"]] == [
        (f"l{k}", [["2026-11-23", 2.0 * (k + 23)], ["2026-11-24", float(k + 24)]]) for k in (6, 5, 4, 3, 2)]
    string = json.loads((built / "api/apps" / DATASET / "metrics/big.m017.json").read_text())
    assert [(s["name"], s["points"]) for s in string["chart"]["series"]] == [
        ("s1", [["2026-11-23", 2.0]]), ("s0", [["2026-11-24", 1.0]])]
    page = (built / "apps" / DATASET / "metrics/big.m015.html").read_text()
    assert "<p class=\"muted\">daily sum · <code>metrics_v1</code></p>" in page
    assert "<title>sum 2026-11-23: 76</title>" in page


def _live(query):
    """The /dictionary WSGI app in process on ``query``: path -> (status, body); a new Catalog a request."""
    from wsgiref.util import setup_testing_defaults

    from gleanpipe.dictionary.web import make_dictionary_app

    app = make_dictionary_app(query)

    def call(path):
        environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
        setup_testing_defaults(environ)
        out = {}
        body = b"".join(app(environ, lambda status, headers: out.update(status=status)))
        return out["status"], body
    return call


def test_a_live_metric_or_ping_page_counts_only_the_metric_columns_it_shows(store, warehouse, tmp_path):
    """A live page of one metric read the counts of every metric column of every ping table of the
    app (app(): one wide query a table, 0.4-0.8 s a request at 1,000 columns); it counts its own
    column, one small query a table that has it. A ping page counts its own table's columns (it
    lists those with values there). The app page counts them all, as before."""
    from gleanpipe.dictionary.catalog import store_app
    from gleanpipe.dictionary.definitions import parse

    n = 20
    (tmp_path / "m.yaml").write_text(_metrics_yaml(n))
    store_app(warehouse, parse("org-example-toolbox", [tmp_path / "m.yaml"], []))
    clients = ("3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "4a4b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
    for day, client in ((23, clients[0]), (23, clients[1]), (24, clients[0])):
        ts = f"2026-11-{day}T08:00:00.000000Z"
        _load(store, warehouse, "metrics", make_ping(client, _metric_values(n, day)), ts)
        # big.m000 also where it is not defined to be sent, and a metric with no definition
        _load(store, warehouse, "baseline", make_ping(client, {"counter": {"big.m000": 1, "extra.one": 2}}), ts)
    sent: list[str] = []

    def query(sql, params=None):
        sent.append(sql)
        return warehouse.query(sql, params)

    live = _live(query)

    def read(path):
        """The page's JSON, the metric columns its queries name, and its column-count queries."""
        del sent[:]
        status, body = live(f"/dictionary/api/apps/{DATASET}{path}")
        assert status == "200 OK", body
        columns = {c for sql in sent for c in re.findall(r'metrics\."([^"]+)"\."([^"]+)"', sql)}
        return json.loads(body), columns, [sql for sql in sent if sql.startswith("SELECT count(metrics.")]

    for metric_id, column, tables in (("big.m005", ("counter", "big_m005"), ["metrics_v1"]),
                                      ("big.m006", ("labeled_counter", "big_m006"), ["metrics_v1"]),
                                      ("big.m007", ("string", "big_m007"), ["metrics_v1"]),
                                      ("big.m008", ("timing_distribution", "big_m008"), ["metrics_v1"]),
                                      ("big.m009", ("uuid", "big_m009"), ["metrics_v1"]),
                                      ("big.m000", ("counter", "big_m000"), ["baseline_v1", "metrics_v1"]),
                                      ("extra_one", ("counter", "extra_one"), ["baseline_v1"])):
        page, columns, counts = read(f"/metrics/{metric_id}.json")
        assert columns == {column}, metric_id
        assert sorted(re.search(r'FROM "[^"]+"\."([^"]+)"$', sql).group(1) for sql in counts) == tables, metric_id
        assert ([w["table"] for w in page["where"]], page["values_seen"]) == (tables, 3 * len(tables)), metric_id
    page, columns, counts = read("/pings/baseline.json")
    assert columns == {("counter", "big_m000"), ("counter", "extra_one")} and len(counts) == 1
    assert page["metrics"] == ["big.m000", "extra_one"]
    page, columns, counts = read(".json")  # the app page shows every metric: it counts every column
    assert len(columns) == n + 1 and len(counts) == 2
    assert [m["values_seen"] for m in page["metrics"]] == [6] + [3] * n


def test_every_live_page_is_the_page_of_a_build(store, warehouse, tmp_path):
    """A live page counts only the metric columns it shows; a build counts them all once for the
    app (a Catalog that read app() takes each page's metrics from it). Both give the same bytes
    for every page, on an app with one name under several types (`t_x.counter`, `t_x.string`), a
    defined metric's column under another type, undocumented metrics and pings, events."""
    from gleanpipe.dictionary.build import build
    from gleanpipe.dictionary.catalog import store_app
    from gleanpipe.dictionary.definitions import parse

    store_app(warehouse, parse("org-example-toolbox", [GLEAN / "metrics.yaml"], [GLEAN / "pings.yaml"]))
    a, b = "3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "4a4b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    _load(store, warehouse, "baseline", make_ping(a, {"counter": {"toolbox.launch_count": 2}}))
    _load(store, warehouse, "metrics", make_ping(b, {
        "counter": {"t.x": 5, "solo.undoc": 1, "glean.validation.pings_submitted": 2},
        "string": {"t.x": "five"}, "labeled_counter": {"t.x": {"a": 2}},
        "quantity": {"toolbox.launch_count": 9, "toolbox.open_windows": 4},
        "timing_distribution": {"toolbox.render_time": {"sum": 400, "values": {"100": 2, "200": 1}}}}))
    _load(store, warehouse, "toolbox-usage", make_ping(a, {
        "counter": {"toolbox.launch_count": 3}, "string": {"toolbox.active_theme": "dark"},
        "labeled_counter": {"toolbox.tool_used": {"hammer": 2}}}), "2026-11-24T08:00:00.000000Z")
    _load(store, warehouse, "custom-thing", make_ping(b, {"counter": {"toolbox.launch_count": 1, "t.x": 7},
                                                          "string": {"toolbox.probe_label": "p"}}))
    _load(store, warehouse, "events", make_ping(a, events=[
        {"category": "toolbox", "name": "tool_opened", "timestamp": 1, "extra": {"tool": "saw"}},
        {"category": "glean", "name": "session_start", "timestamp": 2},
        {"category": "other.cat", "name": "thing", "timestamp": 3}]))
    counts = build(warehouse.query, tmp_path / "site")
    assert (counts["apps"], counts["pings"]) == (1, 7)
    live, compared = _live(warehouse.query), 0
    for path in sorted((tmp_path / "site").rglob("*.*")):
        status, body = live("/dictionary/" + path.relative_to(tmp_path / "site").as_posix())
        assert (status, body) == ("200 OK", path.read_bytes()), path
        compared += 1
    assert compared == counts["files"] > 2 * 40
    metrics = {m["id"]: m for m in json.loads(live(f"/dictionary/api/apps/{DATASET}.json")[1])["metrics"]}
    assert {i: m["values_seen"] for i, m in metrics.items() if "t_x" in i or "launch_count" in i} == {
        "t_x.counter": 2, "t_x.labeled_counter": 1, "t_x.string": 1, "toolbox.launch_count": 3,
        "toolbox_launch_count": 1}
