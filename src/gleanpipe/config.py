"""Every setting gleanpipe reads, from environment variables with documented defaults.

The CLI flags accept the same variables (click ``envvar=``), so ``GLEANPIPE_PORT=9000
gleanpipe serve`` and ``gleanpipe serve --port 9000`` mean the same thing. The README
lists each setting; keep that table in step with ``SETTINGS`` below.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

MIB = 1024 * 1024


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    help: str


SETTINGS: dict[str, Setting] = {
    s.env: s
    for s in (
        Setting("GLEANPIPE_DATA_DIR", "./data", "Folder for local mode: raw store, DuckDB file, server state."),
        Setting("GLEANPIPE_STORE_URL", "", "Raw store URL (file://PATH, gs://BUCKET/PREFIX, s3://BUCKET/PREFIX). "
                "Empty: file://<data dir>/store."),
        Setting(
            "GLEANPIPE_WAREHOUSE_URL",
            "",
            "Warehouse URL (duckdb://PATH). Empty: duckdb://<data dir>/warehouse.duckdb.",
        ),
        Setting("GLEANPIPE_HOST", "127.0.0.1", "Address `serve` listens on (0.0.0.0 to accept other hosts)."),
        Setting("GLEANPIPE_PORT", "8080", "Port `serve` listens on for /submit."),
        Setting("GLEANPIPE_ALLOWED_HOSTS", "",
                "`serve` on loopback and `explore`'s Datasette: Host names (comma-separated; .name for a name and "
                "all under it) their pages (/debug, /dictionary; Datasette's) answer besides localhost, 127.x.x.x "
                "and [::1] (host_check.py)."),
        Setting("GLEANPIPE_TLS_CERT", "",
                "`serve` only: PEM certificate (chain) file; with GLEANPIPE_TLS_KEY, serve speaks HTTPS. Empty: HTTP."),
        Setting("GLEANPIPE_TLS_KEY", "", "`serve` only: PEM private key file of GLEANPIPE_TLS_CERT (unencrypted)."),
        Setting("GLEANPIPE_WORKERS", "2", "HTTP worker processes `serve` starts for submit."),
        Setting("GLEANPIPE_CONNECTIONS", "1000",
                "Connections each HTTP worker serves at once (GLEANPIPE_SPOOL=on: gevent worker)."),
        Setting("GLEANPIPE_THREADS", "8", "Threads per HTTP worker with GLEANPIPE_SPOOL=off (gthread worker)."),
        Setting("GLEANPIPE_MAX_WIRE_BYTES", str(1 * MIB), "Largest request body accepted as sent (413 above)."),
        Setting(
            "GLEANPIPE_MAX_PAYLOAD_BYTES",
            str(8 * MIB),
            "Largest payload after gzip decompression; enforced while decompressing (413 above).",
        ),
        Setting(
            "GLEANPIPE_BODY_TIMEOUT_S",
            "30",
            "Seconds a request's body may take to arrive, from the first read (408 after it). Without "
            "it a client that stops half-way held its connection for ever.",
        ),
        Setting(
            "GLEANPIPE_LINGER_S",
            "2",
            "Seconds a connection closed while its client may still be sending (a body over "
            "GLEANPIPE_MAX_WIRE_BYTES, which is not read) reads and drops what still comes, so the "
            "client reads its answer instead of a connection reset (at most 128 MiB).",
        ),
        Setting(
            "GLEANPIPE_MAX_ERROR_BYTES",
            str(1 * MIB),
            "Bytes of a rejected request's body kept in the error store (the rest is cut off and flagged).",
        ),
        Setting("GLEANPIPE_MAX_URI_BYTES", "512", "Longest request path accepted (414 above)."),
        Setting("GLEANPIPE_MAX_HEADER_BYTES", "1024", "Longest kept header value accepted (431 above)."),
        Setting("GLEANPIPE_LOAD_BATCH", "1000", "Objects loaded into the warehouse per write."),
        Setting("GLEANPIPE_LOAD_INTERVAL_MS", "50", "How often `serve`'s loader looks for new objects."),
        Setting(
            "GLEANPIPE_DEBUG_INDEX",
            "on",
            "Index pings that carry X-Debug-ID for the debug viewer (`debug/` in the store; on/off). "
            "`make deploy` turns it off for the submit function: Google Cloud has no viewer, and "
            "submit may only create objects there.",
        ),
        Setting(
            "GLEANPIPE_DEBUG_MAX_PINGS",
            "100",
            "Pings kept per X-Debug-ID tag in the debug viewer's index (`debug/` in the store); oldest go first.",
        ),
        Setting(
            "GLEANPIPE_DEBUG_RETENTION_HOURS",
            "504",
            "Hours a debug ping stays listed at /debug (504 = 3 weeks, as Mozilla's Debug Ping Viewer).",
        ),
        Setting("GLEANPIPE_EXPLORE_PORT", "8001", "Port `gleanpipe explore` runs Datasette on (loopback)."),
        Setting("GLEANPIPE_DUCKDB_MEMORY_LIMIT", "",
                "Most memory DuckDB may take for a duckdb:// warehouse in each process that opens it (serve, "
                "the CLI, the load function), as a size with its unit: 512MiB, 2GB. Empty: DuckDB's own "
                "default, 80% of the machine's memory."),
        Setting("GLEANPIPE_QUERY_MAX_BYTES", str(256 * MIB),
                "Largest query result `serve` answers (`gleanpipe query` through it), as JSON."),
        Setting(
            "GLEANPIPE_STORE_TIMEOUT_S",
            "3",
            "Seconds one request to a gs:// or s3:// store may take (connect, then read). With the "
            "defaults a store in trouble is a 503 within 9 s (retry + 2 x timeout), before the Glean "
            "SDK's own 10 s upload timeout.",
        ),
        Setting(
            "GLEANPIPE_STORE_RETRY_S",
            "3",
            "Seconds a gs:// or s3:// store call keeps retrying transient failures (5xx, 429, network) "
            "before it fails (submit then answers 503). 0: no retries.",
        ),
        Setting(
            "GLEANPIPE_WORKER_WAIT_S",
            "20",
            "`gleanpipe worker`: SQS long-poll wait per receive, in seconds (0-20).",
        ),
        Setting("GLEANPIPE_BIGQUERY_ENDPOINT", "",
                "BigQuery API endpoint for bigquery:// (an emulator; no credentials are sent). Empty: Google's."),
        Setting("GLEANPIPE_BIGQUERY_RETRY_S", "60",
                "Seconds one BigQuery call is retried on transient errors before the load fails (and is retried)."),
        Setting("GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S", "60",
                "How often a BigQuery loader re-reads the deleted clients (requests made by other instances)."),
        Setting("GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S", "300",
                "A BigQuery deletion is final only when its DELETE ran this long after the request was recorded "
                "(late pings loaded by instances that had not re-read the deleted clients yet)."),
        Setting("GLEANPIPE_DICTIONARY", "on", "Serve the data dictionary at /dictionary on the submit port (on/off)."),
        Setting(
            "GLEANPIPE_SPOOL",
            "on",
            "`serve` only: `on` = HTTP workers append accepted pings to a write-ahead spool, one shared "
            "fdatasync per batch, and serve turns them into objects; `off` = one fsynced object per ping.",
        ),
        Setting("GLEANPIPE_SPOOL_SEGMENT_BYTES", str(16 * MIB), "A worker starts a new spool file after this many bytes."),
        Setting("GLEANPIPE_SPOOL_SEGMENT_SECONDS", "30", "A worker starts a new spool file after this many seconds."),
        Setting("GLEANPIPE_SCHEMA_PATH", "",
                "Validate pings against this copy of glean.1.schema.json (validation.py). Empty: the bundled one."),
        Setting("GLEANPIPE_BQEMULATOR", "",
                "`emulate` and the tests: the bqemulator program to run. Empty: .venv-bqemu/bin/bqemulator of the checkout."),
    )
}


class SettingError(ValueError):
    """A setting's value (a variable, or the flag that stands for it) is wrong: the CLI makes it a
    usage error (exit 2), as it does a bad flag."""


def _get(env: str, environ: os._Environ | dict | None = None) -> str:
    source = os.environ if environ is None else environ
    value = source.get(env, "")
    return value if value != "" else SETTINGS[env].default


def _bool(env: str, environ=None) -> bool:
    raw = _get(env, environ).strip().lower()
    if raw in ("on", "true", "yes", "1"):
        return True
    if raw in ("off", "false", "no", "0"):
        return False
    raise SettingError(f"{env} must be on or off, got {raw!r}")


# Whole-number settings with an upper bound too (every whole-number setting must be positive). A wait
# longer than the OS timers hold (about 292 years: threading.TIMEOUT_MAX) raises OverflowError where
# it is used, which for the spool's committer meant a dead thread and requests that never got an
# answer; the bounds below are far inside that and far above any sensible value.
MAX_VALUE = {
    "GLEANPIPE_PORT": 65535,
    "GLEANPIPE_EXPLORE_PORT": 65535,
    "GLEANPIPE_WORKERS": 64,  # processes serve forks, each with its own interpreter: more is a typo
    "GLEANPIPE_CONNECTIONS": 100_000,  # gevent's pool size is a C long: 1e20 crashed every worker at boot
    "GLEANPIPE_THREADS": 1_024,
    "GLEANPIPE_MAX_URI_BYTES": 65_536,  # with the header bound, keeps a spool record's room for the payload
    "GLEANPIPE_MAX_HEADER_BYTES": 65_536,  # positive (it went negative: a nonsense start-up error)
    "GLEANPIPE_LOAD_INTERVAL_MS": 60_000,  # serve's loader looks for new objects at least once a minute
    "GLEANPIPE_SPOOL_SEGMENT_SECONDS": 86_400,  # a spool file is let go at least once a day
    "GLEANPIPE_BODY_TIMEOUT_S": 3_600,
    "GLEANPIPE_BIGQUERY_RETRY_S": 3_600,  # also the timeout of each BigQuery request
    # a loader that re-reads the deleted clients less than daily keeps loading their late pings; a
    # request that cannot be final for weeks is never done (BigQuery's streaming buffer lasts hours)
    "GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S": 86_400,
    "GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S": 604_800,  # a week
    # sizes and counts a body, a batch or a page is held in memory at: beyond these, a typo
    "GLEANPIPE_MAX_WIRE_BYTES": 1 << 30,
    # past a C ssize_t (about 9.2e18) zlib's max_length raised OverflowError: a 500 for every gzip ping
    "GLEANPIPE_MAX_PAYLOAD_BYTES": 1 << 30,
    "GLEANPIPE_MAX_ERROR_BYTES": 1 << 30,
    "GLEANPIPE_SPOOL_SEGMENT_BYTES": 1 << 30,
    "GLEANPIPE_LOAD_BATCH": 100_000,
    "GLEANPIPE_DEBUG_MAX_PINGS": 100_000,
    "GLEANPIPE_DEBUG_RETENTION_HOURS": 87_600,  # ten years
    "GLEANPIPE_QUERY_MAX_BYTES": 1 << 34,  # 16 GiB
}


def _check_int(env: str, value: int) -> int:
    if value <= 0:
        raise SettingError(f"{env} must be positive, got {value}")
    if env in MAX_VALUE and value > MAX_VALUE[env]:
        raise SettingError(f"{env} must be at most {MAX_VALUE[env]}, got {value}")
    return value


def _int(env: str, environ=None) -> int:
    raw = _get(env, environ)
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(f"{env} must be a whole number, got {raw!r}") from None
    return _check_int(env, value)


_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
MIN_DUCKDB_MEMORY = 64 * MIB  # loads of 1,000 pings ran at 64 MiB and failed for memory at 32


def _memory(env: str, environ=None) -> int | None:
    """A memory size in bytes (units as DuckDB takes them: KB = 1000, KiB = 1024), or None for
    DuckDB's own default."""
    raw = _get(env, environ).strip()
    if not raw:
        return None
    size = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)", raw, re.IGNORECASE)
    if size is None:
        raise SettingError(f"{env} must be a size with its unit, as 512MiB or 2GB (B, KB, MB, GB, TB or KiB, "
                         f"MiB, GiB, TiB), got {raw!r}")
    value = float(size.group(1)) * _UNITS[size.group(2).lower()]
    if value < MIN_DUCKDB_MEMORY:
        raise SettingError(f"{env} must be at least 64MiB, got {raw!r}")
    if value > 1 << 50:  # a petabyte: a typo, and past what DuckDB takes
        raise SettingError(f"{env} must be at most 1024TiB, got {raw!r}")
    return int(value)


# GLEANPIPE_STORE_TIMEOUT_S and GLEANPIPE_STORE_RETRY_S: an hour at most. A socket timeout beyond the
# OS timers (about 292 years) raises OverflowError on every call; an hour is already longer than any
# client waits for an answer.
MAX_STORE_SECONDS = 3600.0
# GLEANPIPE_LINGER_S: a minute at most. Each lingering connection holds a greenlet (serve) or a
# thread (the function, serve with the spool off) that long, for a client that keeps sending.
MAX_LINGER_SECONDS = 60.0
_MAX_SECONDS = {"GLEANPIPE_LINGER_S": MAX_LINGER_SECONDS}


def _seconds(env: str, environ=None) -> float:
    """Seconds in decimals: finite, positive (a cloud store's retry budget may be 0), at most an
    hour (a minute for GLEANPIPE_LINGER_S)."""
    allow_zero = env == "GLEANPIPE_STORE_RETRY_S"
    raw = _get(env, environ)
    try:
        value = float(raw)
    except ValueError:
        raise SettingError(f"{env} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value):  # inf: a store call that never times out or never stops retrying
        raise SettingError(f"{env} must be a finite number of seconds, got {raw!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise SettingError(f"{env} must be {'zero or ' if allow_zero else ''}positive, got {raw!r}")
    most = _MAX_SECONDS.get(env, MAX_STORE_SECONDS)
    if value > most:
        raise SettingError(f"{env} must be at most {most:.0f} seconds, got {raw!r}")
    return value


# an entry of GLEANPIPE_ALLOWED_HOSTS: a host name or IPv4 address (a leading dot: the name and every name under it)
_ALLOWED_NAME = re.compile(r"\.?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
_ALLOWED_IPV6 = re.compile(r"\[[0-9a-f:.]+\]")


def _hosts(env: str, environ=None) -> tuple[str, ...]:
    """Comma-separated host names, lower case (GLEANPIPE_ALLOWED_HOSTS); an IPv6 address in brackets,
    as a Host header has it. A port, a scheme or a path is refused: a Host is checked by its name."""
    out = []
    for entry in (part.strip().lower() for part in _get(env, environ).split(",")):
        if not entry:
            continue
        if not (_ALLOWED_NAME.fullmatch(entry) or _ALLOWED_IPV6.fullmatch(entry)):
            raise SettingError(f"{env}: {entry!r} is not a host name: give names without scheme, port or path "
                               "(gleanpipe.test, or .example.test for it and every name under it), separated by commas")
        out.append(entry)
    return tuple(out)


def value(env: str, environ=None) -> str:
    """A setting as given (its default when unset or empty), for what no ``Config`` field holds:
    GLEANPIPE_BQEMULATOR, read by `emulate` and the tests."""
    return _get(env, environ)


# Config field -> (reader, variable), for the fields every command reads the same way
_FIELDS = {
    "host": (_get, "GLEANPIPE_HOST"),
    "port": (_int, "GLEANPIPE_PORT"),
    "allowed_hosts": (_hosts, "GLEANPIPE_ALLOWED_HOSTS"),
    "tls_cert": (_get, "GLEANPIPE_TLS_CERT"),
    "tls_key": (_get, "GLEANPIPE_TLS_KEY"),
    "workers": (_int, "GLEANPIPE_WORKERS"),
    "connections": (_int, "GLEANPIPE_CONNECTIONS"),
    "threads": (_int, "GLEANPIPE_THREADS"),
    "max_wire_bytes": (_int, "GLEANPIPE_MAX_WIRE_BYTES"),
    "max_payload_bytes": (_int, "GLEANPIPE_MAX_PAYLOAD_BYTES"),
    "max_error_bytes": (_int, "GLEANPIPE_MAX_ERROR_BYTES"),
    "body_timeout_s": (_int, "GLEANPIPE_BODY_TIMEOUT_S"),
    "linger_s": (_seconds, "GLEANPIPE_LINGER_S"),
    "max_uri_bytes": (_int, "GLEANPIPE_MAX_URI_BYTES"),
    "max_header_bytes": (_int, "GLEANPIPE_MAX_HEADER_BYTES"),
    "load_batch": (_int, "GLEANPIPE_LOAD_BATCH"),
    "load_interval_ms": (_int, "GLEANPIPE_LOAD_INTERVAL_MS"),
    "debug_index": (_bool, "GLEANPIPE_DEBUG_INDEX"),
    "debug_max_pings": (_int, "GLEANPIPE_DEBUG_MAX_PINGS"),
    "debug_retention_hours": (_int, "GLEANPIPE_DEBUG_RETENTION_HOURS"),
    "explore_port": (_int, "GLEANPIPE_EXPLORE_PORT"),
    "query_max_bytes": (_int, "GLEANPIPE_QUERY_MAX_BYTES"),
    "duckdb_memory_limit": (_memory, "GLEANPIPE_DUCKDB_MEMORY_LIMIT"),
    "dictionary": (_bool, "GLEANPIPE_DICTIONARY"),
    "spool": (_bool, "GLEANPIPE_SPOOL"),
    "spool_segment_bytes": (_int, "GLEANPIPE_SPOOL_SEGMENT_BYTES"),
    "spool_segment_seconds": (_int, "GLEANPIPE_SPOOL_SEGMENT_SECONDS"),
    "schema_path": (_get, "GLEANPIPE_SCHEMA_PATH"),
    "store_timeout_s": (_seconds, "GLEANPIPE_STORE_TIMEOUT_S"),
    "store_retry_s": (_seconds, "GLEANPIPE_STORE_RETRY_S"),
    "bigquery_endpoint": (_get, "GLEANPIPE_BIGQUERY_ENDPOINT"),
    "bigquery_retry_s": (_int, "GLEANPIPE_BIGQUERY_RETRY_S"),
    "bigquery_deletions_refresh_s": (_int, "GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S"),
    "bigquery_deletions_settle_s": (_int, "GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S"),
}


@dataclass(frozen=True)
class Config:
    data_dir: Path
    store_url: str
    warehouse_url: str
    host: str
    port: int
    workers: int
    connections: int
    threads: int
    max_wire_bytes: int
    max_payload_bytes: int
    max_error_bytes: int
    max_uri_bytes: int
    max_header_bytes: int
    load_batch: int
    load_interval_ms: int
    debug_max_pings: int
    debug_retention_hours: int
    explore_port: int
    spool: bool
    spool_segment_bytes: int
    spool_segment_seconds: int
    dictionary: bool = True
    debug_index: bool = True
    body_timeout_s: int = 30
    linger_s: float = 2.0  # linger.py
    query_max_bytes: int = 256 * MIB
    duckdb_memory_limit: int | None = None  # None: DuckDB's own default
    schema_path: str = ""  # "": the bundled glean.1 schema
    store_timeout_s: float = 3.0  # gs:// and s3:// stores
    store_retry_s: float = 3.0
    bigquery_endpoint: str = ""  # "": Google's
    bigquery_retry_s: int = 60
    bigquery_deletions_refresh_s: int = 60
    bigquery_deletions_settle_s: int = 300
    tls_cert: str = ""  # "": serve speaks plain HTTP (check_tls)
    tls_key: str = ""
    allowed_hosts: tuple[str, ...] = ()  # GLEANPIPE_ALLOWED_HOSTS (host_check.py)

    @property
    def tls(self) -> bool:
        """Whether serve speaks HTTPS on its submit port."""
        return bool(self.tls_cert or self.tls_key)

    def as_env(self) -> dict[str, str]:
        """The settings as variables that ``from_env`` reads back as this config: what serve gives
        its HTTP workers, so that a flag that won over a variable (``--port 8081`` over a bad
        GLEANPIPE_PORT) wins in them too."""
        env = {"GLEANPIPE_DATA_DIR": str(self.data_dir), "GLEANPIPE_STORE_URL": self.store_url,
               "GLEANPIPE_WAREHOUSE_URL": self.warehouse_url}
        for name, (_, var) in _FIELDS.items():
            value = getattr(self, name)
            if isinstance(value, bool):
                env[var] = "on" if value else "off"
            elif isinstance(value, tuple):
                env[var] = ",".join(value)
            elif name == "duckdb_memory_limit":
                env[var] = "" if value is None else f"{value}B"
            else:
                env[var] = str(value)
        return env

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "Config":
        """Read every setting; keyword overrides (from CLI flags) win when not None."""
        data_dir = Path(overrides.pop("data_dir", None) or _get("GLEANPIPE_DATA_DIR", environ))
        store_url = overrides.pop("store_url", None) or _get("GLEANPIPE_STORE_URL", environ)
        warehouse_url = overrides.pop("warehouse_url", None) or _get("GLEANPIPE_WAREHOUSE_URL", environ)
        given = {k: v for k, v in overrides.items() if v is not None}
        values = dict(data_dir=data_dir, store_url=store_url or f"file://{data_dir / 'store'}",
                      warehouse_url=warehouse_url or f"duckdb://{data_dir / 'warehouse.duckdb'}")
        # each variable read only when no flag gives its value: a flag wins over a bad variable
        values.update({name: read(env, environ) for name, (read, env) in _FIELDS.items() if name not in given})
        known = {f.name for f in fields(cls)}
        for key, value in given.items():
            if key not in known:
                raise TypeError(f"unknown setting {key!r}")
            if isinstance(value, int) and not isinstance(value, bool):  # a CLI flag: same checks as its variable
                _check_int(f"GLEANPIPE_{key.upper()}", value)
            values[key] = value
        return cls(**values)


class _EncryptedKey(Exception):
    """OpenSSL asked for a password: the key file is encrypted."""


def _no_password():
    raise _EncryptedKey  # instead of OpenSSL's prompt on the terminal ("Enter PEM pass phrase:")


def refuse_special_file(env: str, path: str) -> None:
    """SettingError when the file a setting names exists but is neither a regular file nor a folder
    (a FIFO, ``/dev/zero``): reading it waits for a writer, or never ends, and serve hung at its start.
    A missing file or a folder is left to the caller's read, which says so in its words."""
    if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
        raise SettingError(f"{env}: {path} is not a regular file")


# the TLS settings as serve's errors name them: the variable and the flag that reads it
_CERT, _KEY = "GLEANPIPE_TLS_CERT (--tls-cert)", "GLEANPIPE_TLS_KEY (--tls-key)"


def check_tls(cert: str, key: str) -> None:
    """SettingError unless GLEANPIPE_TLS_CERT and GLEANPIPE_TLS_KEY are both empty (plain HTTP) or
    name a readable PEM certificate and the unencrypted PEM key that goes with it: said before
    serve starts, naming the variable, instead of a gunicorn worker that fails to boot."""
    import ssl

    if not cert and not key:
        return
    if not cert or not key:
        given, missing = (_CERT, _KEY) if cert else (_KEY, _CERT)
        raise SettingError(f"{given} is set but {missing} is not: HTTPS needs both the certificate and its key "
                           "(PEM files), plain HTTP neither")
    for env, path in ((_CERT, cert), (_KEY, key)):
        refuse_special_file(env, path)  # a FIFO: open() waited for a writer (and so did OpenSSL's read)
        try:
            with open(path, "rb") as f:
                text = f.read(1 << 20)
        except OSError as exc:
            raise SettingError(f"{env}: cannot read {path}: {exc.strerror or exc}") from None
        if b"-----BEGIN " not in text:
            raise SettingError(f"{env}: {path} is not a PEM file (no '-----BEGIN' line)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cafile=cert)  # the certificate alone: is it one?
    except ssl.SSLError as exc:
        raise SettingError(f"{_CERT}: {cert} holds no PEM certificate OpenSSL can read "
                           f"({exc.reason or exc})") from None
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        raise SettingError(f"{_KEY}: {key} is encrypted (it asks for a password): give the key "
                           "unencrypted (mkcert writes it so; `openssl pkey -in KEY -out NEW` decrypts one)") from None
    except ssl.SSLError as exc:
        why = (f"it is not the key of the certificate in {_CERT}" if "MISMATCH" in str(exc)
               else f"OpenSSL cannot read it as a PEM private key ({exc.reason or exc})")
        raise SettingError(f"{_KEY}: {key}: {why}") from None


def tls_cert_warning(cert: str, key: str) -> str | None:
    """A warning when the certificate of GLEANPIPE_TLS_CERT (checked by check_tls) has expired or
    is not valid yet: serve runs with it (a test of how clients take it is a use), but browsers,
    curl and the Glean SDKs refuse it, and a serve that starts as usual left the user with clients
    that cannot send. Found with a handshake in memory against serve's own certificate as the
    trust anchor (the dates are checked, not the CA): the ssl module reads no certificate dates."""
    import ssl

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(cafile=cert)
    client.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the certificate itself is the anchor
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    ends = [client.wrap_bio(to_client, to_server), server.wrap_bio(to_server, to_client, server_side=True)]
    for _ in range(8):  # a TLS 1.3 handshake takes 2 rounds
        for end in ends:
            try:
                end.do_handshake()
            except ssl.SSLCertVerificationError as exc:
                if exc.verify_code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
                    return (f"{_CERT}: the certificate in {cert} has expired: browsers, curl and the "
                            "Glean SDKs refuse it (make a new one)")
                if exc.verify_code == 9:  # X509_V_ERR_CERT_NOT_YET_VALID
                    return (f"{_CERT}: the certificate in {cert} is not valid yet (is this machine's "
                            "clock right?): browsers, curl and the Glean SDKs refuse it")
                return None  # not a matter of dates: clients judge the rest
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return None
            else:
                if end is ends[0]:
                    return None  # the client took it: the dates are right
    return None


# `make deploy` (src/gleanpipe/deploy/): read by the deploy planner only, never by the functions.
SETTINGS.update(
    {
        s.env: s
        for s in (
            Setting("GLEANPIPE_DEPLOY_SETTINGS", "", "KEY=VALUE file with GLEANPIPE_DEPLOY_* settings (env wins)."),
            Setting("GLEANPIPE_DEPLOY_PROJECT", "", "Google Cloud project id to deploy to (required)."),
            Setting("GLEANPIPE_DEPLOY_REGION", "us-central1", "Region of the functions, the bucket and the trigger."),
            Setting("GLEANPIPE_DEPLOY_BUCKET", "", "Raw bucket name. Empty: <project>-gleanpipe-raw."),
            Setting("GLEANPIPE_DEPLOY_STORE_PREFIX", "gleanpipe", "Object prefix in the bucket (gs://<bucket>/<prefix>)."),
            Setting("GLEANPIPE_DEPLOY_APPS", "", "Comma-separated app ids whose BigQuery datasets are created and granted."),
            Setting("GLEANPIPE_DEPLOY_BQ_LOCATION", "", "BigQuery location of the datasets. Empty: the region."),
            Setting("GLEANPIPE_DEPLOY_RAW_DAYS", "90", "Age in days after which the lifecycle rule acts on raw objects."),
            Setting("GLEANPIPE_DEPLOY_RAW_ACTION", "delete", "Lifecycle action on old raw objects: delete or archive."),
            Setting("GLEANPIPE_DEPLOY_NAME_PREFIX", "gleanpipe", "Prefix of function and service account names."),
            Setting("GLEANPIPE_DEPLOY_RUNTIME", "python312", "Cloud Functions Python runtime."),
            Setting("GLEANPIPE_DEPLOY_SUBMIT_MEMORY", "256Mi", "Memory of the submit function."),
            Setting("GLEANPIPE_DEPLOY_SUBMIT_MAX_INSTANCES", "10", "Most submit instances at once."),
            Setting("GLEANPIPE_DEPLOY_LOAD_MEMORY", "512Mi", "Memory of the load function."),
            Setting("GLEANPIPE_DEPLOY_LOAD_MAX_INSTANCES", "5", "Most load instances at once."),
            Setting("GLEANPIPE_DEPLOY_LOAD_TIMEOUT", "120", "Seconds a load may run before it fails (and is retried)."),
            Setting(
                "GLEANPIPE_DEPLOY_BUILD_SERVICE_ACCOUNT",
                "",
                "Service account email for Cloud Build. Empty: the project's default build account.",
            ),
            Setting(
                "GLEANPIPE_DEPLOY_DELETIONS_SCHEDULE",
                "*/30 * * * *",
                "Cron schedule (UTC) of the Cloud Scheduler job that retries pending deletion requests.",
            ),
        )
    }
)

# GLEANPIPE_* names the project reads that are no setting of gleanpipe's own: `make bench`'s work
# folder (bench/run.py; the benchmark drops every GLEANPIPE_* variable before it runs gleanpipe).
NOT_SETTINGS = frozenset({"GLEANPIPE_BENCH_DIR"})


def unknown_settings(environ=None) -> list[str]:
    """A warning for each GLEANPIPE_* variable that is not a setting, naming the known setting it is
    closest to: a typo (GLEANPIPE_PROT) was ignored without a word. The CLI prints them, the
    deployed functions log them."""
    import difflib

    source = os.environ if environ is None else environ
    said = []
    for name in sorted(source):
        if name.startswith("GLEANPIPE_") and name not in SETTINGS and name not in NOT_SETTINGS:
            near = difflib.get_close_matches(name, SETTINGS, n=1, cutoff=0.8)
            guess = f"did you mean {near[0]}? " if near else ""
            said.append(f"{name} is not a gleanpipe setting, so it is ignored ({guess}the settings are listed in "
                        "the README, section Settings)")
    return said
