"""CLI checks around the cloud stores: settings and misuse get clear errors, not tracebacks."""

from __future__ import annotations

import subprocess
import sys


def test_worker_wait_setting_is_checked(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gleanpipe.cli", "worker", "--queue", "http://127.0.0.1:1/q",
                           "--data-dir", str(tmp_path)], env={"GLEANPIPE_WORKER_WAIT_S": "21", "PATH": ""},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "0<=x<=20" in proc.stderr


def test_serve_refuses_a_cloud_store_it_could_not_trigger_from(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gleanpipe.cli", "serve", "--data-dir", str(tmp_path),
                           "--store-url", "s3://some-bucket/pings"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "file:// store only" in proc.stderr and "gleanpipe worker" in proc.stderr
