"""An upload-attempt log for the Glean test client (send_pings.py).

`LoggingUploader` is the SDK's own `glean.net.HttpClientUploader` (same HTTP
request, same headers, same body, same status handling) plus one JSON line per
attempt appended to a file, so the client script can report exactly which
documents it tried to upload and what the server answered.

The Glean Python SDK uploads from a separate worker process: it pickles the
`Configuration` (including this uploader) and unpickles it there. That works
because this is a top-level module on the worker's `PYTHONPATH` (the SDK passes
the parent's `sys.path`, which starts with this directory when send_pings.py
is run as a script).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Dict, List, Optional

from glean.net import HttpClientUploader

_PATH = re.compile(r"/submit/(?P<ns>[^/]+)/(?P<doc_type>[^/]+)/(?P<v>[^/]+)/(?P<doc_id>[^/?]+)")


def _describe(result: Any) -> Dict[str, Any]:
    """UploadResult -> {"result": <variant name>, "status": <http code or None>}."""
    name = type(result).__name__.split(".")[-1]  # HTTP_STATUS, RECOVERABLE_FAILURE, ...
    status = getattr(result, "code", None) if name == "HTTP_STATUS" else None
    return {"result": name, "status": status}


class LoggingUploader(HttpClientUploader):
    def __init__(self, log_path: str, run_id: str) -> None:
        self.log_path = str(log_path)
        self.run_id = run_id

    def upload(self, capable_request):  # type: ignore[override]
        started = time.time()
        result = HttpClientUploader.upload(capable_request)
        try:
            request = capable_request.request
            path = request.url
            m = _PATH.search(path)
            rec = {
                "run_id": self.run_id,
                "pid": os.getpid(),
                "t": round(started, 3),
                "url": path,
                "doc_type": m.group("doc_type") if m else None,
                "doc_id": m.group("doc_id") if m else None,
                **_describe(result),
            }
            line = (json.dumps(rec, sort_keys=True) + "\n").encode()
            fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except Exception:  # never let logging break the upload
            pass
        return result


def read_log(log_path: str, run_id: Optional[str] = None) -> List[Dict[str, Any]]:
    """All logged attempts (optionally only those of one run), in file order."""
    out: List[Dict[str, Any]] = []
    try:
        with open(log_path, "r", encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if run_id is None or rec.get("run_id") == run_id:
                    out.append(rec)
    except FileNotFoundError:
        pass
    return out
