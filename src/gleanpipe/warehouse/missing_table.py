"""What to tell a user whose query names a table the DuckDB warehouse does not have (yet).

A ping's table and its view are made when the first ping of that type is loaded, so a query
from the README (``org_example_toolbox.baseline``) fails until the app sends a baseline ping.
DuckDB's own message then suggests the nearest name, which can be another thing entirely
("Did you mean daily_active_clients?", or "pg_settings" for a name without its dataset).
``hint`` adds what the warehouse does have, in the words of the pipeline.
"""

from __future__ import annotations

import re

SHOWN = 12  # names listed at most per dataset, and datasets at most

_NO_SCHEMA = re.compile(r'does not exist because schema "([^".]+)" does not exist')
_NO_TABLE = re.compile(r'^Catalog Error: Table with name ([^".\s]+) does not exist!')
_DID_YOU_MEAN = re.compile(r"^Did you mean .*\n?", re.MULTILINE)


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _qualifiers(sql: str, table: str) -> list[str]:
    """The names ``sql`` puts before ``.table`` (quoted or not), in order of appearance."""
    name = re.escape(table)
    found = re.findall(rf'(?:"([^"]+)"|([A-Za-z_][A-Za-z0-9_]*))\s*\.\s*(?:"{name}"|{name}\b)', sql, re.IGNORECASE)
    return [quoted or bare for quoted, bare in found]


def _advice(message: str, sql: str, datasets: dict[str, list[str]]) -> str | None:
    schema = _NO_SCHEMA.search(message)
    table = _NO_TABLE.search(message)
    if schema is None and table is None:  # a function, a type, a three-part name...: DuckDB's words
        return None
    if not datasets:
        return "The warehouse has no tables yet: a ping's table is made when the first ping of its type is loaded."
    if schema is not None:
        return (f"There is no dataset {schema.group(1)}: an app's dataset is made when its first ping is loaded, "
                f"named after the app id with dots and dashes as underscores. Datasets: {_listed(sorted(datasets))}.")
    name = table.group(1)
    lowered = {d.lower(): d for d in datasets}
    named = [lowered[s.lower()] for s in _qualifiers(sql, name) if s.lower() in lowered]
    if named:
        return (f"{named[0]} has no table or view {name} yet: a ping's table and its view are made when the "
                f"first ping of that type is loaded. {named[0]} has: {_listed(datasets[named[0]])}.")
    holders = [d for d in sorted(datasets) if name.lower() in (t.lower() for t in datasets[d])]
    if holders:
        return f"Tables are in one dataset per app: name it, as in {holders[0]}.{name}."
    return (f"Tables are in one dataset per app (as in {next(iter(sorted(datasets)))}.metrics), and none has "
            f"{name} yet: a ping's table is made when the first ping of that type is loaded. "
            f"Datasets: {_listed(sorted(datasets))}.")


def with_hint(message: str, sql: str, datasets: dict[str, list[str]]) -> str | None:
    """DuckDB's catalog error ``message`` for the query ``sql``, with what the warehouse has
    (``datasets``: its app datasets and their tables and views) in place of DuckDB's guess at
    a name; None when the error is not about a missing table or dataset."""
    advice = _advice(message, sql, datasets)
    if advice is None:
        return None
    return f"{_DID_YOU_MEAN.sub('', message).rstrip()}\n\n{advice}"
