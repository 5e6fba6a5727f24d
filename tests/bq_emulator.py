"""pytest plugin: a real bqemulator process on a free loopback port, for BigQuery tests.

bqemulator (DuckDB + SQLGlot behind the BigQuery REST API) lives in its own virtualenv,
``.venv-bqemu`` next to the checkout, which ``make test`` creates (see the Makefile step
``bqemu``): it pins its own DuckDB with the ``spatial`` extension installed from a PyPI
file, and it registers a pytest plugin that must stay out of the test venv.
Set ``GLEANPIPE_BQEMULATOR`` to another ``bqemulator`` executable to use that one. The process
is started by ``gleanpipe.emulate.bqemulator``, the launcher `make emulate` uses.

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

import uuid

import pytest

from gleanpipe import emulate
from gleanpipe.emulate import EmulatorError, Process


class BQEmulator:
    """One running bqemulator: REST on 127.0.0.1:<port>, in memory (ephemeral)."""

    def __init__(self, proc: Process):
        self.proc, self.port, self.log_path = proc, proc.port, proc.log_path
        self.endpoint = proc.url

    def read_log(self) -> str:
        return self.proc.read_log()

    def client(self, project: str):
        """A google-cloud-bigquery client for this emulator (anonymous, no retries worth waiting for)."""
        from gleanpipe.warehouse.bigquery import make_client

        return make_client(project, "US", self.endpoint)

    def stop(self) -> None:
        self.proc.stop()


@pytest.fixture(scope="session")
def bq_emulator(tmp_path_factory):
    try:
        proc = emulate.bqemulator(tmp_path_factory.mktemp("bqemulator"), project="test")
    except EmulatorError as exc:
        pytest.skip(f"{exc} (`make test` runs it)")
    emu = BQEmulator(proc.start(timeout=60))
    yield emu
    emu.stop()


@pytest.fixture
def bq_project(bq_emulator) -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def bq_warehouse_url(bq_emulator, bq_project, monkeypatch) -> str:
    monkeypatch.setenv("GLEANPIPE_BIGQUERY_ENDPOINT", bq_emulator.endpoint)
    return f"bigquery://{bq_project}/US"
