"""The README's first instructions, run as written: its curl example against a real `gleanpipe
serve` (on a free port in place of 8080), then its queries, with the answers the README gives."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, ServeProcess

SH_BLOCKS = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def block(containing: str) -> str:
    """The README's first ```sh block with ``containing`` in it."""
    return next(b for b in SH_BLOCKS if containing in b)


def run(script: str, cwd, port: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # the venv's gleanpipe, as after activate
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script.replace("127.0.0.1:8080", f"127.0.0.1:{port}")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's example needs curl")
def test_the_readmes_curl_example_and_queries_give_what_it_says(tmp_path):
    data_dir = tmp_path / "data"  # the default ./data of the folder the commands run in
    data_dir.mkdir()
    server = ServeProcess(data_dir).start()
    try:
        sent = run(block("| curl -i -X POST"), tmp_path, server.port)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith("HTTP/1.1 200 OK"), sent.stdout  # "means the ping is on disk"
        assert "X-Gleanpipe-Stored: new" in sent.stdout
        assert server.wait_rows("SELECT count(*) FROM org_example_toolbox.metrics_v1", 1) == 1

        labeled = run(block("toolbox_tool_used"), tmp_path, server.port)
        assert labeled.returncode == 0, labeled.stderr
        rows = [line.split() for line in labeled.stdout.splitlines()]
        assert ["hammer", "2"] in rows and ["pliers", "1"] in rows  # "gives hammer 2, pliers 1"
        assert rows.index(["hammer", "2"]) < rows.index(["pliers", "1"])  # ORDER BY uses DESC

        daily = run(block("SUM(sum_value) AS uses"), tmp_path, server.port)  # the metric_daily example
        assert daily.returncode == 0, daily.stderr
        assert [r[1:] for r in (line.split() for line in daily.stdout.splitlines()) if r[1:2] in (["hammer"], ["pliers"])] \
            == [["hammer", "2.0"], ["pliers", "1.0"]], daily.stdout

        baseline = run(block("FROM org_example_toolbox.baseline"), tmp_path, server.port)
        assert baseline.returncode == 1
        assert "org_example_toolbox has no table or view baseline yet" in baseline.stderr  # as the README says
        assert "metrics, metrics_v1" in baseline.stderr
    finally:
        assert server.stop() == 0
