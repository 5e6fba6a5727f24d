"""What a new user gets for a busy port, a definitions file that is not one, SQL that writes or a
replay prefix that matches nothing: a one-line error or note, never a traceback, nothing half-started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from gleanpipe.admin import AdminClient, ServeError
from gleanpipe.serve_state import STATE_FILE, lock_holder, take_serve_lock
from gleanpipe.dictionary.definitions import DefinitionError, parse
from gleanpipe.emulate import free_port

from conftest import run_cli as gleanpipe, taken_port

GLEAN_CLIENT = Path(__file__).resolve().parent / "glean_client"
METRICS_ID = "moz://mozilla.org/schemas/glean/metrics/2-0-0"
PINGS_ID = "moz://mozilla.org/schemas/glean/pings/2-0-0"


def test_serve_refuses_a_port_another_server_listens_on(tmp_path):
    """Before: serve connected to the other server, took it for its own gunicorn, printed "serving"
    and wrote its state file; gunicorn failed to bind and serve exited about 5 s later."""
    data_dir = tmp_path / "data"
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = gleanpipe("serve", "--data-dir", str(data_dir), "--port", str(port), timeout=60)
        assert proc.returncode == 1
        assert f"Error: cannot listen on 127.0.0.1:{port}: Address already in use" in proc.stderr
        assert "--port or GLEANPIPE_PORT" in proc.stderr
        assert "serving" not in proc.stdout
        assert AdminClient.find(data_dir) is None
        assert not (data_dir / "warehouse.duckdb").exists()  # refused before the warehouse was opened


@pytest.mark.parametrize("host", ["192.0.2.1", "no-such-host.invalid"])  # TEST-NET-1; a name that never resolves
def test_serve_names_the_host_when_it_is_no_address_of_this_machine(tmp_path, host):
    proc = gleanpipe("serve", "--data-dir", str(tmp_path / "data"), "--host", host, "--port", "18080", timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"Error: cannot listen on {host}:18080: ")
    assert proc.stderr.rstrip().endswith("(no such address on this machine; the host comes from --host or GLEANPIPE_HOST)")
    assert "Traceback" not in proc.stderr and "another server" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (("--warehouse-url", "ftp://x/y"),
     "Error: GLEANPIPE_WAREHOUSE_URL (--warehouse-url): unknown warehouse scheme 'ftp' in 'ftp://x/y'"),
    (("--warehouse-url", "duckdb://"),
     "Error: GLEANPIPE_WAREHOUSE_URL (--warehouse-url): warehouse URL must look like duckdb://PATH or bigquery://"),
    (("--store-url", "file://"),
     "Error: GLEANPIPE_STORE_URL (--store-url): store URL must look like file://PATH, gs://BUCKET/PREFIX"),
])
def test_serve_with_a_url_it_cannot_open_says_so_in_one_line(tmp_path, args, message):
    with taken_port() as port:  # said from the settings alone, whatever the port
        proc = gleanpipe("serve", "--data-dir", str(tmp_path / "data"), "--port", str(port), *args, timeout=60)
    assert usage_error(proc).startswith(message), proc.stderr


@pytest.mark.parametrize("url, message", [
    ("ftp://x/y", "unknown store scheme 'ftp' in 'ftp://x/y' (use file://PATH, gs://BUCKET/PREFIX or s3://BUCKET/PREFIX)"),
    ("/plain/path", "store URL must look like file://PATH, gs://BUCKET/PREFIX or s3://BUCKET/PREFIX, got '/plain/path'"),
    ("gs://", "store URL must look like file://PATH, gs://BUCKET/PREFIX or s3://BUCKET/PREFIX, got 'gs://'"),
    ("gs://b/pings", "gs:// store URL needs a bucket name (3-222 of a-z 0-9 . - _), got 'b'"),
    # a well-formed cloud store: serve's own restriction
    ("gs://some-bucket/pings", "serve loads in-process from a file:// store only, not gs://some-bucket/pings: with a "
                               "cloud store run the load function (gs://) or `gleanpipe worker` (s3://)"),
    ("s3://some-bucket/pings", "serve loads in-process from a file:// store only, not s3://some-bucket/pings: with a "
                               "cloud store run the load function (gs://) or `gleanpipe worker` (s3://)"),
])
def test_serve_says_what_is_wrong_with_a_store_url_before_its_own_restriction(tmp_path, url, message):
    """Before: serve answered every store URL that is not file:// with "serve loads in-process from
    a file:// store only ... run the load function", also ftp://, a plain path and a gs:// with no
    bucket, where status and replay said what is wrong with the URL."""
    with taken_port() as port:  # said from the settings alone, whatever the port
        proc = gleanpipe("serve", "--data-dir", str(tmp_path / "data"), "--port", str(port),
                         env={"GLEANPIPE_STORE_URL": url}, timeout=60)
    assert usage_error(proc) == f"Error: GLEANPIPE_STORE_URL (--store-url): {message}"
    assert not (tmp_path / "data" / "warehouse.duckdb").exists()


def usage_error(proc: subprocess.CompletedProcess) -> str:
    """The one error line of a usage error (exit 2: click's short "Usage:" and "Try" lines, then it)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and proc.stderr.endswith(errors[0] + "\n"), proc.stderr
    return errors[0]


@pytest.mark.parametrize("args, env, message", [
    # bad URLs, from a flag or from its variable (exit 1 before, naming neither)
    (["status", "--store-url", "ftp://x"], {}, "GLEANPIPE_STORE_URL (--store-url): unknown store scheme 'ftp' "
                                              "in 'ftp://x' (use file://PATH, gs://BUCKET/PREFIX or s3://BUCKET/PREFIX)"),
    (["replay"], {"GLEANPIPE_STORE_URL": "gs://"}, "GLEANPIPE_STORE_URL (--store-url): store URL must look like "
                                                   "file://PATH, gs://BUCKET/PREFIX or s3://BUCKET/PREFIX, got 'gs://'"),
    (["status"], {"GLEANPIPE_STORE_URL": "gs://b"},
     "GLEANPIPE_STORE_URL (--store-url): gs:// store URL needs a bucket name (3-222 of a-z 0-9 . - _), got 'b'"),
    (["replay", "--store-url", "/plain/path"], {}, "GLEANPIPE_STORE_URL (--store-url): store URL must look like "
                                                   "file://PATH, gs://BUCKET/PREFIX or s3://BUCKET/PREFIX, got '/plain/path'"),
    (["query", "SELECT 1"], {"GLEANPIPE_WAREHOUSE_URL": "duckdb://"}, "GLEANPIPE_WAREHOUSE_URL (--warehouse-url): "
     "warehouse URL must look like duckdb://PATH or bigquery://PROJECT/LOCATION, got 'duckdb://'"),
    (["status", "--warehouse-url", "/plain/path"], {}, "GLEANPIPE_WAREHOUSE_URL (--warehouse-url): warehouse URL "
     "must look like duckdb://PATH or bigquery://PROJECT/LOCATION, got '/plain/path'"),
    (["deletions", "--warehouse-url", "bigquery://proj"], {}, "GLEANPIPE_WAREHOUSE_URL (--warehouse-url): BigQuery "
     "warehouse URL must look like bigquery://PROJECT/LOCATION (e.g. bigquery://my-project/US), got 'bigquery://proj'"),
    # a cloud store's seconds (storage/cloud.py), read when the store is opened
    (["replay", "--store-url", "gs://some-bucket/pings"], {"GLEANPIPE_STORE_TIMEOUT_S": "-1"},
     "GLEANPIPE_STORE_TIMEOUT_S must be positive, got '-1'"),
    (["replay", "--store-url", "s3://some-bucket/pings"], {"GLEANPIPE_STORE_TIMEOUT_S": "abc"},
     "GLEANPIPE_STORE_TIMEOUT_S must be a number of seconds, got 'abc'"),
    (["status", "--store-url", "gs://some-bucket/pings"], {"GLEANPIPE_STORE_RETRY_S": "1e9"},
     "GLEANPIPE_STORE_RETRY_S must be at most 3600 seconds, got '1e9'"),
    # BigQuery's settings, read when the warehouse is opened (no BigQuery is reached: refused before)
    (["query", "--warehouse-url", "bigquery://some-project/US", "SELECT 1"], {"GLEANPIPE_BIGQUERY_RETRY_S": "abc"},
     "GLEANPIPE_BIGQUERY_RETRY_S must be a whole number, got 'abc'"),
    (["deletions", "--warehouse-url", "bigquery://some-project/US"], {"GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S": "10"},
     "GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S must be at least GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S (a deletion is "
     "final only after every loader has re-read the deleted clients)"),
    (["apps", "add", "org.example.toolbox"], {}, "give at least one --metrics or --pings file"),
])
def test_a_bad_setting_value_or_usage_is_a_usage_error_naming_it(tmp_path, args, env, message):
    """Bad numbers and on/off values were usage errors (exit 2); bad URLs, a cloud store's or
    BigQuery's seconds and `apps add` without files were `Error:` with exit 1, URLs without
    saying which setting held them."""
    proc = gleanpipe(*args, "--data-dir", str(tmp_path / "data"), env=env)
    assert usage_error(proc) == f"Error: {message}"
    assert not (tmp_path / "data" / "warehouse.duckdb").exists()


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_serve_on_an_ipv6_address(tmp_path, host):
    from conftest import gz, make_ping, post, submit_path

    port, data_dir = free_port(), tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    proc = subprocess.Popen([sys.executable, "-m", "gleanpipe.cli", "serve", "--data-dir", str(data_dir), "--host", host,
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stdout.readline()
        assert first.startswith("gleanpipe ") and f" serving http://[::1]:{port}/submit/" in first, \
            first + proc.stderr.read() if proc.poll() is not None else first
        status, _, _ = post(f"http://[::1]:{port}" + submit_path(), gz(make_ping()))
        assert status == 200
        client = AdminClient.find(data_dir)
        assert client is not None
        assert json.loads((data_dir / STATE_FILE).read_text())["submit_url"] == f"http://[::1]:{port}"
    finally:
        proc.send_signal(2)
        proc.wait(30)
    assert proc.returncode == 0


def test_a_state_file_left_by_a_killed_serve_is_stale_even_if_its_pid_lives(tmp_path):
    """Before: a state file was taken as a running serve's while a process with its PID lived.
    In a container serve is PID 1, so after a kill -9 and a restart the new serve had the old
    PID and refused to start ("already running") for ever. Here the PID is this test's own."""
    from conftest import ServeProcess

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / STATE_FILE).write_text(json.dumps({"pid": os.getpid(), "admin_url": "http://127.0.0.1:9", "token": "t"}))
    assert AdminClient.find(data_dir) is None
    status = gleanpipe("status", "--data-dir", str(data_dir))
    assert "Error: no warehouse at" in status.stderr  # looked for the file itself: no serve to ask
    server = ServeProcess(data_dir).start()
    try:
        assert AdminClient.find(data_dir).url != "http://127.0.0.1:9"
        # on the running serve's own port: the lock is said before the port is looked at
        again = gleanpipe("serve", "--data-dir", str(data_dir), "--port", str(server.port), timeout=60)
        assert (again.returncode, again.stderr) == (
            1, f"Error: a gleanpipe serve (pid {server.proc.pid}) is already running for {data_dir}\n")
    finally:
        assert server.stop() == 0


@contextmanager
def serve_after_a_kill(data_dir: Path):
    """A serve (ServeProcess, starting in a thread) as after a kill -9: a killed serve's state file,
    and its gunicorn still on the port, which a listening socket stands in for (serve's own cannot
    be held on the port on purpose) until the with-block ends."""
    from conftest import ServeProcess

    data_dir.mkdir(exist_ok=True)
    (data_dir / STATE_FILE).write_text(json.dumps({"pid": 1, "admin_url": "http://127.0.0.1:9", "token": "t"}))
    port = free_port()
    with socket.socket() as old:
        old.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        old.bind(("127.0.0.1", port))
        old.listen()
        server = ServeProcess(data_dir, port=port)
        starting = threading.Thread(target=server.start)
        starting.start()
        try:
            yield server
        except BaseException:  # a failed check in the block: the serve must not outlive the test
            old.close()
            starting.join(60)
            server.stop()
            raise
    starting.join(60)


def test_a_command_run_while_serve_starts_waits_for_it(tmp_path):
    """Before: between a serve taking the data dir's lock and writing its state file (its start;
    after a kill, waiting for the dead serve's port), commands found no serve. `query` then
    opened the DuckDB file itself and failed on serve's lock, blaming "a serve for another data
    dir", or said there was no warehouse yet; with a killed serve's state file still there it
    could also take the dead serve's address. Now it waits for the serve that holds the lock.
    The stand-in for the dead serve's gunicorn is closed 3 s after the new serve starts."""
    from conftest import ServeProcess, gz, make_ping, post, submit_path

    data_dir = tmp_path / "data"
    server = ServeProcess(data_dir).start()  # a first serve makes the warehouse and a row
    assert post(server.url + submit_path("metrics"), gz(make_ping()))[0] == 200
    assert server.wait_rows("SELECT count(*) FROM org_example_toolbox.metrics", 1) == 1
    assert server.stop() == 0
    with serve_after_a_kill(data_dir) as server:
        deadline = time.monotonic() + 30
        while lock_holder(data_dir) is None:  # until the new serve has the lock
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(ServeError, match=rf"a gleanpipe serve \(pid {server.proc.pid}\) holds .* but no serve.json was written after 0 s: it is still starting"):
            AdminClient.find(data_dir, wait_s=0.2)
        out: list = []
        query = threading.Thread(target=lambda: out.append((gleanpipe(
            "query", "--format", "csv", "--data-dir", str(data_dir), "SELECT count(*) AS n FROM org_example_toolbox.metrics"),
            time.monotonic())))
        query.start()
        time.sleep(3)
        port_freed = time.monotonic()
    query.join(60)
    try:
        assert server.proc.poll() is None, server.read_log()
        answer, answered = out[0]
        assert (answer.returncode, answer.stdout, answer.stderr) == (0, "n\n1\n", "")
        assert answered > port_freed  # it waited for the serve: it did not open the file under it
    finally:
        assert server.stop() == 0


def test_a_foreign_process_that_holds_the_serve_lock_is_named_at_once(tmp_path):
    """Before: another program holding <data dir>/serve.lock (`flock data/serve.lock sleep 120`)
    was "a gleanpipe serve (pid 0) holds data but has not written its serve.json"; with the pid a
    stopped serve had left in the file, that serve's pid. Then `status` and the other commands
    named it, but only after waiting 30 s for it to write a serve.json as a serve that is starting
    would, and `serve` said "a gleanpipe serve (pid 1234567) is already running". /proc tells that
    its command line is no gleanpipe serve: each says so at once."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "serve.lock").write_text(f"{1234567:>10}\n")  # a serve that ran before left its pid
    script = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
              "print('locked', flush=True); sys.stdin.read()")
    other = subprocess.Popen([sys.executable, "-c", script, str(data_dir / "serve.lock")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        command = f"{sys.executable} -c {script} {data_dir / 'serve.lock'}"[:200]  # as /proc tells, cut at 200
        said = (f"another process, pid {other.pid} ({command}), holds {data_dir / 'serve.lock'}, the lock of a "
                "gleanpipe serve: stop it")
        started = time.monotonic()
        with pytest.raises(ServeError) as info:
            AdminClient.find(data_dir)  # its default wait: 30 s
        assert str(info.value) == said and time.monotonic() - started < 5
        for args in (["status"], ["serve", "--port"]):
            started = time.monotonic()
            with taken_port() as port:  # the lock is said before the port is looked at
                out = gleanpipe(*args, *([str(port)] if args[-1] == "--port" else []), "--data-dir", str(data_dir))
            assert (out.returncode, out.stderr) == (1, f"Error: {said}\n"), args
            assert time.monotonic() - started < 10, args  # a command's start, not 30 s
    finally:
        other.stdin.close()
        other.wait(timeout=10)
    assert AdminClient.find(data_dir, wait_s=0.2) is None  # let go: no serve


def test_a_state_file_that_is_not_json_yet_is_waited_for_as_a_serve_starting(tmp_path):
    """A serve.json that is not JSON (cut short, or being written) while a gleanpipe process holds
    the lock is read as no state file yet: the command waits for it as for a serve still starting,
    then names that serve, rather than failing on the JSON."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / STATE_FILE).write_text('{"pid": ')
    script = ("from gleanpipe.serve_state import take_serve_lock; import sys; "
              "assert take_serve_lock(sys.argv[1]) is not None; print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", script, str(data_dir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_holder(data_dir) == holder.pid
        with pytest.raises(ServeError) as info:
            AdminClient.find(data_dir, wait_s=0.3)
        assert str(info.value) == (f"a gleanpipe serve (pid {holder.pid}) holds {data_dir / 'serve.lock'} but no "
                                   "serve.json was written after 0 s: it is still starting (see its output), or the "
                                   "file was removed (restart that serve)")
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    assert AdminClient.find(data_dir, wait_s=0.2) is None  # let go: the file is a stopped serve's


def test_serve_after_a_kill_waits_for_the_dead_serves_port(tmp_path):
    """Before: after a kill -9 of serve's main process, its gunicorn holds the port for a moment
    while it finishes its requests, and a serve started then exited 1 "Address already in use".
    The stand-in for that gunicorn is closed a second after the new serve starts."""
    from conftest import gz, make_ping, post, submit_path

    with serve_after_a_kill(tmp_path / "data") as server:
        time.sleep(1)
    try:
        assert server.proc.poll() is None, server.read_log()
        assert post(server.url + submit_path("metrics"), gz(make_ping()))[0] == 200
    finally:
        assert server.stop() == 0


def test_serve_starts_on_a_port_freed_a_moment_ago(tmp_path):
    """The check binds with SO_REUSEADDR, as gunicorn does: a port whose last connection is in
    TIME_WAIT is free, not "in use"."""
    from conftest import ServeProcess, post, submit_path, gz, make_ping

    port = free_port()
    with socket.socket() as srv:  # leave a closed connection on the port
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen()
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.accept()
        conn.close()  # the server side closes first: its end goes to TIME_WAIT
        client.close()
    with socket.socket() as probe, pytest.raises(OSError):  # the premise: a plain bind is refused
        probe.bind(("127.0.0.1", port))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = ServeProcess(data_dir, port=port).start()
    try:
        status, _, headers = post(server.url + submit_path("metrics"), gz(make_ping()))
        assert (status, headers["X-Gleanpipe-Stored"]) == (200, "new")
    finally:
        assert server.stop() == 0


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_definitions_without_a_schema_line_name_the_file(tmp_path):
    """Before: "TypeError: Invalid schema key None", with no file named."""
    good = GLEAN_CLIENT / "pings.yaml"
    bare = write(tmp_path / "metrics.yaml", "toolbox:\n  launch_count:\n    type: counter\n")
    with pytest.raises(DefinitionError) as err:
        parse("org.example.toolbox", [bare], [good])
    assert err.value.messages == [
        f"{bare}: no `$schema` line: a metrics.yaml starts with `$schema: {METRICS_ID}`, "
        f"a pings.yaml with `$schema: {PINGS_ID}`"
    ]


def test_apps_add_says_a_file_is_not_regular_and_a_data_dir_cannot_be_made_in_one_line(tmp_path):
    """Before: `--metrics /dev/null` was "no such file", and a data dir under a file a raw
    "[Errno 20] Not a directory: '...'"."""
    proc = gleanpipe("apps", "add", "org.example.toolbox", "--metrics", "/dev/null", "--data-dir", str(tmp_path / "data"))
    assert (proc.returncode, proc.stderr) == (1, "Error: the definitions do not parse:\n  /dev/null: not a regular "
                                                 "file\n")
    (tmp_path / "a-file").write_text("x")
    proc = gleanpipe("apps", "add", "org.example.toolbox", "--metrics", str(GLEAN_CLIENT / "metrics.yaml"),
                     "--data-dir", str(tmp_path / "a-file" / "data"))
    assert (proc.returncode, proc.stderr) == (1, f"Error: {tmp_path / 'a-file' / 'data'}: Not a directory\n")


@pytest.mark.parametrize("option", ["--metrics", "--pings"])
def test_apps_add_with_a_file_that_is_not_there_is_a_usage_error(tmp_path, option):
    """Before: "the definitions do not parse: ...: no such file", exit 1, as if the file were bad."""
    missing = tmp_path / "missing.yaml"
    proc = gleanpipe("apps", "add", "org.example.toolbox", option, str(missing), "--data-dir", str(tmp_path / "data"))
    assert usage_error(proc) == f"Error: Invalid value for '{option}': File '{missing}' does not exist."
    assert not (tmp_path / "data").exists()


def test_apps_add_with_a_bad_app_id_is_a_usage_error_naming_APP_ID(tmp_path):
    """Before: "the definitions do not parse:\n  app id 'bad app!': must be ...", exit 1: the app
    id is the command line's argument, not a definition."""
    proc = gleanpipe("apps", "add", "bad app!", "--metrics", str(GLEAN_CLIENT / "metrics.yaml"),
                     "--pings", str(GLEAN_CLIENT / "pings.yaml"), "--data-dir", str(tmp_path / "data"))
    assert usage_error(proc) == ("Error: Invalid value for 'APP_ID': 'bad app!': must be 1-100 chars of "
                                 "[A-Za-z0-9._-], starting with a letter or digit")
    assert not (tmp_path / "data").exists()


def test_help_names_the_variable_of_each_option_and_says_what_host_and_port_are():
    """Before: no --help said which GLEANPIPE_* variable an option reads, and serve's --host and
    --port had no help text at all."""
    import click

    from gleanpipe.cli import main

    def commands(group, path):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from commands(command, [*path, name])
            else:
                yield [*path, name], command

    checked = set()
    for path, command in commands(main, []):
        text = " ".join(gleanpipe(*path, "--help").stdout.split())  # the help's words, without its wrapping
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                assert f"env var: {param.envvar}" in text, (path, param.envvar, text)
                checked.add(param.envvar)
    assert {"GLEANPIPE_DATA_DIR", "GLEANPIPE_STORE_URL", "GLEANPIPE_WAREHOUSE_URL", "GLEANPIPE_HOST", "GLEANPIPE_PORT",
            "GLEANPIPE_WORKERS", "GLEANPIPE_LOAD_BATCH", "GLEANPIPE_EXPLORE_PORT", "GLEANPIPE_WORKER_WAIT_S"} <= checked
    serve = " ".join(gleanpipe("serve", "--help").stdout.split())
    assert ("--host TEXT Address to listen on (0.0.0.0 or :: to accept other hosts). "
            "[env var: GLEANPIPE_HOST; default: 127.0.0.1]") in serve
    assert ("--port INTEGER Port for /submit (and the debug viewer and dictionary). "
            "[env var: GLEANPIPE_PORT; default: 8080]") in serve


def test_a_bad_data_dir_variable_is_named_in_its_error(tmp_path):
    """Before: GLEANPIPE_DATA_DIR=<a file> was "Invalid value for '--data-dir'", naming no variable."""
    (tmp_path / "a-file").write_text("x")
    proc = gleanpipe("status", env={"GLEANPIPE_DATA_DIR": str(tmp_path / "a-file")})
    assert usage_error(proc) == (f"Error: Invalid value for '--data-dir' (GLEANPIPE_DATA_DIR): Directory "
                                 f"'{tmp_path / 'a-file'}' is a file.")


def test_definitions_that_are_not_a_mapping_are_refused_and_keep_the_stored_ones(tmp_path):
    """Before: a file whose top level is a list parsed as "0 metrics, 0 pings" and `apps add`
    replaced the app's stored definitions with nothing."""
    data = ["--data-dir", str(tmp_path / "data")]
    added = gleanpipe("apps", "add", "org.example.toolbox", "--metrics", str(GLEAN_CLIENT / "metrics.yaml"),
                      "--pings", str(GLEAN_CLIENT / "pings.yaml"), *data)
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("org.example.toolbox (dataset org_example_toolbox): 28 metrics, 3 pings, in ")

    listed = write(tmp_path / "metrics.yaml", "- toolbox.launch_count\n- toolbox.tool_used\n")
    refused = gleanpipe("apps", "add", "org.example.toolbox", "--metrics", str(listed), *data)
    assert refused.returncode == 1
    assert refused.stderr == ("Error: the definitions do not parse:\n"
                              f"  {listed}: the top level is a list, not a mapping: not a metrics.yaml or pings.yaml\n")

    apps = gleanpipe("apps", "list", "--format", "json", *data)
    assert [(a["app_id"], a["metrics_defined"]) for a in json.loads(apps.stdout)] == [("org.example.toolbox", 28)]


def test_query_is_read_only_with_and_without_serve(tmp_path):
    """Before: with serve running, `gleanpipe query "DROP TABLE ..."` ran on serve's writable
    connection; without serve DuckDB refused it (the file is opened read-only)."""
    from conftest import DATASET, ServeProcess, gz, make_ping, post, submit_path

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = ["--data-dir", str(data_dir)]
    count = f"SELECT count(*) AS n FROM {DATASET}.metrics_v1"
    server = ServeProcess(data_dir).start()
    try:
        assert post(server.url + submit_path("metrics"), gz(make_ping()))[0] == 200
        assert server.wait_rows(count, 1) == 1
        for sql in (f"DROP TABLE {DATASET}.metrics_v1 CASCADE", "CREATE TABLE main.probe (a INTEGER)",
                    f"COPY {DATASET}.metrics_v1 TO '{tmp_path}/x.csv'"):
            refused = gleanpipe("query", sql, *data)
            assert refused.returncode == 1, sql
            assert "the warehouse is read-only for queries: a " in refused.stderr
        assert "a DROP statement is not run" in gleanpipe("query", f"DROP TABLE {DATASET}.metrics_v1", *data).stderr
        # several statements: DuckDB would show the last one's rows only (and the DELETE is refused anyway)
        for sql in (f"SELECT 1; DELETE FROM {DATASET}.metrics_v1", "SELECT 1; SELECT 2"):
            several = gleanpipe("query", sql, *data)
            assert (several.returncode, several.stderr.strip()) == (1, "Error: one statement at a time: this SQL has 2")
        missing = gleanpipe("query", "SELECT * FROM nowhere.nothing", *data)
        assert missing.returncode == 1 and missing.stderr.startswith('Error: Catalog Error: Table with name "nowhere.nothing" does not exist')
        # DuckDB 2 runs DELETE/UPDATE/INSERT inside WITH, and the statement is a SELECT: serve runs every
        # query in a read-only transaction, so DuckDB itself refuses the write
        for sql in (f"WITH x AS (DELETE FROM {DATASET}.metrics_v1 RETURNING *) SELECT count(*) FROM x",
                    f"WITH x AS (UPDATE {DATASET}.metrics_v1 SET sample_id = 1 RETURNING *) SELECT count(*) FROM x"):
            refused = gleanpipe("query", sql, *data)
            assert refused.returncode == 1, (sql, refused.stdout)
            assert refused.stderr == ('Error: the warehouse is read-only for queries: Cannot write to database '
                                      '"warehouse" - transaction is launched in read-only mode\n'), refused.stderr
        explained = gleanpipe("query", f"EXPLAIN ANALYZE DELETE FROM {DATASET}.metrics_v1", *data)  # runs the DELETE
        assert explained.returncode == 1
        assert "EXPLAIN is run on a SELECT only (EXPLAIN ANALYZE runs the statement it explains)" in explained.stderr
        assert server.try_query(count) == [(1,)]
        assert server.try_query("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'probe'") == [(0,)]
        assert not (tmp_path / "x.csv").exists()
        shown = gleanpipe("query", "--format", "csv", f"SHOW TABLES FROM {DATASET}", *data)
        assert shown.returncode == 0 and "metrics_v1" in shown.stdout.splitlines()
        described = gleanpipe("query", "--format", "json", f"DESCRIBE {DATASET}.metrics_v1", *data)
        assert "document_id" in [c["column_name"] for c in json.loads(described.stdout)]
    finally:
        assert server.stop() == 0
    several = gleanpipe("query", "SELECT 1; SELECT 2", *data)  # serve stopped: the file itself
    assert (several.returncode, several.stderr.strip()) == (1, "Error: one statement at a time: this SQL has 2")
    for nothing in (";", "/* a comment alone */"):  # before: an empty table and exit code 0
        none = gleanpipe("query", nothing, *data)
        assert (none.returncode, none.stderr.strip()) == (1, "Error: no statement in this SQL: give a SELECT")
    insert = gleanpipe("query", "INSERT INTO main.probe VALUES (1)", *data)
    assert "the warehouse is read-only for queries: an INSERT statement is not run" in insert.stderr
    # a query's error reads the same with serve running and without: no "serve answered 400" in front
    assert gleanpipe("query", "SELECT * FROM nowhere.nothing", *data).stderr == missing.stderr
    not_utf8 = gleanpipe("query", "SELECT '\udcff'", *data)  # a byte that is not UTF-8, as Python passes it on
    assert not_utf8.returncode == 2 and "Error: the SQL is not valid UTF-8" in not_utf8.stderr
    local = gleanpipe("query", "CREATE TABLE main.probe (a INTEGER)", *data)  # serve stopped: the file itself
    assert local.returncode == 1
    assert "the warehouse is read-only for queries: a CREATE statement is not run" in local.stderr
    # the file is opened read-only, and DuckDB said: Cannot execute statement of type "SELECT" on database
    # "warehouse" which is attached in read-only mode! (a SELECT, for a DELETE): now the words serve gives
    for sql in (f"WITH x AS (DELETE FROM {DATASET}.metrics_v1 RETURNING *) SELECT count(*) FROM x",
                f"WITH x AS (UPDATE {DATASET}.metrics_v1 SET sample_id = 1 RETURNING *) SELECT count(*) FROM x"):
        local = gleanpipe("query", sql, *data)
        assert (local.returncode, local.stderr) == (1, refused.stderr), local.stderr
    assert gleanpipe("query", "--format", "csv", count, *data).stdout.splitlines() == ["n", "1"]


def test_query_shows_inf_nan_intervals_and_hugeints_as_duckdb_does_with_and_without_serve(tmp_path):
    """Before: JSON has no inf or nan, so they went through as null and the table, csv and json
    output showed them as NULL (an empty cell). An INTERVAL came out as Python's timedelta text,
    which has no months: age() of 1 year 1 month 16 days showed as "411 days, 0:00:00"."""
    from conftest import DATASET, ServeProcess, gz, make_ping, post, submit_path

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = ["--data-dir", str(data_dir)]
    sql = "SELECT 'inf'::DOUBLE AS a, -'inf'::DOUBLE AS b, 'nan'::DOUBLE AS c, NULL::DOUBLE AS d, [ln(0), 0.5] AS e, " \
          "age(TIMESTAMP '2026-01-01', TIMESTAMP '2024-11-15') AS f, -INTERVAL 3 HOUR AS g, " \
          "-170141183460469231731687303715884105727::HUGEINT AS h"

    def shown() -> tuple[list[str], list[dict], list[str]]:
        runs = [gleanpipe("query", "--format", fmt, sql, *data) for fmt in ("csv", "json", "table")]
        assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr for r in runs]
        return runs[0].stdout.splitlines(), json.loads(runs[1].stdout), runs[2].stdout.splitlines()

    server = ServeProcess(data_dir).start()
    try:
        assert post(server.url + submit_path("metrics"), gz(make_ping()))[0] == 200
        assert server.wait_rows(f"SELECT count(*) FROM {DATASET}.metrics_v1", 1) == 1
        through_serve = shown()
    finally:
        assert server.stop() == 0
    assert shown() == through_serve  # the file itself, serve stopped
    csv_lines, rows, table = through_serve
    big = "-170141183460469231731687303715884105727"  # past 64 bits: orjson refused it (a traceback)
    assert csv_lines == ["a,b,c,d,e,f,g,h",
                         f'inf,-inf,nan,,"[""-inf"",0.5]",1 year 1 month 16 days,-03:00:00,{big}']
    assert rows == [{"a": "inf", "b": "-inf", "c": "nan", "d": None, "e": ["-inf", 0.5],
                     "f": "1 year 1 month 16 days", "g": "-03:00:00", "h": big}]
    assert table[2].split()[:4] == ["inf", "-inf", "nan", '["-inf",0.5]']  # d is empty: NULL
    assert table[2].rstrip().endswith(f"1 year 1 month 16 days  -03:00:00  {big}")


@pytest.mark.parametrize("sql, reads", [
    ("EXPLAIN ANALYZE DELETE FROM t", False), ("explain analyse delete from t", False),
    ("EXPLAIN (ANALYZE, FORMAT json) DROP TABLE t", False), ("EXPLAIN /* x */ ANALYZE DELETE FROM t", False),
    ("EXPLAIN ANALYZE CREATE TABLE u AS SELECT 1", False), ("EXPLAIN DELETE FROM t", False),
    ("EXPLAIN SELECT 1", True), ("EXPLAIN ANALYZE SELECT * FROM t", True), ("EXPLAIN (FORMAT json) FROM t", True),
    ("/* x */ explain analyse with x AS (SELECT 1) SELECT * FROM x", True), ("EXPLAIN ANALYZE SELECT 2;", True),
    ("-- c\nEXPLAIN ANALYZE -- c\nDELETE FROM t", False), ("/* a */ EXPLAIN /* b */ ANALYZE /* c */ SELECT 1", True),
    # an option with a ")" in quotes: what follows the head does not parse, and what cannot be told apart is refused
    ('EXPLAIN (ANALYZE, FORMAT "x)") DELETE FROM t', False), ("EXPLAIN (FORMAT 'j)son') DELETE FROM t", False),
])
def test_explain_reads_only_when_it_explains_a_select(sql, reads):
    """EXPLAIN ANALYZE runs the statement it explains: through serve, `EXPLAIN ANALYZE DELETE`
    deleted the rows. The read-only file refuses an EXPLAIN of any write, and so does the check."""
    from gleanpipe.read_only_sql import WriteRefused, check

    if reads:
        check(sql)
    else:
        with pytest.raises(WriteRefused, match="EXPLAIN is run on a SELECT only"):
            check(sql)


@pytest.mark.parametrize("sql, kind", [
    ("CHECKPOINT", "a CHECKPOINT"), ("CALL checkpoint()", "a CALL"), ("PRAGMA force_checkpoint", "a PRAGMA"),
    ("SET threads = 1", "a SET"), ("ATTACH ':memory:' AS other", "an ATTACH"), ("VACUUM", "a VACUUM"),
    ("EXPORT DATABASE '/nowhere'", "an EXPORT"),
    # named as written, not by DuckDB's type (INSTALL was "a LOAD statement", USE "a SET", BEGIN "a TRANSACTION")
    ("INSTALL json", "an INSTALL"), ("/* x */ force  install json", "a FORCE INSTALL"), ("LOAD json", "a LOAD"),
    ("USE memory", "a USE"), ("BEGIN", "a BEGIN"), ("ANALYZE", "an ANALYZE"),
    ("UPDATE EXTENSIONS", "an UPDATE"),  # a type the duckdb module has no name for: "29 is not a valid StatementType"
    ("WITH x AS (SELECT 1 AS a) INSERT INTO main.t SELECT a FROM x", "an INSERT"),
])
def test_statements_that_are_not_reads_are_refused_whatever_their_kind(sql, kind):
    """Only SELECT (DESCRIBE, SHOW, ...) and EXPLAIN of a SELECT run through serve's writable
    connection: a CHECKPOINT, PRAGMA, SET or ATTACH there would act on serve's own connection.
    The read-only check was tested with DROP, CREATE, COPY and INSERT only."""
    from gleanpipe.read_only_sql import WriteRefused, check

    with pytest.raises(WriteRefused) as info:
        check(sql)
    assert str(info.value) == (f"the warehouse is read-only for queries: {kind} statement is not run "
                               "(SELECT, DESCRIBE, SHOW, SUMMARIZE and EXPLAIN of a SELECT are)")



@pytest.mark.parametrize("sql", [
    "select 1", "  (\n  WITH x AS (SELECT 1) SELECT * FROM x)", "SELECT 1 # a comment; with a semicolon",
    "SELECT 1 -- a comment; with a semicolon", "SELECT ';' /* ; */, '''a;b''', r\"c;d\", `e;f` FROM t",
    "# a comment first\nSELECT 1;",
])
def test_bigquery_read_only_check_lets_one_select_or_with_through(sql):
    """read_only_sql.check_bigquery, without a server: keywords in any case, and a ";" inside
    BigQuery's comments (#, --, /* */), quoted text or quoted names is not a statement's end."""
    from gleanpipe.read_only_sql import check_bigquery

    assert check_bigquery(sql) is None


@pytest.mark.parametrize("sql, says", [
    ("MERGE d.t USING d.s ON FALSE WHEN NOT MATCHED THEN INSERT ROW", "a MERGE statement is not run"),
    ("insert into d.t values (1)", "an INSERT statement is not run"),
    ("/* SELECT */ TRUNCATE TABLE d.t", "a TRUNCATE statement is not run"),
    ("# SELECT\nDELETE FROM d.t WHERE true", "a DELETE statement is not run"),
    ("-- only a comment", "SQL with no statement is not run"),
])
def test_bigquery_read_only_check_refuses_anything_else(sql, says):
    """A query on BigQuery runs with the caller's permissions: only SELECT or WITH may start it."""
    from gleanpipe.read_only_sql import WriteRefused, check_bigquery

    with pytest.raises(WriteRefused) as info:
        check_bigquery(sql)
    assert str(info.value) == f"the warehouse is read-only for queries: {says} (a query starts with SELECT or WITH)"


@pytest.mark.parametrize("sql, n", [
    ("SELECT 1; DELETE FROM d.t WHERE true", 2), ("select 1;\nDROP TABLE d.t;", 2),
    ("WITH x AS (SELECT 1) SELECT * FROM x; SELECT 2; TRUNCATE TABLE d.t", 3),
])
def test_bigquery_read_only_check_refuses_a_select_with_another_statement_after_it(sql, n):
    """BigQuery runs a script of several statements: only the first was looked at, so a SELECT
    could carry a DELETE behind it. More than one statement is refused, as on DuckDB."""
    from gleanpipe.read_only_sql import SqlRefused, WriteRefused, check_bigquery

    with pytest.raises(SqlRefused) as info:
        check_bigquery(sql)
    assert not isinstance(info.value, WriteRefused)
    assert str(info.value) == f"one statement at a time: this SQL has {n}"


def test_a_bigquery_write_is_refused_before_bigquery_is_reached(tmp_path):
    """The statement rule is the first answer: without Google credentials (none on this machine)
    a DELETE was answered "no Google credentials for BigQuery", as if it would have run with them."""
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    proc = subprocess.run([sys.executable, "-m", "gleanpipe.cli", "query", "--data-dir", str(tmp_path),
                           "--warehouse-url", "bigquery://some-project/US", "DELETE FROM d.t WHERE true"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == ("Error: the warehouse is read-only for queries: a DELETE statement is not run "
                           "(a query starts with SELECT or WITH)\n")


def test_replay_of_a_prefix_with_no_objects_says_so(tmp_path):
    """Before: "replayed 0 objects: " and nothing else, which does not say that the prefix matched
    nothing (here the app id where the store uses the URL's namespace)."""
    from conftest import APP, gz, make_ping, post, submit_path, ServeProcess

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = ServeProcess(data_dir).start()
    try:
        assert post(server.url + submit_path("metrics"), gz(make_ping()))[0] == 200
    finally:
        assert server.stop() == 0
    data = ["--data-dir", str(data_dir), "--no-progress"]
    none = gleanpipe("replay", "--prefix", "raw/org.example.toolbox/", *data)
    assert none.returncode == 0
    assert none.stdout == (f"no objects under raw/org.example.toolbox/ in file://{data_dir}/store: nothing replayed "
                           "(keys look like raw/<app-id>/<doc-type>/1/<document-id>.json)\n")
    some = gleanpipe("replay", "--prefix", f"raw/{APP}/", *data)
    assert some.stdout.startswith("replayed 1 object: inserted 0, duplicates 1")


def test_explore_refuses_a_busy_port_before_exporting(tmp_path):
    """Before: explore exported the warehouse, started Datasette, and only then uvicorn failed to
    bind ("address already in use") and explore exited 3."""
    data_dir = tmp_path / "data"
    added = gleanpipe("apps", "add", "org.example.toolbox", "--metrics", str(GLEAN_CLIENT / "metrics.yaml"),
                      "--data-dir", str(data_dir))
    assert added.returncode == 0, added.stderr  # a warehouse to explore
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = gleanpipe("explore", "--no-open", "--port", str(port), "--data-dir", str(data_dir), timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: cannot listen on 127.0.0.1:{port}: Address already in use (another server on "
                           "that port? choose another one with --port or GLEANPIPE_EXPLORE_PORT)\n")
    assert proc.stdout == ""
    assert not (data_dir / "explore").exists()  # nothing exported
    with socket.socket() as other:  # --export-only starts no Datasette: the port is none of its business
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        exported = gleanpipe("explore", "--export-only", "--port", str(port), "--data-dir", str(data_dir), timeout=60)
    assert (exported.returncode, exported.stderr) == (0, ""), exported.stderr
    assert (data_dir / "explore" / "org_example_toolbox.db").is_file()


def test_dictionary_build_and_explore_into_a_folder_they_cannot_make_say_so_in_one_line(tmp_path):
    """--out under a regular file: "cannot write <out>: ..." (dictionary build) or "export failed:
    ..." (explore), and exit 1, not a traceback."""
    data_dir = tmp_path / "data"
    added = gleanpipe("apps", "add", "org.example.toolbox", "--metrics", str(GLEAN_CLIENT / "metrics.yaml"),
                      "--data-dir", str(data_dir))
    assert added.returncode == 0, added.stderr
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "site"
    built = gleanpipe("dictionary", "build", "--out", str(out), "--data-dir", str(data_dir))
    assert (built.returncode, built.stdout) == (1, "")
    assert built.stderr == f"Error: cannot write {out}: Not a directory\n"  # the path once (it said it twice)
    explored = gleanpipe("explore", "--export-only", "--out", str(out), "--data-dir", str(data_dir))
    assert (explored.returncode, explored.stdout) == (1, "")
    assert explored.stderr == f"Error: export failed: {out}: Not a directory\n"


def test_build_or_explore_out_a_device_or_a_file_is_a_usage_error_that_wants_a_folder(tmp_path):
    """`dictionary build --out /dev/null` said "cannot write /dev/null: File exists" (exit 1), and
    `explore --export-only --out /dev/null` "export failed: /dev/null: File exists"; --out a regular
    file click's "Directory '...' is a file.": each is one line naming the path, what it is and
    what --out must be (exit 2), before the warehouse is read; a folder already there is written into.
    So are a FIFO, a Unix socket and a link to nothing (which is not followed: nothing is made there)."""
    data_dir = tmp_path / "data"
    added = gleanpipe("apps", "add", "org.example.toolbox", "--metrics", str(GLEAN_CLIENT / "metrics.yaml"),
                      "--data-dir", str(data_dir))
    assert added.returncode == 0, added.stderr
    (tmp_path / "a-file").write_text("x")
    os.mkfifo(tmp_path / "a-fifo")
    (tmp_path / "a-link").symlink_to(tmp_path / "nothing")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "a-socket"))
    for out, what in (("/dev/null", "a device"), (tmp_path / "a-file", "a file"), (tmp_path / "a-fifo", "a FIFO"),
                      (tmp_path / "a-socket", "a socket"), (tmp_path / "a-link", "a link to nothing")):
        for command in (("dictionary", "build"), ("explore", "--export-only")):
            refused = gleanpipe(*command, "--out", str(out), "--data-dir", str(data_dir))
            assert usage_error(refused) == (f"Error: Invalid value for '--out': {out} is {what}, not a folder: "
                                            "give a folder (made if missing)"), command
    listening.close()
    assert (tmp_path / "a-file").read_text() == "x" and not (tmp_path / "nothing").exists()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("an earlier build")
    built = gleanpipe("dictionary", "build", "--out", str(tmp_path / "site"), "--data-dir", str(data_dir))
    assert (built.returncode, built.stderr) == (0, "")
    assert built.stdout.startswith(f"wrote 70 files to {tmp_path / 'site'}: 1 app, 5 pings, 28 metrics")
    assert "Applications" in (tmp_path / "site" / "index.html").read_text()


@pytest.mark.parametrize("command", ["status", "replay"])
def test_a_store_url_naming_a_file_is_an_error_not_a_traceback(tmp_path, command):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    (tmp_path / "data").mkdir()
    import duckdb

    duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb")).close()  # status needs a warehouse first
    out = gleanpipe(command, "--data-dir", str(tmp_path / "data"), "--store-url", f"file://{a_file}")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"Error: cannot create store folder {a_file}" in out.stderr


def test_status_says_what_a_failing_serve_answered(tmp_path):
    """serve's admin API answering an error (a real HTTP server standing in for it: serve itself
    cannot be made to fail its /status on purpose), then gone: one line each, no traceback."""
    import os
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Failing(BaseHTTPRequestHandler):
        def do_POST(self):
            body = b'{"error": "the warehouse is invalidated"}'
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    data = tmp_path / "data"
    data.mkdir()
    server = HTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state = {"pid": os.getpid(), "admin_url": f"http://127.0.0.1:{server.server_port}", "token": "t",
             "store_url": f"file://{data / 'store'}", "warehouse_url": f"duckdb://{data / 'warehouse.duckdb'}"}
    (data / STATE_FILE).write_text(json.dumps(state))
    lock = take_serve_lock(data)  # what a running serve holds
    try:
        for args in (["status"], ["query", "SELECT 1"], ["dictionary", "build", "--out", str(tmp_path / "site")],
                     ["deletions"]):
            out = gleanpipe(*args, "--data-dir", str(data))
            assert out.returncode == 1 and "Traceback" not in out.stderr, (args, out.stderr)
            assert out.stderr.strip() == "Error: gleanpipe serve answered 500: the warehouse is invalidated", args
    finally:
        server.shutdown()
        server.server_close()
        os.close(lock)
    lock = take_serve_lock(data)
    out = gleanpipe("status", "--data-dir", str(data))  # nothing listens there any more
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"Error: cannot reach gleanpipe serve at {state['admin_url']}")


def test_replay_and_deletions_on_a_data_dir_with_nothing_there_create_nothing(tmp_path):
    """Before: `replay` created the store folders and `deletions` an empty DuckDB file in a
    mistyped --data-dir, so the typo went unnoticed and left a second, empty pipeline there."""
    typo = tmp_path / "dta"
    replayed = gleanpipe("replay", "--data-dir", str(typo), "--no-progress")
    assert (replayed.returncode, replayed.stderr) == (1, f"Error: no store at {typo}/store: nothing to replay\n")
    retried = gleanpipe("deletions", "--data-dir", str(typo))
    assert (retried.returncode, retried.stdout) == (0, f"0 pending: no warehouse at {typo}/warehouse.duckdb yet\n")
    assert not typo.exists()


def test_commands_that_only_read_a_missing_warehouse_say_how_to_make_one_and_create_nothing(tmp_path):
    """query, status and apps list on a data dir with no warehouse (a typo, or serve not run yet):
    what to run to have one, not DuckDB's "Cannot open database ... in read-only mode: database
    does not exist"."""
    typo = tmp_path / "dta"
    said = (f"Error: no warehouse at {typo}/warehouse.duckdb yet: run `gleanpipe serve` and send a ping, or "
            "`gleanpipe replay`. A serve started with another data dir is found with the same --data-dir (or "
            "GLEANPIPE_DATA_DIR).\n")
    for args in (["query", "SELECT 1"], ["status"], ["apps", "list"]):
        out = gleanpipe(*args, "--data-dir", str(typo))
        assert (out.returncode, out.stdout, out.stderr) == (1, "", said), args
    assert not typo.exists()


def test_a_warehouse_another_process_holds_names_that_process_not_a_guessed_writer(tmp_path):
    """Before: DuckDB's text naming only the interpreter ("Conflicting lock is held in .../python3.11
    (PID n). However, you would be able to open this database in read-only mode...") and a hint
    that another process writes to it, while here the holder only reads (a real lock, held by
    another process)."""
    from conftest import put_many_unsynced
    from gleanpipe.storage.local import LocalStore
    from gleanpipe.warehouse.duckdb import DuckDBWarehouse

    data = tmp_path / "data"
    put_many_unsynced(LocalStore(data / "store"), 1)
    path = data / "warehouse.duckdb"
    DuckDBWarehouse(str(path)).close()
    code = (f"import duckdb, sys; con = duckdb.connect({str(path)!r}, read_only=True); "
            "print('open', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        started = time.monotonic()
        replayed = gleanpipe("replay", "--data-dir", str(data), "--no-progress")
        added = gleanpipe("apps", "add", "org.example.toolbox", "--data-dir", str(data),
                          "--metrics", str(GLEAN_CLIENT / "metrics.yaml"))
        took = time.monotonic() - started
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    command = f"{sys.executable} -c {code}"[:200]  # as /proc gives it, cut at 200
    said = (f"Error: the warehouse {path} is held by PID {holder.pid} ({command}): let that process end (or stop "
            "it), then run this again\n")
    assert (replayed.returncode, replayed.stderr) == (1, said)
    assert (added.returncode, added.stderr) == (1, said)
    assert took < 20  # no wait for a process that is not a `gleanpipe query` or `status`


def test_a_gleanpipe_query_holding_the_warehouse_is_waited_for_then_named(tmp_path):
    """Before: `replay` and `apps add` failed at once while a `gleanpipe query` (run while serve
    was stopped) held the file. Now they wait up to CLI_HELD_WAIT_S for it to end: a query that
    ends within it lets replay run; one that does not is named by its command line."""
    from conftest import holds_open, put_many_unsynced
    from gleanpipe.cli import CLI_HELD_WAIT_S
    from gleanpipe.storage.local import LocalStore
    from gleanpipe.warehouse.duckdb import DuckDBWarehouse

    data = tmp_path / "data"
    put_many_unsynced(LocalStore(data / "store"), 1)
    path = data / "warehouse.duckdb"
    DuckDBWarehouse(str(path)).close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    args = [sys.executable, "-m", "gleanpipe.cli", "query", "--data-dir", str(data),
            "SELECT count(*) FROM range(1000000000000) AS a, range(10) AS b"]  # runs for hours

    def long_query() -> subprocess.Popen:
        query = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not holds_open(query.pid, path):
            assert query.poll() is None and time.monotonic() < deadline, query.communicate()
            time.sleep(0.1)
        return query

    query = long_query()
    try:
        added = gleanpipe("apps", "add", "org.example.toolbox", "--data-dir", str(data),
                          "--metrics", str(GLEAN_CLIENT / "metrics.yaml"))
    finally:
        query.kill()
        query.communicate()
    assert (added.returncode, added.stderr) == (
        1, f"Error: the warehouse {path} is still held by PID {query.pid} ({' '.join(args)[:200]}) after "
           f"{CLI_HELD_WAIT_S:.0f} s: let that process end (or stop it), then run this again\n")

    query = long_query()
    try:
        replay = subprocess.Popen([sys.executable, "-m", "gleanpipe.cli", "replay", "--data-dir", str(data),
                                   "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        assert replay.poll() is None  # waiting for the query
    finally:
        query.kill()
        query.communicate()
    out, err = replay.communicate(timeout=60)
    assert (replay.returncode, err) == (0, "")
    assert out.startswith("replayed 1 object: inserted 1, duplicates 0")


@pytest.mark.parametrize("how", ["console script, -v first", "status", "serve"])
def test_which_gleanpipe_command_holding_the_warehouse_is_waited_for(tmp_path, how):
    """The wait is for a `gleanpipe query` or `gleanpipe status` found by its command line as
    /proc gives it, also as the installed `gleanpipe` script run with an option before the
    command (`gleanpipe -v query ...`), and never for a `gleanpipe serve`, which holds the file
    on. The test above only ran `python -m gleanpipe.cli query`: recognising neither the script,
    nor an option first, nor `status` passed it. A `status` or `serve` is not made to hold the file
    for seconds here: a script named gleanpipe, run with that command, holds it as they do."""
    from conftest import holds_open, put_many_unsynced
    from gleanpipe.cli import CLI_HELD_WAIT_S
    from gleanpipe.storage.local import LocalStore
    from gleanpipe.warehouse.duckdb import DuckDBWarehouse

    data = tmp_path / "data"
    put_many_unsynced(LocalStore(data / "store"), 1)
    path = data / "warehouse.duckdb"
    DuckDBWarehouse(str(path)).close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    if how.startswith("console script"):
        args = [sys.executable, str(Path(sys.executable).parent / "gleanpipe"), "-v", "query", "--data-dir",
                str(data), "SELECT count(*) FROM range(1000000000000) AS a, range(10) AS b"]  # runs for hours
    else:
        script = tmp_path / "bin" / "gleanpipe"
        script.parent.mkdir()
        script.write_text(f"import duckdb, sys; con = duckdb.connect({str(path)!r}, read_only={how == 'status'}); "
                          "sys.stdin.read()")
        args = [sys.executable, str(script), how, "--data-dir", str(data)]
    holder = subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not holds_open(holder.pid, path):
            assert holder.poll() is None and time.monotonic() < deadline, holder.communicate()
            time.sleep(0.1)
        started = time.monotonic()
        replay = subprocess.Popen([sys.executable, "-m", "gleanpipe.cli", "replay", "--data-dir", str(data),
                                   "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # a serve is not waited for: replay ends on its own while the holder still holds the file (not
        # always within 1.5 s: on a busy machine replay's start alone may take that long)
        with suppress(subprocess.TimeoutExpired):
            replay.wait(timeout=60 if how == "serve" else 1.5)
        took, waited, held = time.monotonic() - started, replay.poll() is None, holder.poll() is None
    finally:
        holder.kill()
        holder.communicate()
    out, err = replay.communicate(timeout=60)
    if how == "serve":
        assert not waited and held and replay.returncode == 1, err
        assert took < CLI_HELD_WAIT_S  # not the wait for a `gleanpipe query` or `status`
        assert err == (f"Error: the warehouse {path} is held by PID {holder.pid} ({' '.join(args)[:200]}): let that "
                       "process end (or stop it), then run this again\n")
    else:
        assert waited and (replay.returncode, err) == (0, ""), err  # the whole message when it fails
        assert out.startswith("replayed 1 object: inserted 1, duplicates 0")


@pytest.mark.parametrize("ended", ["reaped", "zombie", "exiting"])
def test_a_holder_that_ends_between_the_lock_error_and_its_command_line_is_not_given_up_on(tmp_path, monkeypatch,
                                                                                            ended):
    """Before: the test above failed now and then for `status`: the holder was killed after DuckDB's
    lock error named it and before /proc gave its command line, which then read as nothing (a zombie)
    or not at all (reaped), so it was no `gleanpipe status` and replay gave up on a holder already
    gone. The kill is put in that gap by wrapping the /proc read: a race that real timing only
    sometimes gives. "exiting": a process killed and not yet a zombie has an empty command line in
    /proc once its memory is let go, which is a moment too short to catch; the wrapped read gives
    that empty line while the process still runs. Now a holder that has ended, or reads as ending,
    is not asked about: the open is tried again."""
    import gleanpipe.warehouse as warehouses
    from conftest import holds_open
    from gleanpipe.cli import CLI_HELD_WAIT_S, _ends_soon
    from gleanpipe.config import Config
    from gleanpipe.serve_state import command_line, has_ended

    path = tmp_path / "warehouse.duckdb"
    script = tmp_path / "bin" / "gleanpipe"
    script.parent.mkdir()
    script.write_text(f"import duckdb, sys; con = duckdb.connect({str(path)!r}); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, str(script), "status"], stdin=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not holds_open(holder.pid, path):
        assert holder.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    assert not has_ended(holder.pid) and not has_ended(os.getpid()) and not has_ended(0)
    read = []

    def killed_first(pid):
        if pid == holder.pid and not read and ended == "exiting":
            read.append("")
            threading.Timer(0.3, holder.kill).start()  # its lock goes a moment later, as it does then
            return read[-1]
        if pid == holder.pid and not read:
            holder.kill()
            if ended == "reaped":
                holder.wait()
            else:
                while open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] != "Z":
                    time.sleep(0.01)
        read.append(command_line(pid))
        return read[-1]

    monkeypatch.setattr(warehouses, "command_line", killed_first)
    try:
        started = time.monotonic()
        opened = warehouses.open_when_let_go(f"duckdb://{path}", config=Config.from_env(), wait_s=CLI_HELD_WAIT_S,
                                             wait_for=_ends_soon)
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    try:
        assert opened.query("SELECT 42")[1] == [(42,)]
    finally:
        opened.close()
    assert read[0] == (None if ended == "reaped" else "") and not _ends_soon(read[0])
    assert len(read) == 1 or ended == "exiting"  # "exiting" may read the holder again while the kill lands
    assert has_ended(holder.pid) and took < CLI_HELD_WAIT_S / 2  # not the wait for a `gleanpipe status`


def test_a_holder_that_reads_as_ending_but_holds_on_is_given_up_on_after_ENDED_RETRY_S(tmp_path, monkeypatch):
    """The other side of the test above: a holder whose command line reads empty (as one ending
    does) but that keeps its lock is tried again for ENDED_RETRY_S (1 s) when the wait is shorter,
    for the wait when it is longer, and then named as ever. The empty read is the wrapped /proc
    read, as there; the holder is a real process with the DuckDB file open."""
    import gleanpipe.warehouse as warehouses
    from conftest import holds_open
    from gleanpipe.config import Config
    from gleanpipe.serve_state import has_ended

    path = tmp_path / "warehouse.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, sys; con = duckdb.connect({str(path)!r}); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not holds_open(holder.pid, path):
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        monkeypatch.setattr(warehouses, "command_line", lambda pid: "" if pid == holder.pid else None)
        assert warehouses.ENDED_RETRY_S == 1.0 and not has_ended(holder.pid)
        for wait_s, least in ((0.0, 1.0), (2.0, 2.0)):
            started = time.monotonic()
            with pytest.raises(warehouses.WarehouseHeld) as held:
                warehouses.open_when_let_go(f"duckdb://{path}", config=Config.from_env(), wait_s=wait_s)
            took = time.monotonic() - started
            assert least <= took < least + 2, (wait_s, took)
            assert held.value.holder == f"PID {holder.pid}"  # no "()" for the empty command line
    finally:
        holder.kill()
        holder.wait()


def test_has_ended_reads_the_state_after_the_last_parenthesis(tmp_path):
    """/proc/<pid>/stat gives the command name in parentheses, and a process may name itself
    anything (`a) Z (` here): the state is the field after the last ")", or a running process
    would read as a zombie."""
    from gleanpipe.serve_state import has_ended

    proc = subprocess.Popen([sys.executable, "-c", "import sys; open('/proc/self/comm', 'w').write('a) Z ('); "
                             "print(flush=True); sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()
        # between its print and its read of stdin the child runs ("R"), on a busy machine for a
        # while: wait until it sleeps in the read, the state this test is about
        deadline = time.monotonic() + 30
        while not (stat := open(f"/proc/{proc.pid}/stat").read()).startswith(f"{proc.pid} (a) Z () S "):
            assert time.monotonic() < deadline, stat
            time.sleep(0.01)
        assert not has_ended(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert has_ended(proc.pid)


def test_has_ended_takes_a_zombie_not_yet_reaped_as_ended():
    """A process that has exited but that its parent has not reaped yet (a zombie, "Z") holds no
    lock any more: has_ended says so, and says it again once it is reaped and gone."""
    from gleanpipe.serve_state import has_ended

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while (stat := open(f"/proc/{proc.pid}/stat").read().rpartition(")")[2].split()[0]) != "Z":
            assert time.monotonic() < deadline, stat
            time.sleep(0.01)
        assert has_ended(proc.pid)
    finally:
        proc.wait()
    assert has_ended(proc.pid)


def test_a_warehouse_file_that_is_not_duckdb_gets_no_hint_about_other_writers(tmp_path):
    (tmp_path / "warehouse.duckdb").write_bytes(b"x" * 5000)
    out = gleanpipe("status", "--data-dir", str(tmp_path))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "is not a valid DuckDB database file" in out.stderr
    assert "another process" not in out.stderr
    port = free_port()
    served = gleanpipe("serve", "--data-dir", str(tmp_path), "--port", str(port), timeout=60)
    assert served.returncode == 1 and "not a valid DuckDB database file" in served.stderr
    assert "Is another" not in served.stderr and "Traceback" not in served.stderr


def test_a_data_dir_with_a_question_mark_is_refused_before_duckdb_misreads_it(tmp_path):
    """Before: DuckDB read what follows "?" as its options, failed on "<dir>/q.wal?x/...", and left an
    empty warehouse file behind that `status` then showed as a warehouse of no tables."""
    from conftest import make_ping
    from gleanpipe.storage.local import LocalStore
    from test_load import put_ping

    data_dir = tmp_path / "q?x"
    put_ping(LocalStore(data_dir / "store"), make_ping())  # a ping to replay
    said = (f"Error: the warehouse path {data_dir}/warehouse.duckdb has a '?', which DuckDB takes for the start of "
            "its options; use a data dir (or GLEANPIPE_WAREHOUSE_URL) without one\n")
    out = gleanpipe("replay", "--no-progress", "--data-dir", str(data_dir), timeout=60)
    assert (out.returncode, out.stderr) == (1, said)
    # serve says it from the settings alone, before its lock and its port: it said it once the port
    # was found free, so with the port taken (by another process, between a test's free_port() and
    # serve's check) it said "Address already in use" instead
    with taken_port() as port:
        out = gleanpipe("serve", "--port", str(port), "--data-dir", str(data_dir), timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (1, "", said)
    assert not list(tmp_path.rglob("*.duckdb*")) and not (data_dir / "serve.lock").exists()


def test_serve_on_a_data_dir_it_cannot_make_says_so_in_one_line(tmp_path):
    """Before: a traceback (NotADirectoryError from mkdir) for a data dir under a file; then
    "Error: /proc/nope: No such file or directory" (exit 1), which named neither the setting nor
    what failed. Now a usage error (exit 2) naming GLEANPIPE_DATA_DIR and the folder."""
    (tmp_path / "a-file").write_text("x")
    with taken_port() as port:  # the data dir is said before the port is looked at
        proc = gleanpipe("serve", "--data-dir", str(tmp_path / "a-file" / "data"), "--port", str(port), timeout=60)
        assert usage_error(proc) == ("Error: GLEANPIPE_DATA_DIR (--data-dir): cannot make the folder "
                                     f"{tmp_path / 'a-file' / 'data'}: Not a directory")
        proc = gleanpipe("serve", "--port", str(port), env={"GLEANPIPE_DATA_DIR": "/proc/nope"}, timeout=60)
    assert usage_error(proc) == ("Error: GLEANPIPE_DATA_DIR (--data-dir): cannot make the folder /proc/nope: "
                                 "No such file or directory")


def test_serve_with_a_file_where_the_spool_folder_goes_says_so_in_one_line(tmp_path):
    """Before: a traceback (FileExistsError from mkdir) at start."""
    (tmp_path / "data" / "store").mkdir(parents=True)
    (tmp_path / "data" / "store" / ".spool").write_text("x")
    proc = gleanpipe("serve", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr == f"Error: cannot create spool folder {tmp_path / 'data' / 'store' / '.spool'}: a file has that name\n"
    assert AdminClient.find(tmp_path / "data") is None  # nothing left that looks like a running serve


@pytest.mark.parametrize("command", [["apps", "list"], ["dictionary", "build", "--out", "site"]])
def test_dictionary_commands_name_an_unknown_warehouse_scheme(tmp_path, command):
    """Before: `apps list --warehouse-url ftp://x/y` said it "works on the local DuckDB warehouse
    only" and explained BigQuery, as if ftp:// were a warehouse of another kind."""
    rest = [str(tmp_path / "site") if arg == "site" else arg for arg in command[2:]]
    proc = gleanpipe(*command[:2], "--data-dir", str(tmp_path / "data"), "--warehouse-url", "ftp://x/y", *rest)
    assert usage_error(proc) == ("Error: GLEANPIPE_WAREHOUSE_URL (--warehouse-url): unknown warehouse scheme 'ftp' "
                                 "in 'ftp://x/y' (use duckdb://PATH or bigquery://PROJECT/LOCATION)")


@pytest.mark.parametrize("url, part", [
    ("bigquery://p/US", "the project id 'p' is not one: 2 to 64 lowercase letters"),
    ("bigquery://My_Project/US", "the project id 'My_Project' is not one"),
    ("bigquery://my-project/", "the location '' is not one (such as US, EU or europe-west1)"),
    ("bigquery://my-project/U S", "the location 'U S' is not one"),
])
def test_a_bigquery_url_of_the_right_shape_says_which_part_is_wrong(tmp_path, url, part):
    """Before: every bad BigQuery URL got "must look like bigquery://PROJECT/LOCATION", also one
    that has that shape and a project id too short."""
    proc = gleanpipe("query", "--data-dir", str(tmp_path / "data"), "--warehouse-url", url, "SELECT 1")
    assert usage_error(proc).startswith("Error: GLEANPIPE_WAREHOUSE_URL (--warehouse-url): BigQuery warehouse URL must look like bigquery://PROJECT/LOCATION "
                                  f"(e.g. bigquery://my-project/US); in {url!r} {part}"), proc.stderr


@pytest.mark.parametrize("command", [["apps", "add", "org.example.toolbox"], ["apps", "list"],
                                     ["dictionary", "build", "--out", "site"]])
def test_dictionary_commands_on_bigquery_say_they_are_local(tmp_path, command):
    """Before: `apps add` said "BigQueryWarehouse cannot pre-create columns", `apps list` a BigQuery
    syntax error (its catalog SQL is DuckDB's), `dictionary build` printed a traceback."""
    url = "bigquery://some-project/US"  # refused before anything is opened: no emulator needed
    rest = [str(tmp_path / "site") if arg == "site" else arg for arg in command[2:]]
    proc = gleanpipe(*command[:2], "--data-dir", str(tmp_path / "data"), "--warehouse-url", url, *rest)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    name = " ".join(command[:2]) if command[0] == "apps" else "dictionary build"
    assert proc.stderr.startswith(f"Error: `gleanpipe {name}` works on the local DuckDB warehouse only, not {url}: ")
    assert not (tmp_path / "data").exists() and not (tmp_path / "site").exists()


def test_replay_of_part_of_the_store_keeps_deleted_clients_deleted(tmp_path):
    """Before: `replay --prefix raw/<app>/baseline/` into a fresh warehouse loaded the baseline
    pings of a client whose deletion request was outside the prefix: the client came back."""
    from conftest import APP, DATASET, make_ping
    from gleanpipe.storage.local import LocalStore
    from test_load import CLIENT_A, CLIENT_B, put_ping

    store = LocalStore(tmp_path / "data" / "store")
    for client in (CLIENT_A, CLIENT_B):
        put_ping(store, make_ping(client))
    put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")
    out = gleanpipe("replay", "--data-dir", str(tmp_path / "data"), "--prefix", f"raw/{APP}/baseline/", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"replayed 3 objects (with 1 deletion request of those apps from outside raw/{APP}/baseline/): ")
    out = gleanpipe("query", "--data-dir", str(tmp_path / "data"), "--format", "json",
                    f"SELECT client_info.client_id AS c FROM {DATASET}.baseline")
    assert json.loads(out.stdout) == [{"c": CLIENT_B}]


def test_a_whole_replay_counts_each_deletion_request_once(tmp_path):
    """A replay of the whole store lists every deletion request already: none is added again
    (with_deletion_requests adds only those outside the prefix), so the count is of objects in the store."""
    from conftest import DATASET, make_ping
    from gleanpipe.storage.local import LocalStore
    from test_load import CLIENT_A, CLIENT_B, put_ping

    store = LocalStore(tmp_path / "data" / "store")
    for client in (CLIENT_A, CLIENT_B):
        put_ping(store, make_ping(client))
    put_ping(store, make_ping(CLIENT_A), doc_type="deletion-request")
    out = gleanpipe("replay", "--data-dir", str(tmp_path / "data"), "--no-progress")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ("replayed 3 objects: inserted 3, duplicates 0, skipped_deleted 0, events 0, deletions 1, "
                          "errors 0, ignored 0, missing 0\n")
    out = gleanpipe("query", "--data-dir", str(tmp_path / "data"), "--format", "json",
                    f"SELECT client_info.client_id AS c FROM {DATASET}.baseline")
    assert json.loads(out.stdout) == [{"c": CLIENT_B}]


def test_status_without_serve_says_so_and_reads_the_file(tmp_path):
    """`status` with no serve running: it says so, and counts from the warehouse file and the store."""
    from conftest import DATASET, make_ping
    from gleanpipe.storage.local import LocalStore
    from test_load import CLIENT_A, CLIENT_B, put_ping

    data = tmp_path / "data"
    store = LocalStore(data / "store")
    for client in (CLIENT_A, CLIENT_B):
        put_ping(store, make_ping(client))
    assert gleanpipe("replay", "--data-dir", str(data), "--no-progress").returncode == 0
    out = gleanpipe("status", "--data-dir", str(data), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert (info["server"], info["deletions"], info["rejected"]) == ("not running", 0, {})
    assert {"dataset": DATASET, "table": "baseline_v1", "rows": 2} in info["tables"]
    out = gleanpipe("status", "--data-dir", str(data))
    assert out.stdout == (f"server: not running   warehouse: duckdb://{data / 'warehouse.duckdb'}\n"
                          "dataset              table        rows\n"
                          "-------------------  -----------  ----\n"
                          f"{DATASET}  baseline_v1  2\n"
                          "(1 row)\n"
                          "waiting to load: 0\n"
                          "deletion requests carried out: 0\n"
                          "load errors: none\n"
                          "rejected at submit: none\n")


def test_apps_add_for_an_app_duckdb_cannot_hold_says_why(tmp_path):
    """Before: DuckDB's own binder error (ambiguous catalog or schema "temp")."""
    proc = gleanpipe("apps", "add", "--data-dir", str(tmp_path / "data"), "temp",
                     "--metrics", str(GLEAN_CLIENT / "metrics.yaml"), "--pings", str(GLEAN_CLIENT / "pings.yaml"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr == ("Error: the app's dataset name temp is a name DuckDB keeps for itself (a built-in catalog "
                           "or schema), so DuckDB cannot hold its tables\n")


def test_status_with_no_store_there_says_so_and_creates_none(tmp_path):
    """Before: with GLEANPIPE_WAREHOUSE_URL pointing at a warehouse elsewhere, status created
    ./data/store in the current folder and said "rejected at submit: none" from that empty store."""
    import duckdb

    (tmp_path / "elsewhere").mkdir()
    duckdb.connect(str(tmp_path / "elsewhere" / "warehouse.duckdb")).close()
    here = tmp_path / "here"
    here.mkdir()
    proc = subprocess.run([sys.executable, "-m", "gleanpipe.cli", "status"], cwd=here, capture_output=True, text=True,
                          timeout=60, env={**{k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")},
                                           "GLEANPIPE_WAREHOUSE_URL": f"duckdb://{tmp_path / 'elsewhere' / 'warehouse.duckdb'}"})
    assert proc.returncode == 0, proc.stderr
    assert "waiting to load: unknown (no store at data/store)" in proc.stdout  # the default, in this folder
    assert "rejected at submit: unknown (no store at data/store)" in proc.stdout
    assert not (here / "data").exists()


def test_ctrl_c_stops_a_replay_with_a_message_and_a_rerun_finishes_it(tmp_path):
    """Before: a traceback ending in DuckDB's "RuntimeError: Query interrupted", with more from the
    worker processes. Ctrl-C here is SIGINT to the replay's process group, as a terminal sends it."""
    import signal

    from conftest import put_many_unsynced
    from gleanpipe.storage.local import LocalStore

    n = 3000
    put_many_unsynced(LocalStore(tmp_path / "data" / "store"), n)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    cmd = [sys.executable, "-m", "gleanpipe.cli", "replay", "--data-dir", str(tmp_path / "data"), "--batch", "10"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    progress = ""
    while not any(f"/{n} [" in line and f"| 0/{n} [" not in line for line in progress.splitlines()):
        line = proc.stderr.readline()  # off a terminal, each update of the bar is a line
        assert line, f"replay ended before it moved: {progress}"
        progress += line
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, progress + err
    assert err.rstrip().endswith("interrupted: the batches loaded so far stay; run the same replay again to finish "
                                 "(it is idempotent)")
    assert "Traceback" not in err and "replayed" not in out
    again = gleanpipe("replay", "--data-dir", str(tmp_path / "data"), "--no-progress")
    assert again.returncode == 0 and f"replayed {n} objects" in again.stdout
    counts = gleanpipe("query", "--format", "csv", "--data-dir", str(tmp_path / "data"),
                       "SELECT count(*), count(DISTINCT document_id) FROM org_example_toolbox.baseline_v1")
    assert counts.stdout.splitlines()[1] == f"{n},{n}"


def test_query_output_keeps_values_as_stored_and_shows_control_characters_in_a_table(tmp_path):
    import duckdb

    duckdb.connect(str(tmp_path / "warehouse.duckdb")).close()
    sql = "SELECT chr(27) || '[31mred' AS v, 'a' || chr(10) || 'b' AS w"
    csv_out = gleanpipe("query", "--data-dir", str(tmp_path), "--format", "csv", sql)
    # the CSV carries the bytes stored (click.echo, off a terminal, took "\x1b[31m" for a colour and dropped it)
    assert csv_out.returncode == 0 and csv_out.stdout == 'v,w\n\x1b[31mred,"a\nb"\n'
    table = gleanpipe("query", "--data-dir", str(tmp_path), sql)
    assert table.stdout.splitlines()[2].split() == ["\\x1b[31mred", "a\\nb"]  # shown, not sent to the terminal
    same = gleanpipe("query", "--data-dir", str(tmp_path), "--format", "json", "SELECT 1 AS a, 2 AS a, 3 AS b")
    assert same.returncode == 1 and same.stdout == ""
    assert same.stderr == ("Error: --format json needs distinct column names, and a is used more than once: "
                           "give the columns names of their own (AS ...)\n")


def test_a_table_cuts_a_value_at_its_fixed_width_and_csv_keeps_it_whole(tmp_path):
    """A table column is at most output.TABLE_CELL_CHARS (60) characters wide (README "Fixed limits"):
    a 100-character value is shown as its first 59 and "…"; one of 60 is shown whole."""
    import duckdb

    from gleanpipe.output import TABLE_CELL_CHARS

    assert TABLE_CELL_CHARS == 60
    duckdb.connect(str(tmp_path / "warehouse.duckdb")).close()
    sql = "SELECT * FROM (VALUES (repeat('x', 100), 'a'), (repeat('y', 60), 'b')) t(v, w)"
    table = gleanpipe("query", "--data-dir", str(tmp_path), sql)
    assert (table.returncode, table.stderr) == (0, "")
    assert table.stdout.splitlines() == ["v" + " " * 59 + "  w",
                                         "-" * 60 + "  -",
                                         "x" * 59 + "…  a",
                                         "y" * 60 + "  b",
                                         "(2 rows)"]
    csv_out = gleanpipe("query", "--data-dir", str(tmp_path), "--format", "csv", sql)
    assert csv_out.stdout.splitlines() == ["v,w", "x" * 100 + ",a", "y" * 60 + ",b"]


def test_a_reader_that_stops_reading_is_no_error(tmp_path):
    """`gleanpipe status | head -1`: before, "Error: Broken pipe" and exit code 1 once the reader
    had gone. Here the reader goes before the first line (as `| true` does), so every write fails."""
    import duckdb

    duckdb.connect(str(tmp_path / "warehouse.duckdb")).close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    for args in (["status"], ["query", "--format", "csv", "SELECT * FROM range(300000)"]):
        read, write = os.pipe()
        os.close(read)  # nobody reads
        proc = subprocess.run([sys.executable, "-m", "gleanpipe.cli", *args, "--data-dir", str(tmp_path)],
                              stdout=write, stderr=subprocess.PIPE, env=env, timeout=60)
        os.close(write)
        assert (proc.returncode, proc.stderr.decode()) == (0, ""), args


def test_hints_name_the_command_as_it_can_be_run_here(tmp_path):
    """`make emulate` runs .venv/bin/gleanpipe, which is not on PATH: its hint said `gleanpipe query`.
    serve's banner, from the installed script run by its absolute path: with its folder not on PATH
    the hint names that path; with it on PATH, plain `gleanpipe`. (`python -m gleanpipe.cli`:
    test_serve's banner test.) The two serves run side by side."""
    venv_bin = Path(sys.executable).parent
    script = venv_bin / "gleanpipe"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    runs = {}
    other = tmp_path / "other"  # another gleanpipe first on PATH: not the one serve runs
    other.mkdir()
    (other / "gleanpipe").write_text("#!/bin/sh\nexit 1\n")
    (other / "gleanpipe").chmod(0o755)
    for name, path in (("off_path", str(tmp_path / "empty")), ("on_path", str(venv_bin)),
                       ("other_on_path", f"{other}:{venv_bin}")):
        data_dir = tmp_path / name
        proc = subprocess.Popen([str(script), "serve", "--data-dir", str(data_dir), "--port", str(free_port())],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**clean, "PATH": path})
        runs[name] = (proc, data_dir)
    outs = {}
    try:
        for name, (proc, data_dir) in runs.items():
            deadline = time.monotonic() + 30
            while not _serving(data_dir, proc.pid) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _serving(data_dir, proc.pid), name
            proc.send_signal(signal.SIGINT)  # the banner is printed once serve.json is written
        for name, (proc, _) in runs.items():
            outs[name] = proc.communicate(timeout=30)[0]
            assert proc.returncode == 0, name
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    # with the data dir serve was given (not the default): the command finds this serve by it
    hint = [line for line in outs["off_path"].splitlines() if "query it:" in line]
    where = f"--data-dir {tmp_path / 'off_path'}"
    assert hint == [f'  query it:   {script} query {where} "SHOW ALL TABLES"   (Ctrl-C stops)']
    hint = [line for line in outs["on_path"].splitlines() if "query it:" in line]
    where = f"--data-dir {tmp_path / 'on_path'}"
    assert hint == [f'  query it:   gleanpipe query {where} "SHOW ALL TABLES"   (Ctrl-C stops)']
    hint = [line for line in outs["other_on_path"].splitlines() if "query it:" in line]
    where = f"--data-dir {tmp_path / 'other_on_path'}"
    assert hint == [f'  query it:   {script} query {where} "SHOW ALL TABLES"   (Ctrl-C stops)']
    # a command that finds neither serve nor a file says how a serve of another data dir is found
    lost = gleanpipe("query", "SELECT 1", "--data-dir", str(tmp_path / "nowhere"))
    assert lost.returncode == 1 and lost.stderr.strip().endswith(
        "A serve started with another data dir is found with the same --data-dir (or GLEANPIPE_DATA_DIR).")


def _serving(data_dir: Path, pid: int) -> bool:
    """Whether the serve of process ``pid`` has written its serve.json (it is up)."""
    try:
        return json.loads((data_dir / STATE_FILE).read_text()).get("pid") == pid
    except (OSError, ValueError):
        return False


def test_emulate_and_replay_refuse_numbers_out_of_range():
    port = gleanpipe("emulate", "--port", "70000")
    assert port.returncode == 2 and "70000 is not in the range 0<=x<=65535" in port.stderr
    workers = gleanpipe("replay", "--workers", "65")
    assert workers.returncode == 2 and "65 is not in the range 0<=x<=64" in workers.stderr


@pytest.mark.parametrize("args", [["status", "--data-dir", ""], ["serve", "--data-dir", ""],
                                  ["dictionary", "build", "--out", ""], ["explore", "--export-only", "--out", ""]])
def test_an_empty_folder_option_is_refused_not_taken_for_the_current_folder(tmp_path, args):
    """Before: `serve --data-dir ""` served from the current folder (its store and warehouse there),
    and `dictionary build --out ""` wrote 72 files into it. An unset shell variable does that."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    proc = subprocess.run([sys.executable, "-m", "gleanpipe.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "is empty: give a folder" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing made in the current folder


def test_status_counts_load_errors_by_type_and_rejections_by_reason(tmp_path):
    """`status` on the file: the text and --json forms of load errors (a ping its columns cannot
    hold, an object that is no raw object) and of the error store's rejected pings. Its text was
    only ever checked as "load errors: none"."""
    from conftest import DATASET, make_ping
    from gleanpipe.storage.local import LocalStore
    from test_load import CLIENT_A, put_ping

    data_dir = tmp_path / "data"
    store = LocalStore(data_dir / "store")
    put_ping(store, make_ping(CLIENT_A))
    put_ping(store, make_ping(CLIENT_A, metrics={"counter": {"toolbox.n": 2**63}}))
    assert store.put_new(f"raw/org-example-toolbox/baseline/1/{uuid.uuid4()}.json", b"not a raw object")
    for reason in ("schema", "schema", "json"):
        assert store.put_new(f"errors/2026-11-23/{reason}/{uuid.uuid4()}.json", b"{}")
    replay = gleanpipe("replay", "--data-dir", str(data_dir), "--no-progress")
    assert replay.returncode == 0 and "inserted 1," in replay.stdout and "errors 2," in replay.stdout, replay.stdout
    out = gleanpipe("status", "--data-dir", str(data_dir))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.split() == [DATASET, "baseline_v1", "1"] for line in lines), out.stdout
    assert lines[-4:] == ["waiting to load: 0", "deletion requests carried out: 0",
                          "load errors: raw_object 1, transform 1", "rejected at submit: json 1, schema 2"], out.stdout
    info = json.loads(gleanpipe("status", "--data-dir", str(data_dir), "--json").stdout)
    assert (info["load_errors"], info["rejected"], info["pending"]) == (
        {"raw_object": 1, "transform": 1}, {"json": 1, "schema": 2}, 0)


def test_an_unknown_gleanpipe_variable_gets_one_warning_and_changes_nothing(tmp_path):
    """GLEANPIPE_PROT=18370 gleanpipe serve served on 8080 without a word: each command now warns
    once per GLEANPIPE_* variable that is no setting (a warning: the result and exit code stay);
    serve's HTTP workers do not say it again."""
    from conftest import ServeProcess, make_ping
    from gleanpipe.storage.local import LocalStore
    from test_load import CLIENT_A, put_ping

    data_dir = tmp_path / "data"
    put_ping(LocalStore(data_dir / "store"), make_ping(CLIENT_A))
    assert gleanpipe("replay", "--data-dir", str(data_dir), "--no-progress").returncode == 0
    plain = gleanpipe("status", "--data-dir", str(data_dir), env={"GLEANPIPE_PORT": "18370"})  # known: no word
    assert (plain.returncode, plain.stderr) == (0, "")
    assert any(line.split() == ["org_example_toolbox", "baseline_v1", "1"] for line in plain.stdout.splitlines())
    typo = gleanpipe("status", "--data-dir", str(data_dir), env={"GLEANPIPE_PROT": "18370", "GLEANPIPE_BENCH_DIR": "x"})
    assert (typo.returncode, typo.stdout) == (0, plain.stdout)
    assert typo.stderr == ("warning: GLEANPIPE_PROT is not a gleanpipe setting, so it is ignored (did you mean "
                           "GLEANPIPE_PORT? the settings are listed in the README, section Settings)\n")
    other = gleanpipe("query", "--data-dir", str(data_dir), "--format", "csv", "SELECT 1 AS one",
                      env={"GLEANPIPE_XYZZY": ""})
    assert (other.returncode, other.stdout) == (0, "one\n1\n")
    assert other.stderr == ("warning: GLEANPIPE_XYZZY is not a gleanpipe setting, so it is ignored (the settings "
                            "are listed in the README, section Settings)\n")

    server = ServeProcess(data_dir, env={"GLEANPIPE_PROT": "18370"}).start()
    try:
        assert server.query("SELECT count(*) FROM org_example_toolbox.baseline_v1")[1] == [(1,)]
    finally:
        assert server.stop() == 0
    assert server.read_log().count("GLEANPIPE_PROT") == 1, server.read_log()


def test_query_takes_sql_that_starts_with_a_comment(tmp_path):
    """SQL that starts with `--` (a .sql file's text, `gleanpipe query "$(cat daily.sql)"`): click read
    it as an option, "Error: No such option '-- daily users\\nSELECT ...'", exit 2. It is the SQL,
    wherever it stands among the options; an option of that command is still one."""
    from gleanpipe.warehouse.duckdb import DuckDBWarehouse

    data = tmp_path / "data"
    data.mkdir()
    DuckDBWarehouse(str(data / "warehouse.duckdb")).close()
    sql = "-- daily users\nSELECT 1 AS one"
    for args in (["--format", "csv", "--data-dir", str(data), sql], [sql, "--format", "csv", "--data-dir", str(data)],
                 ["--format=csv", f"--data-dir={data}", sql], ["--format", "csv", "--data-dir", str(data), "--", sql]):
        out = gleanpipe("query", *args)
        assert (out.returncode, out.stdout, out.stderr) == (0, "one\n1\n", ""), (args, out.stderr)
    for sql in ("--daily\nSELECT\n1\nAS\none", "--\tdaily\nSELECT\t1\tAS\tone"):  # no space: newlines, tabs
        out = gleanpipe("query", "--format", "csv", "--data-dir", str(data), sql)
        assert (out.returncode, out.stdout, out.stderr) == (0, "one\n1\n", ""), (sql, out.stderr)
    unknown = gleanpipe("query", "--data-dir", str(data), "--formt", "csv", "SELECT 1")
    assert unknown.returncode == 2 and "No such option '--formt'. Did you mean '--format'?" in unknown.stderr
    only = gleanpipe("query", "--data-dir", str(data), "-- nothing but a comment")
    assert (only.returncode, only.stderr) == (1, "Error: no statement in this SQL: give a SELECT\n")


def test_query_tells_an_options_value_from_sql_that_starts_with_a_comment(tmp_path):
    """What query's parser takes as the SQL (an argument that starts with "-" and holds whitespace)
    is not an option's value: not `--opt=value` with whitespace in the value (a data dir with a
    space), nor the value after an option that takes one, even when that starts with "-" and holds
    whitespace (then it is that option's value, refused in that option's words)."""
    from gleanpipe.warehouse.duckdb import DuckDBWarehouse

    data = tmp_path / "my data"
    data.mkdir()
    DuckDBWarehouse(str(data / "warehouse.duckdb")).close()
    sql = "-- daily users\nSELECT 1 AS one"
    for args in ([f"--data-dir={data}", "--format=csv", sql], [sql, f"--data-dir={data}", "--format", "csv"]):
        out = gleanpipe("query", *args)
        assert (out.returncode, out.stdout, out.stderr) == (0, "one\n1\n", ""), (args, out.stderr)
    value = gleanpipe("query", "--data-dir", str(data), "--warehouse-url", "-- not a url", "SELECT 1")
    assert value.returncode == 2 and value.stderr.endswith(
        "Error: GLEANPIPE_WAREHOUSE_URL (--warehouse-url): warehouse URL must look like duckdb://PATH or "
        "bigquery://PROJECT/LOCATION, got '-- not a url'\n"), value.stderr


def test_a_pivot_duckdb_runs_as_several_statements_is_refused_in_words_that_say_what_to_do(tmp_path):
    """A PIVOT whose ON has no IN list is DuckDB's MULTI statement (it first makes a type of the
    values it finds), alone or inside a SELECT. Before: "a PIVOT statement is not run", and for
    `SELECT * FROM (PIVOT ...)` the contradiction "a SELECT statement is not run (SELECT, ... are)".
    Now it says why and what runs instead: the same PIVOT with its values named, which a real
    `gleanpipe query` on a warehouse file answers."""
    import duckdb

    from gleanpipe.read_only_sql import WriteRefused, check

    says = ("the warehouse is read-only for queries: DuckDB runs this SQL as several statements, which is not run "
            "(a PIVOT whose ON has no IN list first makes a type of the values it finds): name the values, "
            "PIVOT ... ON name IN ('a', 'b') ...")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"))
    con.execute("CREATE SCHEMA app; CREATE TABLE app.daily AS "
                "SELECT * FROM (VALUES ('d1', 'open', 2), ('d1', 'close', 1), ('d2', 'open', 5)) t(day, name, n)")
    con.close()
    for sql in ("PIVOT app.daily ON name USING sum(n) GROUP BY day",
                "SELECT * FROM (PIVOT app.daily ON name USING sum(n) GROUP BY day)"):
        with pytest.raises(WriteRefused) as info:
            check(sql)
        assert str(info.value) == says
        refused = gleanpipe("query", sql, "--data-dir", str(data_dir))
        assert (refused.returncode, refused.stdout, refused.stderr) == (1, "", f"Error: {says}\n")
    named = gleanpipe("query", "--format", "csv", "SELECT * FROM (PIVOT app.daily ON name IN ('open', 'close') "
                      "USING sum(n) GROUP BY day) ORDER BY day", "--data-dir", str(data_dir))
    assert (named.returncode, named.stderr) == (0, "")
    assert named.stdout.splitlines() == ["day,open,close", "d1,2,1", "d2,5,"]
