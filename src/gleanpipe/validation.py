"""Validate Glean ping bodies against the project-owned ``glean.1`` JSON Schema.

Fast path: jsonschema-rs (compiled, about 40x faster than the pure-Python validators on a
real ping). Only rejected pings pay for a ``jsonschema.Draft7Validator`` pass that collects
their errors with their paths (at most MAX_ERRORS) and renders them compactly.

What a rejected ping may cost is bounded: a gzip body of a few KB can hold millions of errors
(``[1, 1, 1, ...]`` where strings belong), and collecting all of them took seconds of CPU and
hundreds of MB. So the pure-Python pass stops after MAX_ERRORS + 1 errors, and runs only on a
payload of at most MAX_LISTED_BYTES (it walks every valid value before an error, at about
1 us each); a larger payload gets its first error only, from jsonschema-rs, which stops there.
"""

from __future__ import annotations

import functools
import importlib.resources
import itertools
import json
import reprlib
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import jsonschema_rs

from .config import SettingError, refuse_special_file

SCHEMA_NAME = "glean.1.schema.json"
SCHEMA_ENV = "GLEANPIPE_SCHEMA_PATH"
MAX_REPR = 60
MAX_ERROR = 200
MAX_RENDER = 1024
MAX_SHOWN_ERRORS = 10  # schema errors listed in a 400's message; the rest are counted (+N more)
MAX_ERRORS = 100  # schema errors collected for one ping; the count in the message stops there
MAX_LISTED_BYTES = 64 * 1024  # above this payload size, only the first schema error is reported


def load_schema(override: str = "") -> dict[str, Any]:
    """Load the ping schema: ``override`` (Config.schema_path, GLEANPIPE_SCHEMA_PATH) when given,
    else the package data, then the repo copy."""
    if override:
        refuse_special_file(SCHEMA_ENV, override)  # /dev/zero, a FIFO: read_text read for ever, taking memory
        try:
            schema = json.loads(Path(override).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingError(f"{SCHEMA_ENV}: cannot read {override}: {exc.strerror or exc}") from None
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested past what json reads
            raise SettingError(f"{SCHEMA_ENV}: {override} is not a JSON file: {exc}") from None
        if not isinstance(schema, dict):
            raise SettingError(f"{SCHEMA_ENV}: {override} holds a JSON {type(schema).__name__}, not a schema object")
        return schema
    try:
        packaged = importlib.resources.files("gleanpipe") / "schemas" / SCHEMA_NAME
        if packaged.is_file():
            return json.loads(packaged.read_text(encoding="utf-8"))
    except (ModuleNotFoundError, TypeError, OSError):
        pass
    repo_copy = Path(__file__).resolve().parents[2] / "schemas" / SCHEMA_NAME
    return json.loads(repo_copy.read_text(encoding="utf-8"))


# repr() of a value nested deep enough raises RecursionError (Python's repr of a list or dict
# recurses: 3.11 stops at its recursion limit, about 1,000 levels; 3.12 and 3.13 at a C limit of their
# own, some thousands); the edge refuses such a ping first (nesting.MAX_JSON_DEPTH), and _repr
# keeps a deep value that comes here some other way from failing the rendering of its error
_SHALLOW = reprlib.Repr()
_SHALLOW.maxlevel, _SHALLOW.maxstring, _SHALLOW.maxother = 6, MAX_REPR, MAX_REPR
_SHALLOW.maxlist = _SHALLOW.maxdict = _SHALLOW.maxtuple = 10


def _repr(value: Any) -> str:
    """repr(value), or for a value too deep for it, reprlib's short form (``[[[[[[...]]]]]]``)."""
    try:
        return repr(value)
    except RecursionError:
        return _SHALLOW.repr(value)


def _short(value: Any, limit: int = MAX_REPR) -> str:
    text = _repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "$"


def _path_key(parts: Iterable[Any]) -> tuple:
    """Sort key of a path: list indexes in number order (``[2]`` before ``[10]``)."""
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in parts)


def _message(error: jsonschema.ValidationError) -> str:
    msg = error.message
    full = _repr(error.instance)
    if len(full) > MAX_REPR:
        msg = msg.replace(full, _short(error.instance))
    return _cut(msg)


def _cut(msg: str) -> str:
    msg = " ".join(msg.split())
    return msg if len(msg) <= MAX_ERROR else msg[: MAX_ERROR - 3] + "..."


class SchemaErrors(list):
    """``path: message`` strings, sorted by path. ``more`` says what was left uncounted:
    "" (every error is listed), "capped" (there were over MAX_ERRORS) or "large" (the payload is
    over MAX_LISTED_BYTES: only the first error was looked for)."""

    def __init__(self, items: Iterable[str] = (), more: str = "") -> None:
        super().__init__(items)
        self.more = more


class PingValidator:
    """Compiled schema plus a lazily built error-collecting validator; without ``schema``, the
    bundled one (GLEANPIPE_SCHEMA_PATH reaches it through ``default_validator(config.schema_path)``)."""

    def __init__(self, schema: dict[str, Any] | None = None) -> None:
        self.schema: dict[str, Any] = schema if schema is not None else load_schema()
        self._fast = jsonschema_rs.Draft7Validator(self.schema)
        self._slow: jsonschema.Draft7Validator | None = None

    def is_valid(self, doc: Any) -> bool:
        """True when the fast validator accepts ``doc``."""
        return self._fast.is_valid(doc)

    def validate(self, doc: Any, size: int = 0) -> SchemaErrors:
        """[] for a valid ping, else ``path: message`` strings sorted by path: at most MAX_ERRORS,
        or only the first error when ``size`` (the payload's bytes) is over MAX_LISTED_BYTES."""
        if self.is_valid(doc):
            return SchemaErrors()
        if size > MAX_LISTED_BYTES:
            return SchemaErrors([self._first_error(doc)], more="large")
        if self._slow is None:
            self._slow = jsonschema.Draft7Validator(self.schema)
        try:
            found = [(_path_key(e.absolute_path), _path(e.absolute_path), _message(e))
                     for e in itertools.islice(self._slow.iter_errors(doc), MAX_ERRORS + 1)]
        except RecursionError:  # jsonschema's own messages repr() the value (see _repr): its first error alone
            return SchemaErrors([self._first_error(doc)])
        if not found:  # validators disagree: never report a rejected ping as valid
            return SchemaErrors(["$: document does not match the ping schema"])
        capped = len(found) > MAX_ERRORS
        return SchemaErrors([f"{path}: {msg}" for _, path, msg in sorted(found[:MAX_ERRORS])],
                            more="capped" if capped else "")

    def _first_error(self, doc: Any) -> str:
        """``path: message`` of the first error jsonschema-rs finds. It stops there, but gives up
        on a value nested about 255 levels deep ("Recursion limit reached", a ValueError)."""
        try:
            self._fast.validate(doc)
        except jsonschema_rs.ValidationError as exc:
            return f"{_path(exc.instance_path)}: {_cut(exc.message)}"
        except ValueError:
            pass
        return "$: document does not match the ping schema"

    @staticmethod
    def render(errors: list[str], limit: int = MAX_SHOWN_ERRORS) -> str:
        """Join up to ``limit`` errors with '; ' in at most MAX_RENDER characters; ``(+N more)``
        counts the errors not shown whole (left out, or cut by the character cap)."""
        kind = getattr(errors, "more", "")
        listed = errors[:limit]
        whole = len(listed)
        while True:  # the count's own length decides the room: settle it
            left = len(errors) - whole
            if kind == "large":
                more = f" (only the first error is looked for in a payload over {MAX_LISTED_BYTES} bytes)"
            elif kind == "capped":
                more = f" (+{left} more; counting stops at {MAX_ERRORS})"
            else:
                more = f" (+{left} more)" if left else ""
            text = "; ".join(listed)
            room = MAX_RENDER - len(more)
            if len(text) <= room:
                return text + more
            text = text[: room - 3]
            fits, end = 0, -2
            for e in listed:  # errors that end before the cut
                end += 2 + len(e)
                if end > len(text):
                    break
                fits += 1
            if fits == whole:
                return text + "..." + more
            whole = fits


@functools.lru_cache(maxsize=1)
def default_validator(schema_path: str = "") -> PingValidator:
    """Process-wide validator of ``schema_path`` (Config.schema_path; "": the bundled schema),
    built on first use."""
    return PingValidator(load_schema(schema_path))


def validate_ping(doc: Any, size: int = 0) -> SchemaErrors:
    """Validate ``doc`` with the bundled schema's validator."""
    return default_validator().validate(doc, size)


def render(errors: list[str], limit: int = MAX_SHOWN_ERRORS) -> str:
    """Module-level alias of :meth:`PingValidator.render`."""
    return PingValidator.render(errors, limit)
