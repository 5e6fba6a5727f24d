"""The deployable folder (make deploy's build step) imports and runs on its own.

The built folder is put first on sys.path of a fresh interpreter started with ``-S``: no site
module, so the editable install of this checkout (a .pth file) is not seen, and ``gleanpipe``
can only come from the folder. The venv's site-packages is added after it for the third-party
dependencies, as Cloud Functions installs them from requirements.txt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from importlib import metadata

import duckdb
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gleanpipe.deploy.package import PackageError, build_function_source

from conftest import APP, DATASET, ROOT

RUN_ALONE = textwrap.dedent('''
    import gzip, importlib.util, json, sys, uuid
    folder = sys.argv[1]
    import gleanpipe
    from functions_framework import create_app

    doc_id = str(uuid.uuid4())
    ping = {"client_info": {"client_id": "3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "app_build": "1",
                            "app_channel": "release", "app_display_version": "1.0", "architecture": "x86_64",
                            "first_run_date": "2026-11-22+00:00", "os": "Linux", "os_version": "6.1",
                            "telemetry_sdk_build": "71.0.0"},
            "ping_info": {"seq": 0, "start_time": "2026-11-23T09:00+00:00", "end_time": "2026-11-23T09:05+00:00"},
            "metrics": {"counter": {"toolbox.launch_count": 7}}}
    submit = create_app("submit", folder + "/main.py", "http").test_client()
    path = "/submit/%s/baseline/1/%s" % (sys.argv[2], doc_id)
    resp = submit.post(path, data=gzip.compress(json.dumps(ping).encode()),
                       headers={"Content-Type": "application/json; charset=utf-8"})
    bad = submit.post("/submit/%s/baseline/1/not-a-uuid" % sys.argv[2], data=b"{}")
    key = "raw/%s/baseline/1/%s.json" % (sys.argv[2], doc_id)
    load = create_app("load", folder + "/main.py", "cloudevent").test_client()
    event = {"specversion": "1.0", "id": "1", "type": "google.cloud.storage.object.v1.finalized",
             "source": "//storage.googleapis.com/projects/_/buckets/raw", "subject": "objects/" + key,
             "datacontenttype": "application/json", "data": {"bucket": "raw", "name": key}}
    loaded = load.post("/", json=event, headers={"Content-Type": "application/cloudevents+json"})
    import gleanpipe.functions
    gleanpipe.functions.loader().warehouse.close()
    deletions = create_app("deletions", folder + "/main.py", "http").test_client().post("/")
    print(json.dumps({"gleanpipe": gleanpipe.__file__, "main": sys.modules["main"].__file__,
                      "deploy_importable": importlib.util.find_spec("gleanpipe.deploy") is not None,
                      "submit": resp.status_code, "bad": bad.status_code, "load": loaded.status_code,
                      "deletions": [deletions.status_code, deletions.get_json()], "doc_id": doc_id}))
''')


def test_built_folder_has_main_requirements_and_the_package(tmp_path):
    out = build_function_source(tmp_path / "function")
    assert sorted(p.name for p in out.iterdir()) == [".gcloudignore", "constraints.txt", "gleanpipe", "main.py",
                                                     "requirements.txt"]
    assert (out / "main.py").read_text() == (ROOT / "functions" / "main.py").read_text()
    schema = out / "gleanpipe" / "schemas" / "glean.1.schema.json"
    assert schema.read_bytes() == (ROOT / "schemas" / "glean.1.schema.json").read_bytes()
    assert (out / "gleanpipe" / "functions.py").read_text() == (ROOT / "src/gleanpipe/functions.py").read_text()
    assert not (out / "gleanpipe" / "deploy").exists()
    assert not list(out.rglob("__pycache__"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [line for line in (out / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert lines[0] == "-c constraints.txt"  # pip reads it relative to requirements.txt
    assert (out / "constraints.txt").read_bytes() == (ROOT / "constraints.txt").read_bytes()
    assert lines[1:] == project["dependencies"] + project["optional-dependencies"]["gcp"]
    names = {Requirement(line).name for line in lines[1:]}
    assert {"functions-framework", "duckdb", "google-cloud-storage", "google-cloud-bigquery"} <= names
    assert "gleanpipe" not in names  # vendored, not installed
    # Every requirement is pinned, to a version its own range allows: the deploy gets what was tested.
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    pins = {canonicalize_name(name): version for name, version in pins.items()}
    for line in lines[1:]:
        req = Requirement(line)
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), line


def test_rebuild_replaces_only_its_own_folder(tmp_path):
    out = build_function_source(tmp_path / "function")
    (out / "stale.py").write_text("left over")
    build_function_source(out)
    assert not (out / "stale.py").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(PackageError, match="was not built by gleanpipe: refusing to replace it"):
        build_function_source(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_built_folder_imports_and_runs_alone(tmp_path):
    out = build_function_source(tmp_path / "function")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # The interpreter below gets its third-party packages from this venv: they must be the ones
    # requirements.txt asks for (the gcp extra is only needed for gs:// and bigquery://).
    for line in project["dependencies"]:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            assert metadata.version(req.name) in req.specifier, line
    run_dir = tmp_path / "cwd"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLEANPIPE_", "PYTHON"))}
    env["PYTHONPATH"] = os.pathsep.join([str(out), sysconfig.get_paths()["purelib"]])
    env["GLEANPIPE_DATA_DIR"] = str(tmp_path / "data")
    env["GLEANPIPE_STORE_URL"] = f"file://{tmp_path / 'store'}"
    env["GLEANPIPE_WAREHOUSE_URL"] = f"duckdb://{tmp_path / 'warehouse.duckdb'}"
    result = subprocess.run([sys.executable, "-S", "-c", RUN_ALONE, str(out), APP], cwd=run_dir, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["gleanpipe"] == str(out / "gleanpipe" / "__init__.py")
    assert got["main"] == str(out / "main.py")
    assert got["deploy_importable"] is False  # proves the checkout's own package was not on the path
    assert (got["submit"], got["bad"], got["load"]) == (200, 400, 200)
    assert got["deletions"] == [200, {"warehouse": f"duckdb://{tmp_path / 'warehouse.duckdb'}", "carried_out": 0,
                                      "still_pending": 0, "rows_deleted": 0, "requests": []}]
    key = f"raw/{APP}/baseline/1/{got['doc_id']}.json"
    assert (tmp_path / "store" / key).is_file()
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    try:
        rows = con.execute(f"SELECT document_id, metrics.counter.toolbox_launch_count FROM {DATASET}.baseline_v1"
                           ).fetchall()
    finally:
        con.close()
    assert rows == [(got["doc_id"], 7)]
