"""pytest plugin: a real bqemulator process on a free loopback port, for BigQuery tests.

bqemulator (DuckDB + SQLGlot behind the BigQuery REST API) lives in its own virtualenv,
``.venv-bqemu`` next to the checkout, which ``make test`` creates (see the Makefile step
``bqemu``): it pins its own DuckDB with the ``spatial`` extension installed from a PyPI
file, and it registers a pytest plugin that must stay out of the test venv.
Set ``GLEANPIPE_TEST_BQEMULATOR`` to another ``bqemulator`` executable to use that one.

Fixtures (registered through ``pytest_plugins`` in conftest.py):

- ``bq_emulator`` (session): the running emulator, a :class:`BQEmulator`. Started once per
  test session (about 2-4 s), stopped with SIGTERM at the end (SIGKILL after 10 s).
  Tests are skipped, with the reason, if the emulator venv is missing.
- ``bq_project`` (function): a fresh project id on that emulator (``test-<hex>``), so
  tests never see each other's datasets.
- ``bq_warehouse_url`` (function): ``bigquery://<that project>/US`` with the emulator's
  endpoint in ``GLEANPIPE_BIGQUERY_ENDPOINT`` (monkeypatched), ready for
  ``open_warehouse`` or for a subprocess that inherits ``os.environ``.

Reuse for an end-to-end test: depend on ``bq_warehouse_url`` and run ``load`` (in process or
under functions-framework with ``os.environ``) with ``GLEANPIPE_WAREHOUSE_URL`` set to it;
then read rows with ``bq_emulator.client(project)`` or ``open_warehouse(url).query(sql)``.

What the emulator does not do like BigQuery (see ../shared/docs/emulators.md): schema
widening through ``update_table`` changes only metadata, insertId dedupe is absent, DML
on just-streamed rows is allowed, unknown fields are dropped silently. Tests that depend on
those say so and cover the code path another way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXE = ROOT / ".venv-bqemu" / "bin" / "bqemulator"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BQEmulator:
    """One bqemulator process: REST on 127.0.0.1:<port>, in memory (ephemeral)."""

    def __init__(self, exe: Path, log_path: Path):
        self.exe = exe
        self.log_path = log_path
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "BQEmulator":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.exe), "start", "--rest-host", "127.0.0.1", "--rest-port", str(self.port),
             "--grpc-host", "127.0.0.1", "--grpc-port", str(_free_port()), "--ephemeral",
             "--project", "test", "--log-level", "warning"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bqemulator exited with {self.proc.returncode}: {self.read_log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/bigquery/v2/projects/test/datasets", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"bqemulator did not answer within {timeout} s: {self.read_log()[-2000:]}")

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, project: str):
        """A google-cloud-bigquery client for this emulator (anonymous, no retries worth waiting for)."""
        from gleanpipe.warehouse.bigquery import make_client

        return make_client(project, "US", self.endpoint)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()


@pytest.fixture(scope="session")
def bq_emulator(tmp_path_factory):
    exe = Path(os.environ.get("GLEANPIPE_TEST_BQEMULATOR") or DEFAULT_EXE)
    if not exe.exists():
        pytest.skip(f"bqemulator not installed at {exe} (run `make bqemu`, or `make test` which does it)")
    emu = BQEmulator(exe, tmp_path_factory.mktemp("bqemulator") / "bqemulator.log").start()
    yield emu
    emu.stop()


@pytest.fixture
def bq_project(bq_emulator) -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def bq_warehouse_url(bq_emulator, bq_project, monkeypatch) -> str:
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_ENDPOINT", bq_emulator.endpoint)
    return f"bigquery://{bq_project}/US"
