"""How deep a ping's JSON may nest (MAX_JSON_DEPTH), and the checks of it: the edge refuses a
deeper ping with a 400, and the loader names the depth when an older stored ping is too deep.

Levels count containers: the ping's own object is level 1, ``{"metrics": {}}`` has 2 levels, and a
value inside ``metrics.object.<id>`` is at level 4. The deepest structure the Glean schema defines
is 6 levels (``metrics.labeled_timing_distribution.<id>.<label>.values``); an ``object`` metric
nests as its metrics.yaml structure says, and no SDK sends anything near 64 levels.

What nests deeper fails further on: the edge's schema errors quote the offending value with
Python's recursive repr (a RecursionError, a 500, from about 967 levels under gunicorn on 3.11;
3.12 and 3.13 refuse later);
jsonschema-rs gives up from about 255 levels (its "Recursion limit reached" when it reports the
first error of a payload over 64 KiB, a 500 too); the loader writes rows with orjson.dumps, which
writes at most 254 levels (ORJSON_MAX_DEPTH), and a row nests an object metric's value (and
additional_properties a ping's unknown fields) as deep as the ping does, so a ping of 255 levels
was stored with a 200 and never loaded; orjson.loads reads at most 1024 (the edge answers that
with this limit's message too). 64 is far below all of these, and far above any real ping.
"""

from __future__ import annotations

import threading

import orjson

MAX_JSON_DEPTH = 64
ORJSON_MAX_DEPTH = 254  # orjson.dumps refuses more levels than this: "Recursion limit reached"
ORJSON_TOO_DEEP = "Recursion limit reached"
SHOWN_PATH = 100  # characters of the path shown in a message; the rest is cut to "..."


def deeper_than(doc, payload: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``doc``, parsed from ``payload``, nests deeper than ``limit`` levels.

    Cheap for the edge's hot path. A payload with no more than ``limit`` ``{`` and ``[`` bytes in
    all (those in strings count too) cannot: two scans at C speed (about 2 us for a 2 KB ping),
    and a usual ping stops there (a 2 KB metrics ping has about 40). Another is written by
    orjson.dumps, in C, inside ORJSON_MAX_DEPTH - ``limit`` lists of padding: orjson refuses it
    exactly when ``doc`` nests deeper than ``limit``. On a 47 KB metrics ping (731 brackets) the
    whole check took 85 us, against 330 us for a walk of the parsed document in Python; and it has
    no recursion of ours. (An orjson that does not refuse deep JSON, before 3.11.5, gets the walk,
    ``path_below``.)"""
    opened = payload.count(b"{")  # a large ping has more than ``limit`` of these alone: one scan
    if opened <= limit and opened + payload.count(b"[") <= limit:
        return False
    if not _ORJSON_STOPS or not 0 < limit < ORJSON_MAX_DEPTH:  # (the padding needs a level at least)
        return path_below(doc, limit) is not None
    with _padding_lock:
        slot, padded = _padding.get(limit) or _padding.setdefault(limit, _pad(ORJSON_MAX_DEPTH - limit))
        slot[0] = doc
        try:
            orjson.dumps(padded)
            return False
        except orjson.JSONEncodeError as exc:
            if str(exc) == ORJSON_TOO_DEEP:
                return True
        finally:
            slot[0] = None
    # a value orjson does not write (none that orjson.loads makes: it reads a 20-digit integer as a
    # float, and refuses lone surrogates), found before the depth: then the walk says
    return path_below(doc, limit) is not None


def _pad(levels: int) -> tuple[list, list]:
    """``levels`` nested lists: the innermost (the slot, which holds the document for the time of
    one check) and the outermost. Built once per limit (building them for each ping cost more than
    writing a 2 KB ping), and used under a lock, since its slot is shared."""
    slot = padded = [None]
    for _ in range(levels - 1):
        padded = [padded]
    return slot, padded


_padding: dict[int, tuple[list, list]] = {}
_padding_lock = threading.Lock()


def _orjson_stops() -> bool:
    """Whether this orjson writes ORJSON_MAX_DEPTH levels and refuses one more, as ``deeper_than`` needs."""
    deep: list = []
    for _ in range(ORJSON_MAX_DEPTH - 1):
        deep = [deep]
    try:
        orjson.dumps(deep)
    except orjson.JSONEncodeError:
        return False
    try:
        orjson.dumps([deep])
    except orjson.JSONEncodeError as exc:
        return str(exc) == ORJSON_TOO_DEEP
    return False


_ORJSON_STOPS = _orjson_stops()


def path_below(doc, limit: int) -> list | None:
    """The path (keys and list indexes) to the first container at level ``limit`` + 1, in document
    order; None when ``doc`` nests no deeper than ``limit``. Walks in Python, without recursion
    (a stack of iterators), and only as far as that container: meant for a document found too deep,
    and the walk of ``deeper_than`` when orjson cannot count for it."""
    if type(doc) not in (dict, list):
        return None
    if limit < 1:  # ``doc`` itself is deeper
        return []
    path: list = []
    stack = [iter(doc.items() if type(doc) is dict else enumerate(doc))]
    while stack:
        for key, value in stack[-1]:
            if type(value) in (dict, list):
                path.append(key)
                if len(stack) >= limit:  # ``value`` is at level len(stack) + 1
                    return path
                stack.append(iter(value.items() if type(value) is dict else enumerate(value)))
                break
        else:
            stack.pop()
            if path:
                path.pop()
    return None


def path_text(parts: list) -> str:
    """``metrics.object.toolbox.deep[0][0]``, cut to SHOWN_PATH characters."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        if len(out) > SHOWN_PATH:
            return out[: SHOWN_PATH - 3] + "..."
    return out or "$"


def where_deeper(doc, limit: int) -> str:
    """Where ``doc``, which nests deeper than ``limit``, passes it: ``level 65 begins at metrics.object.a.b[0]...``."""
    return f"level {limit + 1} begins at {path_text(path_below(doc, limit) or [])}"


def too_deep_message(doc) -> str:
    """What the edge answers for a ping nested deeper than MAX_JSON_DEPTH."""
    return (f"body nests JSON deeper than {MAX_JSON_DEPTH} levels, the most a ping may have (MAX_JSON_DEPTH): "
            + where_deeper(doc, MAX_JSON_DEPTH))
