"""The Makefile's Python check, run as a user runs make: an older python3 (Ubuntu 22.04 has
3.10) gets one line saying what to do, before any virtualenv is made, instead of pip failing
to resolve the pinned versions."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def make(goal: str, python: str, tmp_path: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", goal, f"PYTHON={python}", f"VENV={tmp_path / 'venv'}",
                           f"BQEMU={tmp_path / 'bqemu'}"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=env)


def older_python() -> tuple[str, str] | None:
    """(path, `--version` output) of a real interpreter older than 3.11 on this machine, or None.
    pyenv keeps its versions out of PATH, and its shims answer for versions that are not active."""
    candidates = sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.*/bin/python3.[0-9]*")))
    candidates += [p for n in ("python3.10", "python3.9") if (p := shutil.which(n))]
    for path in candidates:
        if not re.fullmatch(r"python3\.([0-9]|10)", Path(path).name):
            continue
        out = subprocess.run([path, "--version"], capture_output=True, text=True)
        if out.returncode == 0 and re.fullmatch(r"Python 3\.([0-9]|10)\.\d+", out.stdout.strip()):
            return path, out.stdout.strip()
    return None


def test_make_run_with_python_3_10_says_what_to_do_and_makes_no_venv(tmp_path):
    found = older_python()
    if found is None:
        pytest.skip("no Python older than 3.11 on this machine")
    old, version = found

    result = make("run", old, tmp_path)

    assert result.returncode == 2
    assert (f"gleanpipe needs Python 3.11 or newer, and '{old}' is {version}. "
            "Give make a newer one: make run PYTHON=python3.12") in result.stderr
    assert not (tmp_path / "venv").exists()


def test_make_test_with_a_python_that_is_not_there_says_so(tmp_path):
    missing = tmp_path / "no-such-python"

    result = make("test", str(missing), tmp_path)

    assert result.returncode == 2
    assert (f"gleanpipe needs Python 3.11 or newer, and '{missing}' is not found. "
            "Give make a newer one: make test PYTHON=python3.12") in result.stderr
    assert not (tmp_path / "venv").exists() and not (tmp_path / "bqemu").exists()


def test_make_with_a_python_whose_interpreter_is_gone_quotes_it_and_makes_no_venv(tmp_path):
    """A python that is there but does not run (a script whose interpreter was removed): before, make
    said "'X' is /bin/sh: 1: X: not found not found. Give make a newer one", as if it were too old."""
    gone = tmp_path / "python3.13"
    gone.write_text(f"#!{tmp_path / 'removed' / 'python3.13'}\n")
    gone.chmod(0o755)

    result = make("run", str(gone), tmp_path)

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"gleanpipe needs Python 3.11 or newer, and '{gone}' does not run (exit status 127); it says:"
    assert lines[1].startswith("    ") and str(gone) in lines[1] and "not found" in lines[1]
    assert lines[2] == "Give make one that runs: make run PYTHON=python3.12"
    assert not (tmp_path / "venv").exists()


def test_make_with_a_pyenv_shim_of_a_version_not_made_active_quotes_pyenv(tmp_path):
    """pyenv puts a shim for every version it has on PATH (python3.12, python3.13), and one whose
    version `pyenv global`, `shell` or `local` has not made active says "pyenv: python3.13: command
    not found" and which versions have it, exit 127. Before, make said "'python3.13' is pyenv:
    python3.13: command not found [...] not found. Give make a newer one: make test PYTHON=python3.12".
    The real shim, with PYENV_VERSION naming another installed version."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    have = {p.name: p.parent.parent.name for p in root.glob("versions/3.*/bin/python3.[0-9]*")
            if re.fullmatch(r"python3\.\d+", p.name)}  # command -> a version that has it
    versions = sorted({v.parent.parent.name for v in root.glob("versions/3.*/bin/python3")})
    pairs = [(cmd, other) for cmd, own in sorted(have.items()) for other in versions
             if other != own and not (root / "versions" / other / "bin" / cmd).exists()]
    if not (root / "shims").is_dir() or not pairs:
        pytest.skip("no pyenv with two Python versions here")
    command, other = pairs[0]
    env = {**os.environ, "PATH": f"{root / 'shims'}:{os.environ['PATH']}", "PYENV_VERSION": other}

    result = make("test", command, tmp_path, env=env)

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"gleanpipe needs Python 3.11 or newer, and '{command}' does not run (exit status 127); it says:"
    assert lines[1] == f"    pyenv: {command}: command not found"
    assert f"    The `{command}' command exists in these Python versions:" in lines
    assert lines[-2] == "Give make one that runs: make test PYTHON=python3.12"
    assert not (tmp_path / "venv").exists() and not (tmp_path / "bqemu").exists()


@pytest.mark.parametrize("goal", ["bqemu", "constraints"])
def test_the_other_goals_that_make_a_venv_check_the_python_first(tmp_path, goal):
    """`make bqemu` (bqemulator's own venv) and `make constraints` (a scratch venv) ask the
    interpreter too; without the check make said "/missing: No such file or directory" (127)."""
    missing = tmp_path / "no-such-python"

    result = make(goal, str(missing), tmp_path)

    assert result.returncode == 2, result.stderr
    assert (f"gleanpipe needs Python 3.11 or newer, and '{missing}' is not found. "
            f"Give make a newer one: make {goal} PYTHON=python3.12") in result.stderr
    assert not (tmp_path / "venv").exists() and not (tmp_path / "bqemu").exists()


def test_the_makefile_asks_for_the_python_pyproject_requires():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    checked = re.search(r"sys\.version_info < \((\d+), (\d+)\)", (ROOT / "Makefile").read_text())
    assert requires == f">={checked[1]}.{checked[2]}" == ">=3.11"


def test_a_test_that_hangs_fails_after_the_suites_timeout_and_the_run_goes_on(tmp_path):
    """pyproject's `timeout` (pytest-timeout) with the suite's own options: a hung test fails with
    "Timeout" and the tests after it still run, where a hang held CI until its 90 minutes ran out.
    The suite's 300 s is lowered to 2 here with -o, so that only the mechanism is under test."""
    (tmp_path / "test_hang.py").write_text(
        "import threading, time\n"
        "def test_hangs():\n    threading.Event().wait()\n"
        "def test_after():\n    assert True\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
                          "-p", "no:cacheprovider", "-o", "timeout=2", "-q", str(tmp_path / "test_hang.py")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout
    assert "Failed: Timeout (>2.0s) from pytest-timeout" in out.stdout and "1 failed, 1 passed" in out.stdout, out.stdout
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["timeout"] == 300


SUBPROCESS_CALLS = ("subprocess.run", "subprocess.check_output", "subprocess.check_call", "subprocess.call")


def _marked_timeout(func) -> float | None:
    """The seconds of a ``@pytest.mark.timeout(N)`` on ``func`` (an ast.FunctionDef), or None."""
    import ast

    for deco in func.decorator_list:
        if (isinstance(deco, ast.Call) and ast.unparse(deco.func) == "pytest.mark.timeout" and deco.args
                and isinstance(deco.args[0], ast.Constant)):
            return deco.args[0].value
    return None


def test_no_test_allows_itself_longer_than_the_suites_timeout_unless_marked_so():
    """A test's own limit (`subprocess.run(..., timeout=600)` for the quick benchmark) over the
    suite's 300 s is a duration its author allowed for: the suite's timeout cut it at 300 s with a
    bare "Timeout", before the test's own, clearer failure (the benchmark's stderr). Such a test
    carries a `@pytest.mark.timeout` above its own limit."""
    import ast

    suite = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["timeout"]
    over = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for func in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(func, ast.FunctionDef) and func.name.startswith("test_")):
                continue
            allowed = _marked_timeout(func) or suite
            for node in ast.walk(func):  # a command's limit, in seconds (Playwright's timeout= is in ms)
                if not (isinstance(node, ast.Call) and ast.unparse(node.func) in SUBPROCESS_CALLS):
                    continue
                for kw in node.keywords:
                    if (kw.arg == "timeout" and isinstance(kw.value, ast.Constant)
                            and isinstance(kw.value.value, (int, float)) and kw.value.value > allowed):
                        over.append(f"{path.name}::{func.name}: timeout={kw.value.value}, allowed {allowed}")
    assert over == []
