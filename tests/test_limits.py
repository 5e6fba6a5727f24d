"""Every setting and limit: documented with its default, checked when set, clear when crossed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT


def gleanpipe(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    return subprocess.run([sys.executable, "-m", "gleanpipe.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**clean, **(env or {})})


# --- a bad value of a setting: a usage error naming the variable, never a traceback or a hang ---------


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["replay", "--batch", "0"], {}, "GLEANPIPE_LOAD_BATCH must be positive, got 0"),
        (["replay", "--batch", "-5"], {}, "GLEANPIPE_LOAD_BATCH must be positive, got -5"),
        (["replay"], {"GLEANPIPE_LOAD_BATCH": "0"}, "GLEANPIPE_LOAD_BATCH must be positive, got 0"),
        (["serve", "--workers", "0"], {}, "GLEANPIPE_WORKERS must be positive, got 0"),
        (["serve", "--port", "70000"], {}, "GLEANPIPE_PORT must be at most 65535, got 70000"),
        (["serve"], {"GLEANPIPE_PORT": "65536"}, "GLEANPIPE_PORT must be at most 65535, got 65536"),
        (["status"], {"GLEANPIPE_EXPLORE_PORT": "99999"}, "GLEANPIPE_EXPLORE_PORT must be at most 65535, got 99999"),
        (["status"], {"GLEANPIPE_MAX_WIRE_BYTES": "abc"}, "GLEANPIPE_MAX_WIRE_BYTES must be a whole number, got 'abc'"),
        (["status"], {"GLEANPIPE_MAX_PAYLOAD_BYTES": "-1"}, "GLEANPIPE_MAX_PAYLOAD_BYTES must be positive, got -1"),
    ],
)
def test_bad_setting_values_are_usage_errors_naming_the_variable(tmp_path, args, env, message):
    out = gleanpipe(*args, "--data-dir", str(tmp_path / "data"), env=env)
    assert out.returncode == 2, out.stderr
    assert f"Error: {message}" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "data" / "warehouse.duckdb").exists()  # refused before anything was opened


def test_flag_values_get_the_checks_of_their_variable():
    from gleanpipe.config import Config

    with pytest.raises(ValueError, match="GLEANPIPE_WORKERS must be positive, got -1"):
        Config.from_env(environ={}, workers=-1)
    with pytest.raises(ValueError, match="GLEANPIPE_PORT must be at most 65535, got 65536"):
        Config.from_env(environ={}, port=65536)
    cfg = Config.from_env(environ={}, port=65535, workers=1, load_batch=1)
    assert (cfg.port, cfg.workers, cfg.load_batch) == (65535, 1, 1)
