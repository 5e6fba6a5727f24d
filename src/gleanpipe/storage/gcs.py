"""``gs://BUCKET/PREFIX``: a Google Cloud Storage bucket (google-cloud-storage).

Create-only writes are JSON API multipart uploads with ``ifGenerationMatch=0``: the object
is created only if no live object has that name, and a second writer gets HTTP 412, which
``put_new`` reports as False. Every write is one such simple upload, whatever its size: the
client library switches to a resumable upload above 8 MiB, and fake-gcs-server ignores
preconditions on those, so the edge dedupe could not be tested there. The upload carries
the object's CRC32C in its metadata, which Cloud Storage checks before it keeps the object.

Credentials: Application Default Credentials, looked up on first use (so a missing credential
makes submit answer 503, not the function fail to start). With ``STORAGE_EMULATOR_HOST`` set (the
variable google-cloud-storage itself honours, e.g. ``http://127.0.0.1:4443``), requests go
there with anonymous credentials. The client and its HTTP session are made once per store
and shared by all threads (urllib3's connection pool is thread-safe).
"""

from __future__ import annotations

import base64
import os
import threading
import uuid

import orjson

from .base import ObjectMissing, StoreError
from .cloud import POOL_SIZE, TRANSIENT_STATUS, CloudOptions, CloudStore

try:
    import google.auth
    import google.auth.exceptions
    import google_crc32c
    import requests
    from google.api_core import exceptions as gexc
    from google.auth.credentials import AnonymousCredentials
    from google.auth.transport.requests import AuthorizedSession
    from google.cloud import storage
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(f"gs:// stores need the gcp extra: pip install 'gleanpipe[gcp]' ({exc})") from exc

SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
PUBLIC_ENDPOINT = "https://storage.googleapis.com"


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, gexc.GoogleAPICallError):
        return exc.code
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code
    return None


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    status = _status(exc)
    return status in TRANSIENT_STATUS


def _describe(exc: BaseException) -> str:
    status = _status(exc)
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        try:
            message = exc.response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.response.text[:200]
        return f"HTTP {status}: {message}"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot reach Cloud Storage ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"[:300]


class GCSStore(CloudStore):
    scheme = "gs"
    _transient = staticmethod(_transient)
    _describe = staticmethod(_describe)

    def __init__(self, bucket: str, prefix: str, options: CloudOptions | None = None):
        super().__init__(bucket, prefix, options)
        emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
        if emulator and "://" not in emulator:
            emulator = f"http://{emulator}"
        self._emulated = bool(emulator)
        self.endpoint = emulator or PUBLIC_ENDPOINT
        self._upload_url = f"{self.endpoint}/upload/storage/v1/b/{bucket}/o"
        self._lock = threading.Lock()
        self._session = self._client = self._bucket = None

    def _connect(self) -> None:
        """Find credentials and make the session and client, once, on first use: missing
        credentials then fail a request (503 at the edge), not the process start."""
        if self._bucket is not None:
            return
        with self._lock:
            if self._bucket is not None:
                return
            if self._emulated:
                credentials, project = AnonymousCredentials(), os.environ.get("GOOGLE_CLOUD_PROJECT") or "gleanpipe"
            else:
                try:
                    credentials, project = google.auth.default(scopes=SCOPES)
                except google.auth.exceptions.DefaultCredentialsError as exc:
                    raise StoreError(f"no Google Cloud credentials for {self.url}: {exc}") from exc
            session = AuthorizedSession(credentials)
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            # One session for the library's reads and listings and for our uploads.
            client = storage.Client(project=project or "gleanpipe", credentials=credentials, _http=session,
                                    client_options={"api_endpoint": self.endpoint})
            self._session, self._client = session, client
            self._bucket = client.bucket(self.bucket)

    # --- writes ---------------------------------------------------------------------

    def put_new(self, key: str, data: bytes, *, notify: bool = True) -> bool:
        name = self._name(key)
        self._connect()
        crc = base64.b64encode(google_crc32c.Checksum(data).digest()).decode("ascii")
        metadata = {"name": name, "contentType": "application/octet-stream", "crc32c": crc}
        boundary = f"gleanpipe-{uuid.uuid4().hex}"
        body = b"".join((
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
            orjson.dumps(metadata),
            f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        ))

        def upload() -> bool:
            resp = self._session.post(
                self._upload_url,
                params={"uploadType": "multipart", "ifGenerationMatch": "0", "fields": "name,generation"},
                data=body, headers={"Content-Type": f"multipart/related; boundary={boundary}"},
                timeout=self.options.timeout_s)
            if resp.status_code == 412:
                return False
            resp.raise_for_status()
            return True

        return self._retry(f"cannot write {self.url}/{key}", upload)

    # --- reads ----------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        name = self._name(key)
        self._connect()
        blob = self._bucket.blob(name)

        def download() -> bytes:
            try:
                return blob.download_as_bytes(timeout=self.options.timeout_s, retry=None, checksum="crc32c")
            except gexc.NotFound:
                raise ObjectMissing(f"no object {key} in {self.url}") from None

        return self._retry(f"cannot read {self.url}/{key}", download)

    def delete(self, key: str) -> None:
        """Remove the object (housekeeping only); no error if there is none."""
        name = self._name(key)
        self._connect()
        blob = self._bucket.blob(name)

        def remove() -> None:
            try:
                blob.delete(timeout=self.options.timeout_s, retry=None)
            except gexc.NotFound:
                pass

        self._retry(f"cannot delete {self.url}/{key}", remove)

    def _list_page(self, name_prefix: str, token: str | None) -> tuple[list[str], str | None]:
        it = self._client.list_blobs(self._bucket, prefix=name_prefix, page_token=token,
                                     page_size=self.list_page_size, fields="items(name),nextPageToken",
                                     timeout=self.options.timeout_s, retry=None)
        first = next(it.pages)
        return [b.name for b in first], it.next_page_token

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
