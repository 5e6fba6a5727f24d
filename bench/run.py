"""gleanpipe benchmarks: submit throughput (real vs trivial WSGI app under the same gunicorn),
replay throughput, and 200 -> queryable latency of `gleanpipe serve`. See bench/README.md.

    .venv/bin/python bench/run.py [--quick] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse, gzip, http.client, importlib.metadata as md, multiprocessing, os, platform, random, re
import shutil, signal, socket, subprocess, sys, tempfile, threading, time, uuid
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

import orjson

from gleanpipe import rawobject
from gleanpipe.admin import AdminClient
from gleanpipe.config import Config
from gleanpipe.emulate import free_port
from gleanpipe.naming import DocumentPath
from gleanpipe.serve import gunicorn_args
from gleanpipe.storage.local import LocalStore

BENCH = Path(__file__).resolve().parent
FUNCTIONS = BENCH.parent / "functions"
# Where the runs keep their stores and warehouses: the checkout's build/ folder, on the file
# system of ./data, where `make run` keeps a user's pings ($TMPDIR is tmpfs on many systems,
# and an fdatasync there costs nothing). GLEANPIPE_BENCH_DIR picks another disk to measure.
DATA_ROOT = Path(os.environ.get("GLEANPIPE_BENCH_DIR") or BENCH.parent / "build" / "bench")
PY, GLEANPIPE = sys.executable, str(Path(sys.executable).parent / "gleanpipe")
APP, DATASET, AGENT = "org-example-bench", "org_example_bench", "Glean/60.1.0 (Rust on Linux)"
_DEFAULTS = Config.from_env(environ={})
SPOOL_ARGS = gunicorn_args(_DEFAULTS, spool=True)[1:]  # as `gleanpipe serve` starts gunicorn (serve.py)
DIRECT_ARGS = gunicorn_args(_DEFAULTS, spool=False)[1:]  # ... and with GLEANPIPE_SPOOL=off
ROUNDS = 3  # edge and trivial alternate this many times; the ratio is the median of the rounds
THREADS, CONNS = 2, 32
WRK: str | None = None

# --- realistic Glean pings ---------------------------------------------------------------------


def new_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def make_client(rng: random.Random) -> dict:
    os_name, os_version, arch = rng.choice([("Windows", "10.0", "x86_64"), ("Darwin", "23.4.0", "aarch64"),
                                            ("Linux", "6.5.0", "x86_64"), ("Android", "14", "arm64-v8a")])
    return {"app_build": f"2024{rng.randint(1, 12):02d}0112", "architecture": arch, "os": os_name,
            "app_channel": rng.choice(["release"] * 6 + ["beta", "nightly"]), "os_version": os_version,
            "app_display_version": f"12{rng.randint(3, 6)}.0.{rng.randint(0, 3)}", "client_id": new_uuid(rng),
            "build_date": "1970-01-01T00:00:00+00:00", "first_run_date": f"2024-0{rng.randint(1, 9)}-15+00:00",
            "locale": rng.choice(["en-US", "de", "fr", "es-ES", "ja"]), "telemetry_sdk_build": "60.1.0"}


def distribution(rng: random.Random, lo: int, n: int) -> dict:
    values = {str(int(lo * 1.2 ** i)): rng.randint(1, 40) for i in range(rng.randint(n // 2, n))}
    return {"sum": sum(int(k) * v for k, v in values.items()), "values": values}


def make_ping(rng: random.Random, doc_type: str, client: dict, seq: int, n_events: int = 0) -> dict:
    end = datetime(2024, 6, 1, tzinfo=timezone.utc) + timedelta(minutes=rng.randint(0, 60 * 24 * 30))
    fmt = lambda t: t.strftime("%Y-%m-%dT%H:%M+00:00")
    ping = {"client_info": client, "ping_info": {
        "seq": seq, "start_time": fmt(end - timedelta(minutes=rng.randint(1, 600))), "end_time": fmt(end),
        "reason": rng.choice(["active", "inactive"] if doc_type == "baseline" else ["max_capacity", "today"]),
        "experiments": {"new-toolbar": {"branch": rng.choice(["control", "treatment"]),
                                        "extra": {"type": "nimbus-nimbus", "enrollment_id": new_uuid(rng)}}}}}
    m: dict = {"timespan": {"glean.baseline.duration": {"time_unit": "second", "value": rng.randint(1, 9000)}},
               "labeled_counter": {"glean.validation.pings_submitted": {"baseline": rng.randint(1, 9), "metrics": 1}}}
    if doc_type == "metrics":
        m.update({"boolean": {"browser.default": rng.random() < 0.4, "toolbox.dark_mode_enabled": rng.random() < 0.2},
                  "counter": {"browser.engagement.uri_count": rng.randint(0, 500), "toolbox.runs": rng.randint(0, 50)},
                  "quantity": {"toolbox.open_windows": rng.randint(1, 12)},
                  "string": {"search.default_engine": rng.choice(["google", "ddg", "bing"])},
                  "uuid": {"legacy.telemetry_client_id": new_uuid(rng)},
                  "datetime": {"glean.validation.first_run_hour": fmt(end)},
                  "string_list": {"addons.enabled": rng.sample(["ublock", "darkreader", "bitwarden", "vimium"], 2)},
                  "rate": {"network.cache_hit_rate": {"numerator": rng.randint(0, 90), "denominator": 100}},
                  "timing_distribution": {"perf.page_load": distribution(rng, 1_000_000, 14),
                                          "perf.startup": distribution(rng, 50_000_000, 8)},
                  "memory_distribution": {"memory.total": distribution(rng, 1024, 10)}})
        m["labeled_counter"]["browser.search.counts"] = {f"{e}.urlbar": rng.randint(0, 30) for e in ("google", "ddg")}
        if rng.random() < 0.3:
            m["labeled_counter"]["toolbox.crashes"] = {"content": rng.randint(1, 3), "gpu": rng.randint(0, 2)}
    ping["metrics"] = m if doc_type != "events" else {}
    t = rng.randint(0, 10_000)
    for _ in range(n_events):
        t += rng.randint(10, 60_000)
        ping.setdefault("events", []).append({
            "category": "toolbox", "name": rng.choice(["tool_opened", "tool_closed", "search"]), "timestamp": t,
            "extra": {"tool": rng.choice(["ruler", "picker", "grid"]), "glean_timestamp": str(1717200000000 + t)}})
    return ping


def store_ping(store: LocalStore, rng: random.Random, doc_type: str, ping: dict, received: datetime) -> None:
    """Store a ping the way the submit edge (http_edge.py) does, without HTTP."""
    payload, p = orjson.dumps(ping), DocumentPath(APP, doc_type, "1", new_uuid(rng))
    meta = {"submission_timestamp": received.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "uri": f"/submit/{APP}/{p.key[4:-5]}",
            "headers": {"date": received.strftime("%a, %d %b %Y %H:%M:%S GMT"), "x_telemetry_agent": AGENT,
                        "x_debug_id": None, "x_source_tags": None, "user_agent": None,
                        "content_length": str(len(gzip.compress(payload, 1)))},
            "content_encoding": "gzip", "app_id": APP, "doc_type": doc_type, "version": "1",
            "document_id": p.document_id, "key": p.key}
    store.put_new(p.key, rawobject.encode(meta, payload), notify=False)


# --- processes, load --------------------------------------------------------------------------


def clean_env(tmp: Path, **extra) -> dict:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}, "TMPDIR": str(tmp), **extra}


@contextmanager
def process(cmd: list[str], env: dict, **kw):
    """Run cmd in its own process group, which is always gone on exit."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_http(port: int, proc, timeout: float = 30) -> None:
    """Until the workers answer a few GETs (404 from gleanpipe: nothing stored; 200 from the trivial app)."""
    deadline, answered = time.monotonic() + timeout, 0
    while answered < 10:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server on port {port} did not come up (exit code {proc.poll()})")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/submit/warmup")
            c.getresponse().read()
            c.close()
            answered += 1
        except OSError:
            time.sleep(0.05)


def cpu_snapshot(*roots: int) -> list[float]:
    """CPU seconds: busy on the whole machine, then used by each root's process tree (reaped children too)."""
    procs = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            f = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        procs[int(d)] = (int(f[1]), sum(map(int, f[11:15])))  # ppid, utime + stime + cutime + cstime
    tree = lambda pid: procs.get(pid, (0, 0))[1] + sum(tree(c) for c, (pp, _) in procs.items() if pp == pid)
    cpu, hz = [int(x) for x in Path("/proc/stat").read_text().split()[1:8]], os.sysconf("SC_CLK_TCK")
    return [(sum(cpu) - cpu[3] - cpu[4]) / hz] + [tree(r) / hz for r in roots]  # not idle, iowait, steal, guest


@contextmanager
def other_load(res: dict, *roots: int):
    """res["other"]: cores used by processes outside this run (other jobs on the machine) meanwhile;
    res["cpu"]: CPU seconds of each root's tree."""
    t0, before = time.monotonic(), cpu_snapshot(os.getpid(), *roots)
    yield
    after = cpu_snapshot(os.getpid(), *roots)
    busy, *trees = [b - a for a, b in zip(before, after)]
    res.update(other=max(0.0, busy - trees[0]) / (time.monotonic() - t0), cpu=trees[1:])


def ensure_wrk() -> str | None:
    if not shutil.which("wrk") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk missing: apt-get install -y wrk", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True, timeout=300)
    return shutil.which("wrk")


def _py_load(port: int, body: bytes, seconds: float) -> tuple[int, int]:
    """Fallback load generator: CONNS // THREADS keep-alive connections in threads of one process."""
    out, until = [], time.monotonic() + seconds

    def conn_loop():
        conn, rng, ok, bad = http.client.HTTPConnection("127.0.0.1", port, timeout=10), random.Random(), 0, 0
        while time.monotonic() < until:
            try:
                conn.request("POST", f"/submit/{APP}/metrics/1/{new_uuid(rng)}", body, headers())
                r = conn.getresponse()
                r.read()
                ok, bad = (ok + 1, bad) if 200 <= r.status < 300 else (ok, bad + 1)
            except OSError:
                bad += 1
                conn.close()
        out.append((ok, bad))

    ts = [threading.Thread(target=conn_loop) for _ in range(CONNS // THREADS)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    return sum(o for o, _ in out), sum(b for _, b in out)


def headers() -> dict:
    return {"Content-Type": "application/json; charset=utf-8", "Content-Encoding": "gzip", "X-Telemetry-Agent": AGENT,
            "Date": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())}


def drive(port: int, body_file: Path, seconds: int) -> dict:
    """Load the server for `seconds`: {sent, ok, bad, sockerr, rps}. wrk, else Python processes."""
    if WRK:
        cmd = [WRK, f"-t{THREADS}", f"-c{CONNS}", f"-d{seconds}s", "--timeout", "10s", "-s", str(BENCH / "submit.lua"),
               f"http://127.0.0.1:{port}/"]
        out = subprocess.run(cmd, env={**os.environ, "BENCH_BODY": str(body_file)}, capture_output=True, text=True,
                             timeout=seconds + 60).stdout
        r = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", out.split("BENCH", 1)[1])}
        return {**r, "rps": r["requests"] / (r["duration_us"] / 1e6)}
    t0 = time.monotonic()
    with multiprocessing.Pool(THREADS) as pool:
        res = pool.starmap(_py_load, [(port, body_file.read_bytes(), seconds)] * THREADS)
    ok, bad = sum(r[0] for r in res), sum(r[1] for r in res)
    return {"sent": ok + bad, "ok": ok, "bad": bad, "sockerr": 0, "rps": (ok + bad) / (time.monotonic() - t0)}


def gunicorn_child(pid: int) -> int:
    """The gunicorn master that `gleanpipe serve` (pid) started."""
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and "gunicorn" in Path(f"/proc/{d}/cmdline").read_text():
            return int(d)
    raise RuntimeError("gleanpipe serve has no gunicorn child")


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


# --- the three benchmarks ----------------------------------------------------------------------


def bench_submit(tmp: Path, seconds: int, rounds: int, res: dict) -> None:
    """Four servers, same load, each on a fresh data dir:
    - "edge": gunicorn `gleanpipe.wsgi:spool_app` plus bench/drain_spool.py turning the spool into
      raw objects as serve does (the submit function's whole job: a ping in, a durable object out);
    - "trivial": `trivial_app:app` under the same gunicorn settings. Edge and trivial alternate
      `rounds` times, so a slow spell of the machine hits both; each round gives a ratio;
    - "real": `gleanpipe serve` itself, whose loader also loads every ping into DuckDB meanwhile;
    - "direct": gunicorn `gleanpipe.wsgi:app`, one fsynced object per ping (the submit function),
      with the settings serve uses for GLEANPIPE_SPOOL=off."""
    rng = random.Random(1)
    ping = make_ping(rng, "metrics", make_client(rng), 7, n_events=4)
    (body_file := tmp / "ping.json.gz").write_bytes(gzip.compress(orjson.dumps(ping)))
    res["body_bytes"], res["commands"] = body_file.stat().st_size, {}
    run = lambda label, name, app, args: _submit_run(tmp / f"submit-{label}", name, app, args, body_file, seconds,
                                                     res["commands"])
    res["rounds"] = [{name: run(f"{i}-{name}", name, app, SPOOL_ARGS)  # edge first, then trivial
                      for name, app in (("edge", "gleanpipe.wsgi:spool_app"), ("trivial", "trivial_app:app"))}
                     for i in range(rounds)]
    res["real"] = run("real", "real", None, None)
    res["direct"] = run("direct", "direct", "gleanpipe.wsgi:app", DIRECT_ARGS)
    # the deployable submit function and a trivial function under functions-framework's own server
    res["fn_rounds"] = [{name: run(f"{i}-{name}", name, f"functions:{source}:{target}", None)
                         for name, source, target in (("function", FUNCTIONS / "main.py", "submit"),
                                                      ("trivial function", BENCH / "trivial_function.py", "trivial"))}
                        for i in range(rounds)]
    for pairs, real_name, base_name, prefix in ((res["rounds"], "edge", "trivial", ""),
                                                (res["fn_rounds"], "function", "trivial function", "fn_")):
        for r in pairs:
            r["ratio"] = r[real_name]["rps"] / r[base_name]["rps"]
        middle = sorted(pairs, key=lambda r: r["ratio"])[len(pairs) // 2]
        res[prefix + real_name.replace(" ", "_")], res[prefix + base_name.replace(" ", "_")] = (middle[real_name],
                                                                                             middle[base_name])
        res[prefix + "ratio"] = middle["ratio"]


def _submit_run(data: Path, name: str, app: str | None, args: list[str] | None, body_file: Path, seconds: int,
                commands: dict) -> dict:
    port = free_port()
    env = clean_env(data.parent, GLEANPIPE_DATA_DIR=str(data), GLEANPIPE_STORE_URL=f"file://{data / 'store'}")
    if app is None:  # serve starts gunicorn itself (serve.gunicorn_args)
        cmd = [GLEANPIPE, "serve", "--data-dir", str(data), "--port", str(port)]
        commands[name] = " ".join(["gleanpipe", *cmd[1:]]).replace(str(data), f"$TMP/{data.name}")
    elif app.startswith("functions:"):  # functions-framework runs gunicorn in its own process, with its defaults
        _, source, target = app.split(":")
        cmd = [str(Path(PY).parent / "functions-framework"), "--source", source, "--target", target,
               "--host", "127.0.0.1", "--port", str(port)]
        commands[name] = " ".join(["functions-framework", *cmd[1:]]).replace(str(BENCH.parent) + "/", "")
    else:
        cmd = [PY, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{port}", "--pythonpath", str(BENCH), *args]
        commands[name] = " ".join(["python", *cmd[1:]]).replace(str(BENCH), "bench")
    drain = [PY, str(BENCH / "drain_spool.py"), str(data / "store")] if name == "edge" else None
    with process(cmd, env, stdout=subprocess.DEVNULL) as proc, \
            (process(drain, env, stdout=subprocess.PIPE, text=True) if drain else nullcontext()) as drainer:
        wait_http(port, proc)
        print(f"submit: {name} app, {seconds} s of load ...", flush=True)
        roots = [proc.pid] + ([gunicorn_child(proc.pid)] if app is None else []) + ([drainer.pid] if drain else [])
        with other_load(x := {}, *roots):
            x.update(drive(port, body_file, seconds))
        per_ping = lambda cpu_s: 1000 * cpu_s / max(1, x["sent"])
        x["cpu_ms"] = per_ping(x["cpu"][0])
        if app is None:  # serve's tree holds its gunicorn: split HTTP workers / serve's own process
            x["http_ms"] = per_ping(x["cpu"][1])
        if drain:  # gunicorn's tree, then the drainer's
            x.update(http_ms=per_ping(x["cpu"][0]), cpu_ms=per_ping(x["cpu"][0] + x["cpu"][1]))
        t0 = time.monotonic()
        if app is None:  # how long until every accepted ping is a row (the loader may lag the edge)
            admin, rows = AdminClient.find(data), 0
            while time.monotonic() < t0 + 120:
                rows = admin.query(f"SELECT count(*) FROM {DATASET}.metrics_v1")[1][0][0]
                if rows >= x["ok"] and not admin.call("/status").get("pending"):
                    break
                time.sleep(0.05)
            x.update(drain_s=time.monotonic() - t0, rows=rows)
        proc.send_signal(signal.SIGINT if app is None else signal.SIGTERM)  # graceful: in-flight requests finish
        proc.wait(30)
        if drain:  # the workers are gone: the drainer finishes their segments, then exits
            drainer.send_signal(signal.SIGTERM)
            x["drain_out"] = drainer.communicate(timeout=120)[0].strip()
            x["drain_s"] = time.monotonic() - t0
    x["objects"], x["rejected"] = (count_files(data / f"store/{d}") for d in ("raw", "errors"))
    x["spool_left"] = count_files(data / "store/.spool") if (data / "store/.spool").exists() else 0
    return x


def seed(part: int, parts: int, n: int, store_root: str) -> dict:
    """Write n pings of clients part, part + parts, ... (of 5,000) into the store; expected row counts."""
    rng, clients = random.Random(100 + part), [make_client(random.Random(c)) for c in range(5000)]
    store, seqs, start = LocalStore(store_root), {}, datetime.now(timezone.utc) - timedelta(days=1)
    expect = {"baseline_v1": 0, "metrics_v1": 0, "events_v1": 0, "events_stream": 0}
    with mock.patch.object(os, "fsync", lambda fd: None):  # seeding is not measured; one os.sync() after it
        for i in range(n):
            c = rng.randrange(part, len(clients), parts)
            doc_type = rng.choices(["baseline", "metrics", "events"], [5, 3, 2])[0]
            seqs[c, doc_type] = seq = seqs.get((c, doc_type), -1) + 1
            n_events = rng.randint(3, 12) if doc_type == "events" else 0
            ping = make_ping(rng, doc_type, clients[c], seq, n_events)
            store_ping(store, rng, doc_type, ping, start + timedelta(seconds=i))
            expect[f"{doc_type}_v1"] += 1
            expect["events_stream"] += n_events
    return expect


def bench_replay(tmp: Path, n: int, res: dict) -> None:
    data, t0, procs = tmp / "replay", time.monotonic(), len(os.sched_getaffinity(0))
    with multiprocessing.Pool(procs) as pool:  # creating files costs CPU (a lot on some disks): use every core
        parts = pool.starmap(seed, [(i, procs, n // procs + (i < n % procs), str(data / "store"))
                                    for i in range(procs)])
    expect = {t: sum(p[t] for p in parts) for t in parts[0]}
    os.sync()
    print(f"replay: seeded {n:,} pings in {time.monotonic() - t0:.1f} s; timing `gleanpipe replay` ...", flush=True)
    cmd, t0 = [GLEANPIPE, "replay", "--data-dir", str(data), "--no-progress"], time.monotonic()
    with other_load(res):
        out = subprocess.run(cmd, env=clean_env(tmp), capture_output=True, text=True, timeout=900)
    res.update(seconds=time.monotonic() - t0, n=n, output=(out.stdout + out.stderr).strip()[-300:], code=out.returncode,
               expect=expect, command=" ".join(["gleanpipe", *cmd[1:]]).replace(str(tmp), "$TMP"))
    sql = " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM {DATASET}.{t}" for t in expect)
    q = subprocess.run([GLEANPIPE, "query", "--data-dir", str(data), "--format", "json", sql],
                       env=clean_env(tmp), capture_output=True, text=True, timeout=120)
    res["got"] = {r["t"]: r["n"] for r in orjson.loads(q.stdout)} if q.returncode == 0 else {"error": q.stderr.strip()}


def bench_latency(tmp: Path, n: int, res: dict, rate: float = 100.0) -> None:
    data, rng, port = tmp / "serve", random.Random(3), free_port()
    clients = [make_client(rng) for _ in range(50)]
    pings = [make_ping(rng, "metrics", rng.choice(clients), i, rng.randint(0, 3)) for i in range(n)]
    pings = [(new_uuid(rng), gzip.compress(orjson.dumps(p))) for p in pings]
    cmd = [GLEANPIPE, "serve", "--data-dir", str(data), "--port", str(port)]
    res.update(command=" ".join(["gleanpipe", *cmd[1:]]).replace(str(tmp), "$TMP"), n=n)
    sent, seen, errors, stop = {}, {}, [], threading.Event()
    with process(cmd, clean_env(tmp), stdout=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 60
        while (admin := AdminClient.find(data)) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gleanpipe serve did not start (exit code {proc.poll()})")
            time.sleep(0.05)

        def poll() -> None:  # only rows after the last rowid seen (one writer, so rowids follow commits)
            last = -1
            while not stop.is_set():
                t = time.monotonic()
                try:
                    _, rows = admin.query(f"SELECT rowid, document_id FROM {DATASET}.metrics_v1 WHERE rowid > ?",
                                          [last])
                except (RuntimeError, OSError):  # no table before the first load
                    rows = []
                now = time.monotonic()
                for rowid, doc_id in rows:
                    seen.setdefault(doc_id, now)
                    last = max(last, rowid)
                stop.wait(max(0.0, 0.01 - (now - t)))

        threading.Thread(target=poll, daemon=True).start()
        print(f"latency: {n} pings at {rate:.0f}/s through `gleanpipe serve` ...", flush=True)
        with other_load(res):
            conn, t0 = http.client.HTTPConnection("127.0.0.1", port, timeout=10), time.monotonic()
            for i, (doc_id, body) in enumerate(pings):
                time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
                try:
                    conn.request("POST", f"/submit/{APP}/metrics/1/{doc_id}", body, headers())
                    r = conn.getresponse()
                    r.read()
                    (sent.__setitem__(doc_id, time.monotonic()) if r.status == 200 else errors.append(r.status))
                except OSError as exc:
                    errors.append(repr(exc))
                    conn.close()
        end = time.monotonic() + 10
        while time.monotonic() < end and not sent.keys() <= seen.keys():
            time.sleep(0.05)
        stop.set()
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        try:
            res["exit"] = proc.wait(30)
        except subprocess.TimeoutExpired:
            res["exit"] = "still running 30 s after SIGINT"
    lat = sorted((seen[d] - t) * 1000 for d, t in sent.items() if d in seen and seen[d] - t <= 10)
    pct = lambda p: lat[max(0, -(-p * len(lat) // 100) - 1)] if lat else float("nan")  # nearest rank
    res.update(ok=len(sent), errors=errors, never=len(sent) - len(lat), p50=pct(50), p99=pct(99), max=pct(100))


# --- report ------------------------------------------------------------------------------------


def file_system(path: Path) -> str:
    """'<type> on <device>' of the mount holding ``path`` (the longest mount point above it)."""
    best = ("?", "?", "")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, point, fstype = line.split()[:3]
        point = point.replace("\\040", " ")
        if (str(path.resolve()) + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(best[2]):
            best = (fstype, device, point)
    return f"{best[0]} on {best[1]}"


def machine() -> str:
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    mem = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 1024 ** 2
    wrk = subprocess.run([WRK, "-v"], capture_output=True, text=True).stdout.split(" [")[0] if WRK else "no wrk"
    return (f"{len(os.sched_getaffinity(0))} cores ({cpu.group(1) if cpu else platform.processor()}), "
            f"{mem:.1f} GiB RAM, {platform.system()} {platform.release()}; Python {platform.python_version()}, "
            f"duckdb {md.version('duckdb')}, gunicorn {md.version('gunicorn')}, {wrk}; "
            f"data on {file_system(DATA_ROOT)} ({DATA_ROOT})")


def report(quick: bool, seconds: int, s: dict, r: dict, lt: dict) -> str:
    edge, real, direct, triv = s["edge"], s["real"], s["direct"], s["trivial"]
    ratio, rate = s["ratio"], r["n"] / r["seconds"]
    rounds = "; ".join(f"{x['edge']['rps']:,.0f} / {x['trivial']['rps']:,.0f} = {x['ratio']:.2f}" for x in s["rounds"])
    fn = s["fn_function"]
    fn_rounds = "; ".join(f"{x['function']['rps']:,.0f} / {x['trivial function']['rps']:,.0f} = {x['ratio']:.2f}"
                          for x in s["fn_rounds"])
    in_flight = lambda x: x["sent"] - x["ok"] - x["bad"]
    mark = lambda ok: "PASS" if ok else "**MISS**"
    detail = lambda x: (f"**{x['rps']:,.0f} req/s** ({x['ok']:,} x 2xx, {x['bad']} non-2xx, {x['sockerr']} socket "
                        f"errors; server CPU {x['cpu_ms']:.2f} ms/req; other load {x['other']:.2f} cores)")
    stored = lambda x: (f"{x['objects']:,} objects; {x['ok']:,} x 2xx; {in_flight(x)} requests in flight when the "
                        f"load stopped; {x['rejected']} rejected")
    stored_ok = lambda x: x["ok"] <= x["objects"] <= x["ok"] + in_flight(x) and not x["bad"] and not x["rejected"]
    sustained = real["ok"] / (real["duration_us"] / 1e6 + real["drain_s"]) if "duration_us" in real else float("nan")
    got = " / ".join(f"{r['got'][t]:,}" if isinstance(r["got"].get(t), int) else "?" for t in r["expect"])
    rows = [
        ("submit: edge = gunicorn `gleanpipe.wsgi:spool_app` + spool-to-objects writer (bench/drain_spool.py)",
         detail(edge), ">= 1,500/s", mark(edge["rps"] >= 1500)),
        ("submit: trivial WSGI app", detail(triv), "-", ""),
        ("submit: ratio edge / trivial (median round; the edge and trivial rows are that round's)",
         f"**{ratio:.2f}** (rounds, edge / trivial req/s: {rounds})", ">= 0.5", mark(ratio >= 0.5)),
        ("submit: edge, CPU per ping by process", f"HTTP workers {edge['http_ms']:.2f} ms; spool-to-objects writer "
         f"{edge['cpu_ms'] - edge['http_ms']:.2f} ms", "-", ""),
        ("submit: edge, objects under raw/ vs 2xx (every round)", "; ".join(
            stored(x["edge"]) + f"; {x['edge']['spool_left']} spool files left" for x in s["rounds"])
         + f"; writer (median round): {edge['drain_out']}", "2xx <= objects <= 2xx + in flight",
         mark(all(stored_ok(x["edge"]) and not x["edge"]["spool_left"] for x in s["rounds"]))),
        ("submit: `gleanpipe serve` (edge + loading every ping into DuckDB meanwhile)", detail(real), "-",
         f"ratio {real['rps'] / triv['rps']:.2f}"),
        ("submit: serve, CPU per ping by process", f"HTTP workers (gunicorn) {real['http_ms']:.2f} ms; serve's "
         f"process (spool to objects, load into DuckDB) {real['cpu_ms'] - real['http_ms']:.2f} ms", "-", ""),
        ("submit: serve, objects under raw/ vs 2xx", stored(real), "2xx <= objects <= 2xx + in flight",
         mark(stored_ok(real))),
        ("submit: serve, rows after the load vs 2xx", f"{real['rows']:,} rows in metrics_v1 {real['drain_s']:.1f} s "
         f"after the load stopped; sustained {sustained:,.0f} pings/s (2xx / (load + drain time))",
         "rows >= 2xx", mark(real["rows"] >= real["ok"])),
        ("submit: gunicorn `gleanpipe.wsgi:app` on gthread workers (one fsynced object per ping, no spool: "
         "serve with GLEANPIPE_SPOOL=off)", detail(direct), "-", ""),
        ("submit: wsgi:app, objects under raw/ vs 2xx", stored(direct), "2xx <= objects <= 2xx + in flight",
         mark(stored_ok(direct))),
        ("submit: the `submit` function (functions/main.py, one fsynced object per ping) under functions-framework's "
         "own server (gunicorn, 1 worker x 4 threads per core: its defaults, as on Cloud Run)",
         detail(fn), ">= 1,500/s", mark(fn["rps"] >= 1500)),
        ("submit: trivial function under functions-framework (bench/trivial_function.py)", detail(s["fn_trivial_function"]),
         "-", ""),
        ("submit: ratio function / trivial function (median round; the two rows above are that round's)",
         f"**{s['fn_ratio']:.2f}** (rounds: {fn_rounds})", ">= 0.5", mark(s["fn_ratio"] >= 0.5)),
        ("submit: function, objects under raw/ vs 2xx (every round)", "; ".join(stored(x["function"])
                                                                               for x in s["fn_rounds"]),
         "2xx <= objects <= 2xx + in flight", mark(all(stored_ok(x["function"]) for x in s["fn_rounds"]))),
        (f"replay: {r['n']:,} pings", f"**{rate:,.0f} pings/s** ({r['seconds']:.1f} s, exit {r['code']}; "
         f"other load {r['other']:.2f} cores)", ">= 3,000/s", mark(rate >= 3000 and r["code"] == 0)),
        ("replay: rows baseline / metrics / events / events_stream", got,
         " / ".join(f"{v:,}" for v in r["expect"].values()), mark(r["got"] == r["expect"])),
        (f"latency 200 -> queryable ({lt['n']:,} pings at 100/s)", f"**p50 {lt['p50']:.0f} ms, p99 {lt['p99']:.0f} "
         f"ms**, max {lt['max']:.0f} ms (other load {lt['other']:.2f} cores)", "p99 < 1,000 ms",
         mark(lt["p99"] < 1000)),
        ("latency: not queryable within 10 s", f"{lt['never']} of {lt['ok']:,} (failed sends: {len(lt['errors'])})",
         "0", mark(lt["never"] == 0 and lt["ok"] == lt["n"])),
        ("serve: exit code after SIGINT", str(lt["exit"]), "0", mark(lt["exit"] == 0)),
    ]
    runs = [(f"{n} (round {i + 1})", v[n]) for n in ("edge", "trivial") for i, v in enumerate(s["rounds"])]
    runs += [("serve", real), ("wsgi:app", direct)]
    runs += [(f"{n} (round {i + 1})", v[n]) for n in ("function", "trivial function") for i, v in enumerate(s["fn_rounds"])]
    loud = [f"**WARNING: the {k} submit run had {x['bad']} non-2xx responses and {x['sockerr']} socket errors: "
            "its req/s is not a clean figure.**" for k, x in runs if x["bad"] or x["sockerr"]]
    loud += [f"**WARNING: latency run send errors: {lt['errors'][:5]}**"] if lt["errors"] else []
    phases = [(f"submit {k}", x) for k, x in runs] + [("replay", r), ("latency", lt)]
    loud += [f"**WARNING: other processes used {x['other']:.2f} cores during the {k} measurement: not a clean "
             "figure.**" for k, x in phases if x["other"] > 0.25]
    if r["code"] or "error" in r["got"]:
        loud.append(f"**WARNING: replay failed: {r['output']} {r['got'].get('error', '')}**")
    load = (f"wrk `wrk -t{THREADS} -c{CONNS} -d{seconds}s --timeout 10s -s bench/submit.lua`" if WRK else
            f"**the Python load generator ({THREADS} processes x {CONNS // THREADS} connections): no wrk**")
    return "\n".join([
        f"## {time.strftime('%Y-%m-%d %H:%M %Z')}, {socket.gethostname()}, {'quick' if quick else 'full'} run", "",
        f"Machine: {machine()}", "", *[w + "\n" for w in loud],
        "| benchmark | result | target | |", "|---|---|---|---|", *[f"| {' | '.join(row)} |" for row in rows], "",
        f"- submit: `{s['commands']['edge']}` with `python bench/drain_spool.py $TMP/<dir>/store`, then the "
        f"same with `trivial_app:app`, alternating {len(s['rounds'])} times; then `{s['commands']['real']}` (it "
        f"starts gunicorn with the same settings), then `{s['commands']['direct']}`, then `{s['commands']['function']}` "
        f"and `{s['commands']['trivial function']}` alternating {len(s['fn_rounds'])} times; each on a fresh data dir; "
        f"load: {load} (gzip metrics ping, {s['body_bytes']} bytes, new document id per request)",
        f"- replay: `{r['command']}` → `{r['output']}`",
        f"- latency: `{lt['command']}`; http.client keep-alive sender; admin API poll every 10 ms; SIGINT to stop", ""])


def main() -> None:
    global WRK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~1 min: 3 s of load, 1,000 replayed pings, 200 latency pings")
    ap.add_argument("--out", type=Path, default=BENCH.parent / "BENCHMARKS.md",
                    help="the file the run is added to, newest first [default: BENCHMARKS.md]")
    args = ap.parse_args()
    quick = args.quick
    seconds, rounds, n_replay, n_latency = (3, 1, 1_000, 200) if quick else (6, ROUNDS, 100_000, 1_000)
    if not (WRK := ensure_wrk()):
        print("WARNING: wrk not found and could not be installed: using the Python load generator", flush=True)
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    tmp, s, r, lt = Path(tempfile.mkdtemp(prefix="bench-", dir=DATA_ROOT)), {}, {}, {}
    try:
        bench_submit(tmp, seconds, rounds, s)
        bench_replay(tmp, n_replay, r)
        bench_latency(tmp, n_latency, lt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    section = report(quick, seconds, s, r, lt)
    path = args.out  # newest run first, under the file's own introduction
    intro, sep, runs = path.read_text().partition(RUNS_MARKER) if path.exists() else ("# Benchmarks\n\n", "", "")
    path.write_text(f"{intro.rstrip()}\n\n{RUNS_MARKER}\n\n{section.strip()}\n\n{runs.strip()}\n".replace("\n\n\n", "\n\n"))
    print(f"\n{section}\nappended to {path}")


RUNS_MARKER = "<!-- runs: bench/run.py adds each run below, newest first -->"


if __name__ == "__main__":
    main()
