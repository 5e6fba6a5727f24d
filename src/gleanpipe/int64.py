"""Integers a BIGINT column holds as sent: the transform refuses a ping with one that does not
fit (a load error naming the field), rather than the warehouse refusing its whole batch, or
storing another number (orjson reads an integer past 64 bits as a rounded float)."""

from __future__ import annotations

from .table_schema import CLIENT_INFO, EVENT, METRIC_TYPES, PING_INFO, T, list_of


class NotInt64(ValueError):
    """A value its BIGINT column cannot hold as sent; the message names the field."""


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EXACT_FLOAT = 2**53  # from here on a float is not always the integer that was sent


def _check_int(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # other shapes are left to the warehouse
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise NotInt64(f"{where}: {value} is outside the 64-bit integer range ({INT64_MIN} to {INT64_MAX})")
    elif not value.is_integer():
        raise NotInt64(f"{where}: {value!r} is not a whole number")
    elif abs(value) >= EXACT_FLOAT:
        raise NotInt64(f"{where}: {value!r} is not an exact integer (a JSON integer past 64 bits, or a number "
                       "with an exponent, is read as a rounded float)")


def int_checker(t: T):
    """check(value, where) for the BIGINT values in a value of type ``t`` (None if it has none): it
    raises NotInt64 for an integer outside 64 bits, or a float that is not a whole number under
    2**53. ``where`` names the value (``metrics.counter.a.b``); a key/value list's item is named
    by its key."""
    if t.kind == "BIGINT":
        return _check_int
    if t.kind == "LIST":
        item = int_checker(t.item)
        if item is None:
            return None
        by_key = [n for n, _ in t.item.fields] == ["key", "value"]  # an item is named by its key

        def check_list(value, where):
            if isinstance(value, list):
                for i, v in enumerate(value):
                    item(v, where if by_key else f"{where}[{i}]")
        return check_list
    if t.kind != "STRUCT":
        return None
    fields = [(n, c) for n, ft in t.fields if (c := int_checker(ft)) is not None]
    if not fields:
        return None
    if [n for n, _ in t.fields] == ["key", "value"]:
        parts = dict(fields)

        def check_key_value(value, where):
            if isinstance(value, dict):
                if "key" in parts:
                    parts["key"](value.get("key"), f"{where} key")
                if "value" in parts:
                    parts["value"](value.get("value"), f"{where}[{value.get('key')!r}]")
        return check_key_value

    def check_struct(value, where):
        if isinstance(value, dict):
            for name, check in fields:
                if value.get(name) is not None:
                    check(value[name], f"{where}.{name}")
    return check_struct


METRIC_INTS = {mtype: int_checker(t) for mtype, t in METRIC_TYPES.items()}
CLIENT_INFO_INTS, PING_INFO_INTS, EVENTS_INTS = (int_checker(t) for t in (CLIENT_INFO, PING_INFO, list_of(EVENT)))
