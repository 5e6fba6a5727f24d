"""What a new user gets for a wrong flag value, a busy port or a definitions file that is not one:
a one-line error and exit code, never a traceback, and nothing half-started."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest


GLEAN_CLIENT = Path(__file__).resolve().parent / "glean_client"
METRICS_ID = "moz://mozilla.org/schemas/glean/metrics/2-0-0"
PINGS_ID = "moz://mozilla.org/schemas/glean/pings/2-0-0"


def gleanpipe(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "gleanpipe.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("args, message", [
    (["replay", "--batch", "0"], "Invalid value for '--batch': 0 is not in the range x>=1."),
    (["replay", "--batch", "-1"], "Invalid value for '--batch': -1 is not in the range x>=1."),
    (["replay", "--workers", "-3"], "Invalid value for '--workers': -3 is not in the range x>=0."),
    (["serve", "--port", "70000"], "Invalid value for '--port': 70000 is not in the range 1<=x<=65535."),
    (["serve", "--workers", "0"], "Invalid value for '--workers': 0 is not in the range x>=1."),
])
def test_out_of_range_flags_are_usage_errors(tmp_path, args, message):
    """Before: `replay --batch 0` ended in a traceback (range() arg 3 must not be zero), `--batch -1`
    replayed nothing and exited 0, `serve --port 70000` printed gunicorn's OverflowError."""
    proc = gleanpipe(*args, "--data-dir", str(tmp_path / "data"))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was created
