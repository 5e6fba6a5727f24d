"""`functions-framework --target=submit` / `--target=load` work as is, with local defaults."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from conftest import APP, DATASET, ROOT, gz, make_ping, post, submit_path, free_port

FF = str(Path(sys.executable).parent / "functions-framework")


def start(target: str, cwd: Path, *extra: str, env: dict | None = None, log: Path | None = None):
    """(process, URL) of `functions-framework --target=<target>` on a free port, with no GLEANPIPE_*
    variable from the caller's environment (only those in ``env``); its stderr goes to ``log``."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    proc = subprocess.Popen([FF, "--source", str(ROOT / "functions" / "main.py"), "--target", target,
                             "--host", "127.0.0.1", "--port", str(port), *extra],
                            cwd=cwd, env={**clean, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb") if log else subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(log.read_text(errors="replace") if log else proc.stderr.read().decode())
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("functions-framework did not start")


def test_submit_then_load_under_functions_framework(tmp_path):
    submit, submit_url = start("submit", tmp_path)
    try:
        doc_id = str(uuid.uuid4())
        status, _, _ = post(submit_url + submit_path("baseline", doc_id),
                            gz(make_ping("3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
                                         metrics={"counter": {"toolbox.launch_count": 9}})))
        assert status == 200
        assert post(submit_url + "/elsewhere", b"{}")[0] == 404
    finally:
        submit.terminate()
        submit.wait(timeout=10)
    key = f"raw/{APP}/baseline/1/{doc_id}.json"
    assert (tmp_path / "data" / "store" / key).is_file()  # local default: ./data/store

    load, load_url = start("load", tmp_path, "--signature-type", "cloudevent")
    try:
        event = {"specversion": "1.0", "id": str(uuid.uuid4()), "type": "google.cloud.storage.object.v1.finalized",
                 "source": "//storage.googleapis.com/projects/_/buckets/local", "subject": f"objects/{key}",
                 "datacontenttype": "application/json", "data": {"bucket": "local", "name": key}}
        req = urllib.request.Request(load_url + "/", data=json.dumps(event).encode(), method="POST",
                                     headers={"Content-Type": "application/cloudevents+json"})
        for _ in range(2):  # at-least-once delivery: the second one changes nothing
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status == 200
    finally:
        load.terminate()
        load.wait(timeout=10)
    import duckdb

    con = duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb"), read_only=True)
    try:
        assert con.execute(f"SELECT document_id, metrics.counter.toolbox_launch_count FROM {DATASET}.baseline_v1"
                           ).fetchall() == [(doc_id, 9)]
    finally:
        con.close()


def test_the_first_deliveries_at_once_all_load_with_no_traceback(tmp_path):
    """functions-framework answers on several threads (4 per core). Eight first deliveries at
    once each built a loader of their own, and the DuckDB setup of the one file conflicted:
    7 of 8 answered 500 with a traceback (audit of 2026-12-06). One loader is built; all 8 load."""
    import threading

    from gleanpipe import rawobject
    from gleanpipe.naming import DocumentPath
    from gleanpipe.storage.local import LocalStore

    store = LocalStore(tmp_path / "data" / "store")
    keys = []
    for _ in range(8):
        path = DocumentPath(APP, "metrics", "1", str(uuid.uuid4()))
        meta = {"submission_timestamp": "2026-11-23T08:00:00.000000Z", "uri": f"/submit/{APP}/metrics/1/x",
                "headers": {}, "app_id": APP, "doc_type": "metrics", "version": "1",
                "document_id": path.document_id, "key": path.key}
        assert store.put_new(path.key, rawobject.encode(meta, json.dumps(make_ping()).encode()))
        keys.append(path.key)
    log = tmp_path / "load.log"
    load, load_url = start("load", tmp_path, "--signature-type", "cloudevent", log=log)
    statuses, start_together = [], threading.Barrier(len(keys))

    def deliver(key):
        event = {"specversion": "1.0", "id": str(uuid.uuid4()), "type": "google.cloud.storage.object.v1.finalized",
                 "source": "//storage.googleapis.com/projects/_/buckets/local", "subject": f"objects/{key}",
                 "datacontenttype": "application/json", "data": {"bucket": "local", "name": key}}
        req = urllib.request.Request(load_url + "/", data=json.dumps(event).encode(), method="POST",
                                     headers={"Content-Type": "application/cloudevents+json"})
        start_together.wait()
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                statuses.append(resp.status)
        except urllib.error.HTTPError as exc:
            statuses.append(exc.code)

    try:
        threads = [threading.Thread(target=deliver, args=(k,)) for k in keys]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    finally:
        load.terminate()
        load.wait(timeout=10)
    assert statuses == [200] * len(keys)
    assert "Traceback" not in log.read_text(errors="replace")
    import duckdb

    con = duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb"), read_only=True)
    try:
        assert con.execute(f"SELECT count(*), count(DISTINCT document_id) FROM {DATASET}.metrics_v1").fetchone() == (8, 8)
    finally:
        con.close()


def assert_warned_once_of_GLEANPIPE_PROT(log) -> None:
    """The function's log holds one line about the mistyped GLEANPIPE_PROT, naming GLEANPIPE_PORT."""
    said = [line for line in log.read_text(errors="replace").splitlines() if "GLEANPIPE_PROT" in line]
    assert len(said) == 1, said
    assert said[0].endswith("GLEANPIPE_PROT is not a gleanpipe setting, so it is ignored (did you mean "
                            "GLEANPIPE_PORT? the settings are listed in the README, section Settings)")


def test_a_gleanpipe_variable_that_is_no_setting_is_logged_once_by_the_function(tmp_path):
    """A typo in the deployed function's environment (GLEANPIPE_PROT) was ignored without a word,
    as the CLI's was: the function logs it once, on its first request, and answers as before."""
    log = tmp_path / "ff.log"
    submit, url = start("submit", tmp_path, env={"GLEANPIPE_PROT": "9000"}, log=log)
    try:
        for seq in range(2):
            assert post(url + submit_path("baseline"), gz(make_ping("3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
                                                                    seq=seq)))[0] == 200
    finally:
        submit.terminate()
        submit.wait(timeout=10)
    assert_warned_once_of_GLEANPIPE_PROT(log)


def test_the_deletions_function_logs_an_unknown_gleanpipe_variable_once_too(tmp_path):
    """deletions reads its settings on every call (submit and load build their handler once), so
    only the once-per-process check kept the warning from repeating on every scheduled run."""
    log = tmp_path / "ff.log"
    deletions, url = start("deletions", tmp_path, env={"GLEANPIPE_PROT": "9000"}, log=log)
    try:
        for _ in range(3):
            status, body, _ = post(url + "/", b"", headers={"Content-Type": "application/json"})
            assert (status, body["carried_out"], body["still_pending"]) == (200, 0, 0)
    finally:
        deletions.terminate()
        deletions.wait(timeout=10)
    assert_warned_once_of_GLEANPIPE_PROT(log)
