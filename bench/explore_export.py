#!/usr/bin/env python
"""How long `gleanpipe explore` takes to export the warehouse to SQLite (see README "Explore").

    .venv/bin/python bench/explore_export.py [--pings 100000]

Seeds the store with realistic pings (bench/run.py's generator: baseline, metrics, events with
event rows), loads them with `gleanpipe replay`, then times `gleanpipe explore --export-only`:
  1. from the DuckDB file (no server), fresh;
  2. again with nothing changed (fingerprints only);
  3. through a running `gleanpipe serve` (admin API, keyset pages), --force.
Prints one line per run and the size of the SQLite files.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (the ping generator and helpers of `make bench`)

from gleanpipe.admin import AdminClient  # noqa: E402


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {out.stderr}")
    return time.monotonic() - t0, out.stdout.splitlines()[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pings", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gleanpipe-explore-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data, env = tmp / "data", bench.clean_env(tmp)
        procs = len(os.sched_getaffinity(0))
        t0 = time.monotonic()
        with multiprocessing.Pool(procs) as pool:
            pool.starmap(bench.seed, [(i, procs, args.pings // procs + (i < args.pings % procs), str(data / "store"))
                                      for i in range(procs)])
        subprocess.run([bench.GLEANPIPE, "replay", "--data-dir", str(data), "--no-progress"], env=env, check=True,
                       capture_output=True)
        print(f"seeded and loaded {args.pings:,} pings in {time.monotonic() - t0:.0f} s", flush=True)
        explore = [bench.GLEANPIPE, "explore", "--data-dir", str(data), "--export-only"]
        results = []
        seconds, line = timed(explore, env)
        results.append(("from the DuckDB file, fresh", seconds, line))
        seconds, line = timed(explore, env)
        results.append(("again, nothing changed", seconds, line))
        port = bench.free_port()
        serve = subprocess.Popen([bench.GLEANPIPE, "serve", "--data-dir", str(data), "--port", str(port)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not AdminClient.find(data) and time.monotonic() < deadline:
                time.sleep(0.1)
            seconds, line = timed(explore + ["--force"], env)
            results.append(("through a running serve, --force", seconds, line))
        finally:
            serve.terminate()
            serve.wait(30)
        size = sum(p.stat().st_size for p in (data / "explore").glob("*.db"))
        # Datasette on the exported files: time until a table page of the biggest table answers
        port = bench.free_port()
        t0 = time.monotonic()
        ds = subprocess.Popen(explore[:-1] + ["--no-open", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/{bench.DATASET}/events_stream_v1.json?_size=100"
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=60) as resp:
                        resp.read()
                    break
                except (urllib.error.URLError, ConnectionError):
                    if time.monotonic() - t0 > 300:
                        raise SystemExit("Datasette did not answer within 300 s")
                    time.sleep(0.2)
            results.append(("explore (unchanged) until Datasette serves a page", time.monotonic() - t0, url))
        finally:
            ds.terminate()
            ds.wait(30)
        for name, seconds, line in results:
            print(f"{name:50s} {seconds:6.1f} s  ({line})")
        print(f"SQLite files: {size / 1e6:.0f} MB; machine: {bench.machine()}")


if __name__ == "__main__":
    main()
