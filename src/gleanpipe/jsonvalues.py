"""Warehouse values as JSON: what the admin API, `query --format json`, the dictionary and explore
send. orjson with a ``default=`` for the types it does not write (Decimal, UUID, bytes, ...), and
``shown_values`` for what it would write wrongly or refuse (inf and nan, integers past 64 bits,
TIMETZ, MAP keys)."""

from __future__ import annotations

import math
from datetime import date, datetime, time as clock_time
from decimal import Decimal
from uuid import UUID

import orjson


def to_jsonable(value):
    """orjson default= for warehouse values (Decimal, UUID, bytes, ...)."""
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def shown_values(value):
    """``value`` (a query row, a cell) with every inf, -inf and nan as DuckDB prints it, every
    whole number past 64 bits (HUGEINT, a large SUM) as its digits, every TIMETZ as DuckDB prints
    it (``12:00:00+05``), and every MAP key as a text when orjson cannot write it as one. JSON has
    no inf or nan: orjson would turn them into null, and a query would show them as NULL; and
    orjson refuses integers past 64 bits, a time with a time zone, and a key that is a Decimal,
    bytes or any such type (``default=`` is not asked for these), which made the query fail."""
    if isinstance(value, float):
        return value if math.isfinite(value) else "nan" if value != value else "inf" if value > 0 else "-inf"
    if isinstance(value, int) and not -2**63 <= value < 2**64:
        return str(value)
    if isinstance(value, clock_time) and value.tzinfo is not None:
        return _timetz_text(value)
    if isinstance(value, (list, tuple)):
        return [shown_values(v) for v in value]
    if isinstance(value, dict):
        return {_shown_key(k): shown_values(v) for k, v in value.items()}
    return value


def _shown_key(key):
    """A MAP key as orjson's OPT_NON_STR_KEYS writes it, or as text (what ``to_jsonable`` makes of
    the same value) for a key it refuses."""
    key = shown_values(key)
    if key is None or isinstance(key, (str, int, float, date, clock_time, UUID)):  # bool is an int
        return key
    return to_jsonable(key)


def _timetz_text(value: clock_time) -> str:
    """A TIMETZ as DuckDB prints it: ``12:00:00.5+05:30``, ``08:00:00-00:30:15``, ``12:00:00+00``."""
    offset = int(value.utcoffset().total_seconds())
    hours, rest = divmod(abs(offset), 3600)
    minutes, seconds = divmod(rest, 60)
    zone = f"{'-' if offset < 0 else '+'}{hours:02}" + (f":{minutes:02}" if minutes or seconds else "") \
        + (f":{seconds:02}" if seconds else "")
    text = value.replace(tzinfo=None).isoformat()
    return (text.rstrip("0") if "." in text else text) + zone


def dumps(obj) -> bytes:
    return orjson.dumps(obj, default=to_jsonable, option=orjson.OPT_NON_STR_KEYS)
