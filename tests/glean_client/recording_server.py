"""A tiny stdlib HTTP server that records what a Glean client POSTs.

Used ONLY to verify the test client (send_pings.py) itself; the real
end-to-end tests point the client at the pipeline's own server.

    with RecordingServer() as server:
        subprocess.run([... "--endpoint", server.url ...])
        server.wait_for(lambda reqs: len(reqs) >= 3)
        for req in server.requests:
            req.method, req.path, req.headers, req.json, req.doc_type

Every request is answered with `status` (200 by default) and an empty body.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional

# /submit/<app-id>/<doc-type>/<schema-version>/<document-id>
SUBMIT_PATH = re.compile(
    r"^/submit/(?P<namespace>[^/]+)/(?P<doc_type>[^/]+)/(?P<version>[^/]+)/(?P<doc_id>[^/?]+)$"
)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: Dict[str, str]  # header names lower-cased
    raw_body: bytes  # exactly as received (gzip for Glean)
    body: bytes  # gunzipped if Content-Encoding: gzip (or gzip magic), else raw
    json: Any = None  # parsed body, or None if it was not JSON
    received_at: float = field(default_factory=time.time)

    def _match(self) -> Optional[re.Match]:
        return SUBMIT_PATH.match(self.path)

    @property
    def namespace(self) -> Optional[str]:
        m = self._match()
        return m.group("namespace") if m else None

    @property
    def doc_type(self) -> Optional[str]:
        m = self._match()
        return m.group("doc_type") if m else None

    @property
    def doc_version(self) -> Optional[str]:
        m = self._match()
        return m.group("version") if m else None

    @property
    def doc_id(self) -> Optional[str]:
        m = self._match()
        return m.group("doc_id") if m else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    def _record_and_answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = raw
        if self.headers.get("Content-Encoding", "").lower() == "gzip" or raw[:2] == b"\x1f\x8b":
            try:
                body = gzip.decompress(raw)
            except OSError:
                body = raw
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        rec = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            raw_body=raw,
            body=body,
            json=parsed,
        )
        owner = self.server.owner
        with owner._cond:
            owner.requests.append(rec)
            owner._cond.notify_all()
        self.send_response(owner.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = _record_and_answer
    do_PUT = _record_and_answer
    do_GET = _record_and_answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: "RecordingServer"


class RecordingServer:
    """Context manager: an HTTP server on 127.0.0.1:<free port> that records requests."""

    def __init__(self, status: int = 200, host: str = "127.0.0.1") -> None:
        self.status = status
        self.host = host
        self.requests: List[RecordedRequest] = []
        self._cond = threading.Condition()
        self._httpd: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "RecordingServer":
        self._httpd = _Server((self.host, 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="RecordingServer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "RecordingServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait_for(
        self, predicate: Callable[[List[RecordedRequest]], bool], timeout: float = 10.0
    ) -> bool:
        """Block until predicate(requests) is true or timeout; returns the last result."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate(list(self.requests)):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)

    def by_doc_type(self) -> Dict[str, List[RecordedRequest]]:
        out: Dict[str, List[RecordedRequest]] = {}
        with self._cond:
            for r in self.requests:
                out.setdefault(r.doc_type or "?", []).append(r)
        return out


__all__ = ["RecordingServer", "RecordedRequest", "SUBMIT_PATH"]
