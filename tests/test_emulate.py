"""`gleanpipe emulate` (what `make emulate` runs): the Google Cloud shape on one machine.

Real Glean SDK -> submit (functions-framework) -> fake-gcs-server -> Pub/Sub emulator push
-> load (functions-framework) -> bqemulator, then `gleanpipe query` with the printed
environment, exactly as the README tells a user to. What bqemulator cannot show of BigQuery
(insertId dedupe, schema widening, streaming-buffer DML) is covered in test_bigquery.py and
test_warehouses.py, not here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gleanpipe.emulate import Process, bqemulator, bqemulator_binary, free_port
from conftest import running, wait_gone
from test_sdk_e2e import expected_column, normalise_read, run_sdk

pytestmark = pytest.mark.e2e
GLEANPIPE = [sys.executable, "-m", "gleanpipe.cli"]
DATASET = "org_example_toolbox"


def read_env(path: Path) -> dict[str, str]:
    return dict(re.fullmatch(r"export (\w+)=(.*)", line).groups() for line in path.read_text().splitlines())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def emulated(tmp_path):
    """`gleanpipe emulate` as a user runs it; yields (submit URL, env, {name: pid}); Ctrl-C at the end."""
    bqemulator_binary()  # a clear error if `make bqemu` has not run
    port, log_dir = free_port(), tmp_path / "emulate"
    proc = subprocess.Popen([*GLEANPIPE, "emulate", "--port", str(port), "--dir", str(log_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids, lines = {}, []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"gleanpipe emulate exited ({proc.wait()}):\n" + "".join(lines))
            lines.append(line)
            if m := re.match(r"\s+(\w+)\s+http://127\.0\.0\.1:(\d+)\s+pid (\d+)", line):
                pids[m[1]] = int(m[3])
            if line.startswith("point the Glean SDK at"):
                break
        assert set(pids) == {"pubsub", "gcs", "bigquery", "load", "submit"}, lines
        yield f"http://127.0.0.1:{port}", read_env(log_dir / "emulate.env"), pids
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    left = [n for n, p in pids.items() if alive(p)]  # as emulate exits: it waits for each process it stops
    assert code == 0, "".join(lines) + proc.stdout.read()
    assert left == []  # Ctrl-C stopped every process it started, before emulate itself ended


def query(env: dict, tmp_path: Path, sql: str) -> list[dict]:
    out = subprocess.run([*GLEANPIPE, "query", "--data-dir", str(tmp_path / "no-serve"), "--format", "json", sql],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_count(env, tmp_path, table: str, n: int, timeout: float = 60) -> int:
    deadline, got = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            got = query(env, tmp_path, f"SELECT count(*) AS n FROM {DATASET}.{table}")[0]["n"]
        except AssertionError:  # the table is not there yet (load has not run)
            got = None
        if got == n:
            return got
        time.sleep(0.5)
    return got


def test_real_sdk_through_the_emulated_cloud_stack_lands_in_bigquery(emulated, tmp_path):
    submit_url, env, _ = emulated
    assert env["GLEANPIPE_STORE_URL"].startswith("gs://") and env["GLEANPIPE_WAREHOUSE_URL"].startswith("bigquery://")
    sent = run_sdk(submit_url, tmp_path / "glean", "all", "--debug-tag", "emu-tag", "--require-delivery")
    client_id = sent["client_id"]
    assert client_id and all(u["status"] == 200 for u in sent["uploads"])

    # each ping: one push, one load, one row in its view (the dedup views of BigQuery)
    for view, n in {"toolbox_usage": 1, "metrics": 1, "anonymous_report": 1, "no_info": 1, "baseline": 2,
                    "events": 1}.items():
        assert wait_count(env, tmp_path, view, n) == n, view

    usage = sent["sent"]["toolbox-usage"][0]["metrics"]
    assert len(usage) == 23
    # every metric's column in one query (one `gleanpipe query` process, not 23), each checked on its own
    metrics = [(f"v{i}", metric_type, metric_id.replace(".", "_"), value)
               for i, (metric_type, metric_id, value) in enumerate(
                   (t, m, v) for t, ms in usage.items() for m, v in ms.items())]
    [row] = query(env, tmp_path, "SELECT " + ", ".join(f"metrics.{metric_type}.{column} AS {alias}"
                                                       for alias, metric_type, column, _ in metrics)
                  + f" FROM {DATASET}.toolbox_usage")
    assert sorted(row) == sorted(alias for alias, *_ in metrics)
    for alias, metric_type, column, value in metrics:
        got = row[alias]
        if metric_type == "object":  # BigQuery's client gives a JSON column parsed; DuckDB gives its text
            got = json.dumps(got)
        assert normalise_read(metric_type, got) == expected_column(metric_type, value), (metric_type, column)

    [row] = query(env, tmp_path, f"SELECT client_info.client_id AS c, normalized_channel AS ch, ping_info.reason AS r, "
                                 f"metadata.header.x_debug_id AS d FROM {DATASET}.toolbox_usage")
    assert row == {"c": client_id, "ch": "Other", "r": "manual", "d": "emu-tag"}
    # baseline: two pings. Whichever arrives first creates the table; if that is the one without the
    # counter, the second widens the table, which bqemulator applies to metadata only (README,
    # BigQuery). So only fields both pings carry are read here; widening: test_warehouses.py.
    got = query(env, tmp_path, f"SELECT ping_info.reason AS r, client_info.client_id AS c "
                               f"FROM {DATASET}.baseline ORDER BY r")
    assert got == [{"r": "active", "c": client_id}, {"r": "inactive", "c": client_id}]
    # the events ping: two toolbox events the client recorded and Glean's own session_start
    assert wait_count(env, tmp_path, "events_stream", 3) == 3
    got = query(env, tmp_path, f"SELECT category, name, client_id, ping FROM {DATASET}.events_stream "
                               f"ORDER BY category, name")
    assert got == [{"category": "glean", "name": "session_start", "client_id": client_id, "ping": "events"}] + [
        {"category": "toolbox", "name": "tool_opened", "client_id": client_id, "ping": "events"}] * 2


def test_a_process_that_cannot_start_names_its_log(tmp_path):
    proc = Process("broken", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], free_port(), tmp_path)
    with pytest.raises(RuntimeError, match=r"broken exited with code 3; see .*broken\.log"):
        proc.start(timeout=10)
    assert "boom" in (tmp_path / "broken.log").read_text()


def test_a_missing_emulator_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GLEANPIPE_BQEMULATOR", str(tmp_path / "nowhere" / "bqemulator"))
    with pytest.raises(RuntimeError, match=r"bqemulator is not installed at .*nowhere.*make bqemu"):
        bqemulator(tmp_path)
    out = subprocess.run([*GLEANPIPE, "emulate", "--dir", str(tmp_path / "emu"), "--port", str(free_port())],
                         env={**os.environ, "GLEANPIPE_BQEMULATOR": str(tmp_path / "nowhere" / "bqemulator")},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "bqemulator is not installed" in out.stderr


def test_a_busy_submit_port_is_refused_before_anything_starts(tmp_path):
    """Before: the readiness check took the server already on the port for submit, so emulate
    printed "point the Glean SDK at ..." and failed about 5 s later."""
    import socket

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        out = subprocess.run([*GLEANPIPE, "emulate", "--dir", str(tmp_path / "emu"), "--port", str(port)],
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "point the Glean SDK" not in out.stdout
    assert out.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert not (tmp_path / "emu").exists()  # nothing was started


LAUNCHER = """import http.server, os, subprocess, sys
try:
    os.setpgrp()  # as gcloud does: a process group of its own, then a child (its JVM)
except PermissionError:
    pass  # already the leader of its session (started without the guard)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(sys.argv[2], "w").write(f"{os.getpid()} {child.pid}")
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
"""

PARENT = """import sys, time
from pathlib import Path
from gleanpipe.emulate import Process, free_port
port = free_port()
proc = Process("launcher", [sys.executable, "-c", sys.argv[1], str(port), sys.argv[2] + "/pids"], port,
               Path(sys.argv[2])).start()
print(proc.popen.pid, flush=True)
time.sleep(300)
"""


def test_a_killed_emulate_takes_every_process_it_started_with_it(tmp_path):
    """`gleanpipe emulate` killed with SIGKILL must not leave emulators behind, not even the JVM
    that gcloud's launcher starts in a process group of its own (parent_guard.py --group)."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, LAUNCHER, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    guard = int(parent.stdout.readline())
    pids = [guard, *(int(p) for p in (tmp_path / "pids").read_text().split())]  # + launcher, its child
    assert len(pids) == 3 and all(running(p) for p in pids)
    parent.kill()
    parent.wait()
    assert wait_gone(pids) == []


def test_the_users_gleanpipe_variables_do_not_reach_the_emulated_functions(tmp_path, monkeypatch):
    """README: the functions run with the settings emulate gives them; the user's own GLEANPIPE_*
    variables do not reach them. A submit started by emulate's launcher, in a shell whose
    GLEANPIPE_MAX_PAYLOAD_BYTES (100) would refuse any ping and whose GLEANPIPE_DATA_DIR points
    elsewhere, takes a ping into the store emulate names."""
    import uuid

    from conftest import APP, SDK_HEADERS, gz, make_ping, post
    from gleanpipe.emulate import function

    monkeypatch.setenv("GLEANPIPE_MAX_PAYLOAD_BYTES", "100")
    monkeypatch.setenv("GLEANPIPE_DATA_DIR", str(tmp_path / "users-data"))
    submit = function("submit", tmp_path / "logs", {"GLEANPIPE_STORE_URL": f"file://{tmp_path / 'store'}"})
    assert not [k for k in submit.env if k.startswith("GLEANPIPE_") and k != "GLEANPIPE_STORE_URL"]
    submit.start()
    try:
        doc_id = str(uuid.uuid4())
        status, _, _ = post(f"{submit.url}/submit/{APP}/baseline/1/{doc_id}", gz(make_ping()), SDK_HEADERS)
    finally:
        submit.stop()
    assert status == 200, submit.read_log()
    assert (tmp_path / "store" / f"raw/{APP}/baseline/1/{doc_id}.json").is_file()
    assert not (tmp_path / "users-data").exists()
