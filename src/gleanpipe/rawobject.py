"""The raw object format: one line of JSON metadata, a newline, then the payload bytes.

The payload is kept exactly as received (after gzip decompression), so a later fix to
the loader can replay it. One object per ping keeps the create-only write atomic on every
backend (a sidecar metadata file could not be).
"""

from __future__ import annotations

import orjson

FORMAT = "gleanpipe-raw/1"
KEPT_HEADERS = ("date", "x_telemetry_agent", "x_debug_id", "x_source_tags", "user_agent", "content_length")


class RawObjectError(ValueError):
    """Bytes in the store that are not a raw object of a known format."""


def encode(metadata: dict, payload: bytes) -> bytes:
    return orjson.dumps({"format": FORMAT, **metadata}) + b"\n" + payload


def decode(data: bytes) -> tuple[dict, bytes]:
    head, sep, payload = data.partition(b"\n")
    if not sep:
        raise RawObjectError("no metadata line")
    try:
        metadata = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise RawObjectError(f"metadata line is not JSON: {exc}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise RawObjectError(f"unknown raw object format {metadata.get('format') if isinstance(metadata, dict) else None!r}")
    return metadata, payload
