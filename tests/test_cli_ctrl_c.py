"""Ctrl-C (SIGINT, as a terminal sends it to the command's process group) while a command runs
DuckDB statements itself: `interrupted`, exit 130, no traceback, and the warehouse as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from gleanpipe.storage.local import LocalStore
from gleanpipe.warehouse.duckdb import DuckDBWarehouse

from conftest import ctrl_c_when_open, make_ping, put_many_unsynced
from test_load import put_ping

GLEAN_CLIENT = Path(__file__).resolve().parent / "glean_client"
# rows enough that the statements a command runs on opening the file (a check for deletion requests
# recorded twice, over every request) and status's count of load errors take about a second
ROWS = 3_000_000


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("ctrl-c") / "data"
    DuckDBWarehouse(str(data / "warehouse.duckdb")).close()
    con = duckdb.connect(str(data / "warehouse.duckdb"))
    try:  # carried out long ago (nothing for `deletions` to retry), and errors of as many kinds
        con.execute(f"INSERT INTO _gleanpipe.deletions (dataset, client_id, document_id, requested_at, executed_at, "
                    f"rows_deleted) SELECT 'app', 'c', 'd-' || range, now(), now(), 0 FROM range({ROWS})")
        con.execute(f"INSERT INTO _gleanpipe.errors (object_key, error_type) "
                    f"SELECT 'k-' || range, 'e-' || range FROM range({ROWS})")
    finally:
        con.close()
    put_ping(LocalStore(data / "store"), make_ping())  # for replay: one object, loaded in this process
    return data


@pytest.mark.parametrize("command", [
    ["status"],  # read-only: the counts of its load errors
    ["deletions"],  # these open the file for writing: its upgrade checks (Error: Query interrupted, tracebacks)
    ["replay", "--no-progress"],
    ["apps", "add", "org.example.toolbox", "--metrics", str(GLEAN_CLIENT / "metrics.yaml"),
     "--pings", str(GLEAN_CLIENT / "pings.yaml")],
])
def test_ctrl_c_while_duckdb_works_in_a_command_is_interrupted_and_130(data_dir, command):
    """Before: DuckDB turned the Ctrl-C inside a statement into its own error ("Query interrupted"):
    a traceback for status, deletions and replay, "Error: Query interrupted" and exit 1 for apps add."""
    path = str(data_dir / "warehouse.duckdb")
    for delay in (0.0, 0.1, 0.2):
        proc = ctrl_c_when_open([*command[:2], "--data-dir", str(data_dir), *command[2:]] if command[0] == "apps"
                      else [*command, "--data-dir", str(data_dir)], path, delay)
        assert (proc.returncode, proc.stdout, proc.stderr) == (130, "", "interrupted\n"), delay
    con = duckdb.connect(path)  # let go, and as it was
    try:
        assert con.execute("SELECT count(*) FROM _gleanpipe.deletions").fetchone() == (ROWS,)
        assert con.execute("SELECT count(*) FROM _gleanpipe.errors").fetchone() == (ROWS,)
    finally:
        con.close()


# `python -c CTRL_C_AT_IMPORT <command>...`: the gleanpipe command, with a real SIGINT that the process
# sends itself as it imports the first module of the command's start-up
CTRL_C_AT_IMPORT = ("import importlib.abc, os, signal, sys\n"
                    "class CtrlC(importlib.abc.MetaPathFinder):\n"
                    "    def find_spec(self, name, path=None, target=None):\n"
                    "        if name == 'gleanpipe.storage.base':\n"
                    "            os.kill(os.getpid(), signal.SIGINT)\n"
                    "from gleanpipe.cli import main\n"
                    "sys.meta_path.insert(0, CtrlC())\n"
                    "main()\n")


def test_ctrl_c_while_a_command_starts_is_interrupted_and_130(tmp_path):
    """Before: the imports at the start of every command ran before the Ctrl-C handling, and a
    Ctrl-C then gave click's "Aborted!" and exit 1. Here the SIGINT comes exactly then: a real one,
    sent by the command's process to itself as it imports the first of them."""
    duckdb.connect(str(tmp_path / "warehouse.duckdb")).close()
    script = CTRL_C_AT_IMPORT
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    for command in (["status"], ["query", "SELECT 1"]):
        proc = subprocess.run([sys.executable, "-c", script, *command, "--data-dir", str(tmp_path)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stdout, proc.stderr) == (130, "", "interrupted\n"), command
    done = subprocess.run([sys.executable, "-m", "gleanpipe.cli", "query", "--data-dir", str(tmp_path), "--format",
                           "csv", "SELECT 1 AS a"], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "a\n1\n")


def test_ctrl_c_with_nobody_reading_stderr_is_still_130(tmp_path):
    """`gleanpipe status 2>&1 | head -c 0`, then Ctrl-C: "interrupted" cannot be written, and the
    exit code alone says it. Not 1 (click's answer to a broken pipe) nor a traceback. The SIGINT
    comes as in the test above: sent by the command to itself as it imports."""
    duckdb.connect(str(tmp_path / "warehouse.duckdb")).close()
    script = CTRL_C_AT_IMPORT
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    read, write = os.pipe()
    os.close(read)  # nobody reads stderr
    try:
        proc = subprocess.run([sys.executable, "-c", script, "status", "--data-dir", str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=write, text=True, timeout=60)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stdout) == (130, "")


def test_ctrl_c_while_replay_starts_its_worker_processes_stops_it_with_its_message(tmp_path):
    """Before: "RuntimeError: cannot join thread before it is started", a traceback: the Ctrl-C came
    inside ProcessPoolExecutor's start, which left its thread made but not started, and its shutdown
    joined it. The SIGINT is a real one, sent to the replay's process group exactly then: the script
    sends it as the pool starts that thread (that moment is too short to hit from outside)."""
    store, n = LocalStore(tmp_path / "data" / "store"), 40
    for i in range(n):
        put_ping(store, make_ping(seq=i))
    script = ("import os, signal, sys\n"
              "from concurrent.futures import process\n"
              "start = process._ExecutorManagerThread.start\n"
              "def ctrl_c_then_start(thread):\n"
              "    os.killpg(0, signal.SIGINT)\n"
              "    start(thread)\n"
              "process._ExecutorManagerThread.start = ctrl_c_then_start\n"
              "from gleanpipe.cli import main\n"
              "main()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    args = ["replay", "--data-dir", str(tmp_path / "data"), "--batch", "5", "--workers", "2", "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=30,
                          start_new_session=True)
    assert (proc.returncode, proc.stdout) == (130, ""), proc.stderr
    assert proc.stderr == ("interrupted: the batches loaded so far stay; run the same replay again to finish "
                           "(it is idempotent)\n")
    again = subprocess.run([sys.executable, "-m", "gleanpipe.cli", *args], env=env, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0 and again.stdout.startswith(f"replayed {n} objects: "), again.stderr


def test_a_replay_whose_stderr_reader_goes_away_loads_everything(tmp_path):
    """`gleanpipe replay 2>&1 | head -c 50`. Before: the progress bar's write to the closed pipe
    ended the replay part-way (4,000 of 30,000 objects), with exit 0 and no word: its BrokenPipeError
    was taken for the `| head` of a reader of stdout. The bar stops drawing now, and the replay goes
    on to its end; its last line is lost with the pipe, and its exit code says it succeeded."""
    n = 2000
    put_many_unsynced(LocalStore(tmp_path / "data" / "store"), n)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    proc = subprocess.Popen([sys.executable, "-m", "gleanpipe.cli", "replay", "--data-dir", str(tmp_path / "data"),
                             "--batch", "20"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        head = proc.stdout.read(50)  # as `head -c 50` does: the start of the bar, then the reader is gone
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"/{n} [".encode() in head and b"replayed" not in head  # it stopped reading in the middle
    con = duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT document_id) FROM org_example_toolbox.baseline_v1"
                           ).fetchone() == (n, n)
    finally:
        con.close()
