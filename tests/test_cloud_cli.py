"""CLI checks around the cloud stores: settings and misuse get clear errors, not tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_worker_wait_setting_is_checked(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gleanpipe.cli", "worker", "--queue", "http://127.0.0.1:1/q",
                           "--data-dir", str(tmp_path)], env={"GLEANPIPE_WORKER_WAIT_S": "21", "PATH": ""},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "0<=x<=20" in proc.stderr


@pytest.mark.parametrize("store", ["gs://some-bucket/pings", None])  # None: the default, a folder
def test_worker_refuses_a_store_that_is_not_s3(tmp_path, store):
    """Before: it started, then failed on SQS with "Unable to locate credentials" (gs://), or
    polled for notifications of a bucket it would never read (the default folder)."""
    args = ["--store-url", store] if store else []
    proc = subprocess.run([sys.executable, "-m", "gleanpipe.cli", "worker", "--queue", "http://127.0.0.1:1/q",
                           "--data-dir", str(tmp_path), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "the worker loads from the s3:// store whose bucket notifies the queue" in proc.stderr
    assert (store or f"file://{tmp_path}/store") in proc.stderr and not (tmp_path / "warehouse.duckdb").exists()


def test_serve_refuses_a_cloud_store_it_could_not_trigger_from(tmp_path):
    """Said first, from the settings alone: with its port taken by another program (here a socket
    this test holds), serve said "Address already in use", and a user who freed the port only
    then learnt that this store could never work with serve."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = subprocess.run([sys.executable, "-m", "gleanpipe.cli", "serve", "--data-dir", str(tmp_path),
                               "--port", str(taken.getsockname()[1]), "--store-url", "s3://some-bucket/pings"],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2  # a usage error, as the worker's refusal of a store it cannot use
    assert "file:// store only" in proc.stderr and "gleanpipe worker" in proc.stderr
    assert "already in use" not in proc.stderr and not (tmp_path / "serve.lock").exists()


def test_a_store_or_warehouse_out_of_reach_is_one_line_not_a_traceback(tmp_path):
    """Before: `status` and `replay` printed 50-150 lines of traceback when the bucket's endpoint
    or BigQuery could not be reached. Here both endpoints are loopback ports nothing listens on."""
    import duckdb

    from emulators import closed_port

    duckdb.connect(str(tmp_path / "w.duckdb")).close()
    endpoint = f"http://127.0.0.1:{closed_port()}"
    base = {"PATH": "", "HOME": str(tmp_path), "GLEANPIPE_STORE_RETRY_S": "0", "AWS_ENDPOINT_URL": endpoint,
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    store = {**base, "GLEANPIPE_STORE_URL": "s3://some-bucket/pings", "GLEANPIPE_WAREHOUSE_URL": f"duckdb://{tmp_path}/w.duckdb"}
    warehouse = {**base, "GLEANPIPE_WAREHOUSE_URL": "bigquery://some-project/US", "GLEANPIPE_BIGQUERY_ENDPOINT": endpoint,
                 "GLEANPIPE_BIGQUERY_RETRY_S": "1",
                 "GLEANPIPE_STORE_URL": f"file://{tmp_path}/store"}
    for args, env, says in ((["status"], store, "Error: cannot list s3://some-bucket/pings/errors/"),
                            (["replay", "--no-progress"], store, "Error: cannot list s3://some-bucket/pings/raw/"),
                            (["status"], warehouse, "Error: BigQuery: ")):
        proc = subprocess.run([sys.executable, "-m", "gleanpipe.cli", *args, "--data-dir", str(tmp_path)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert proc.stderr.startswith(says) and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)


def test_a_bigquery_that_never_answers_is_an_error_within_the_retry_time(tmp_path):
    """Before: `status` and `deletions` (and the load function) waited for ever on some BigQuery
    calls that had a retry deadline but no timeout. The endpoint here is a loopback socket that
    listens and never answers (the kernel completes the connections; nobody reads them)."""
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        env = {"PATH": "", "HOME": str(tmp_path), "GLEANPIPE_WAREHOUSE_URL": "bigquery://some-project/US",
               "GLEANPIPE_BIGQUERY_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
               "GLEANPIPE_BIGQUERY_RETRY_S": "2", "GLEANPIPE_STORE_URL": f"file://{tmp_path}/store"}
        for args in (["status"], ["deletions"]):
            started = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "gleanpipe.cli", *args, "--data-dir", str(tmp_path)],
                                  env=env, capture_output=True, text=True, timeout=90)
            assert time.monotonic() - started < 60, args
            assert proc.returncode == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)
            assert proc.stderr.startswith("Error: BigQuery: "), (args, proc.stderr)
