"""A `gleanpipe serve` with app definitions and pings, shared by the dictionary tests
(test_dictionary.py, test_dictionary_browser.py): import ``site`` from here.

Definitions for org.example.toolbox (tests/glean_client/*.yaml) and for an app whose
description is an XSS attempt, pings from the real Glean SDK, and hand-built pings carrying
an undocumented metric and hostile labels.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import DATASET, SDK_HEADERS, ServeProcess, gz, make_ping, post, submit_path

HERE = Path(__file__).parent
GLEAN = HERE / "glean_client"
EVIL = '</script><script>window.__xss=1</script><img src=x onerror="window.__xss=2"> & done'
EVIL_LABEL = '<img src=x onerror="window.__xss=3">'
EVIL_EVENT = "<svg onload=window.__xss=4>"
XSS_METRICS = f"""---
$schema: moz://mozilla.org/schemas/glean/metrics/2-0-0
evil:
  payload:
    type: counter
    description: {json.dumps(EVIL)}
    lifetime: ping
    send_in_pings: [metrics]
    bugs: [https://example.com/bug/1]
    data_reviews: [https://example.com/review/1]
    notification_emails: [x@example.com]
    expires: never
  label_set:
    type: labeled_counter
    description: Fixed labels.
    labels: [alpha, beta]
    lifetime: ping
    send_in_pings: [custom-thing]
    bugs: [https://example.com/bug/1]
    data_reviews: [https://example.com/review/1]
    notification_emails: [x@example.com]
    expires: never
"""


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gleanpipe.cli", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=120)


def get(url: str):
    """(status, headers, body bytes), without raising on 4xx/5xx, without following redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def api(server, path: str):
    status, headers, body = get(f"{server.url}/dictionary/api/{path}")
    assert status == 200, body[:500]
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("dictionary")
    data_dir = root / "data"
    data_dir.mkdir()
    server = ServeProcess(data_dir).start()
    try:
        added = cli(data_dir, "apps", "add", "org.example.toolbox", "--metrics", str(GLEAN / "metrics.yaml"),
                    "--pings", str(GLEAN / "pings.yaml"))
        assert added.returncode == 0, added.stderr
        (root / "xss.yaml").write_text(XSS_METRICS)
        assert cli(data_dir, "apps", "add", "org.example.xss", "--metrics", str(root / "xss.yaml")).returncode == 0
        sdk = subprocess.run([sys.executable, str(GLEAN / "send_pings.py"), "--endpoint", server.url, "--data-dir",
                              str(root / "glean"), "--scenario", "all", "--require-delivery"],
                             capture_output=True, text=True, timeout=120)
        assert sdk.returncode == 0, sdk.stderr[-3000:]
        ping = make_ping("5d0c7f4e-2b1a-4c3d-9e8f-7a6b5c4d3e2f",
                         {"counter": {"toolbox.secret_counter": 9},
                          "labeled_counter": {"toolbox.hostile": {EVIL_LABEL: 4}},
                          "string": {"toolbox.active_theme": EVIL}},
                         events=[{"category": EVIL_EVENT, "name": "x", "timestamp": 1}])
        status, body, _ = post(server.url + submit_path("metrics"), gz(ping), SDK_HEADERS)
        assert status == 200, body
        assert server.wait_rows(f"SELECT count(*) FROM {DATASET}.metrics_v1", 2) == 2
        assert server.wait_rows(f"SELECT count(*) FROM {DATASET}.events_v1", 1) == 1
        yield server
    finally:
        server.stop()
