"""pyflakes over the shipped code: an undefined name on a rare path (an error handler, say) is a
crash that only that path's own test would find."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pyflakes_finds_nothing_in_src_functions_and_bench():
    out = subprocess.run([sys.executable, "-m", "pyflakes", "src", "functions", "bench"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")
