"""Informational only: BigQuery warehouse write speed against bqemulator (not BigQuery).

Starts bqemulator from .venv-bqemu (`make bqemu`), loads real-shaped pings through the same
Loader as every trigger, one ping per write (as the load function does, one object per event)
and in batches, and prints rows/s. The emulator is DuckDB behind a REST API on this machine,
so these figures say nothing about BigQuery's own streaming speed.

    .venv/bin/python bench/bigquery_emulator.py [N]
"""

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_ping  # noqa: E402
from test_load import FULL_METRICS, EVENTS, put_ping  # noqa: E402

from gleanpipe import emulate  # noqa: E402
from gleanpipe.load import Loader, prepare  # noqa: E402
from gleanpipe.storage.local import LocalStore  # noqa: E402
from gleanpipe.warehouse import open_warehouse  # noqa: E402


def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gleanpipe-bqbench-"))
    emu = emulate.bqemulator(tmp).start()
    os.environ["GLEANPIPE_BIGQUERY_ENDPOINT"] = emu.url
    try:
        store = LocalStore(tmp / "store")
        keys = [put_ping(store, make_ping(str(uuid.uuid4()), metrics=FULL_METRICS, events=EVENTS))
                for _ in range(n)]
        prepared = prepare(store, keys)  # reading and transforming is not what is measured
        wh = open_warehouse(f"bigquery://bench-{uuid.uuid4().hex[:8]}/US")
        loader = Loader(store, wh)
        loader.write(prepare(store, keys[:1]))  # creates the tables and views
        for batch in (1, 100, 500):
            rows = prepared.rows[: min(n, max(batch * 20, 200))]
            t0 = time.perf_counter()
            for i in range(0, len(rows), batch):
                wh.write(rows[i:i + batch], [])
            dt = time.perf_counter() - t0
            print(f"batch {batch:>4}: {len(rows):>5} pings (+{2 * len(rows)} events_stream rows) in {dt:6.2f} s = "
                  f"{len(rows) / dt:7.0f} pings/s")
        wh.close()
    finally:
        emu.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10000)
