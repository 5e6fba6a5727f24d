"""What to tell a user whose query names a table the warehouse does not have (yet).

A ping's table and its view are made when the first ping of that type is loaded, so a query
from the README (``org_example_toolbox.baseline``) fails until the app sends a baseline ping.
DuckDB's own message then suggests the nearest name, which can be another thing entirely
("Did you mean daily_active_clients?", or "pg_settings" for a name without its dataset), and
BigQuery's says only "Not found". ``with_hint`` (DuckDB) and ``bigquery_hint`` add what the
warehouse does have, in the words of the pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Callable

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
    return advise(sql, datasets, missing_dataset=schema and schema.group(1), table=table and table.group(1))


def advise(sql: str, datasets: dict[str, list[str]], *, missing_dataset: str | None = None,
           table: str | None = None, dataset: str | None = None) -> str:
    """What the warehouse has, for a query that named a dataset it does not have
    (``missing_dataset``), or a ``table`` it does not have: in ``dataset`` when the warehouse said
    which, else in the dataset the SQL puts before it. ``datasets``: the app datasets, each with
    its tables and views (those of datasets the advice cannot name may be left empty)."""
    if not datasets:
        return "The warehouse has no tables yet: a ping's table is made when the first ping of its type is loaded."
    if missing_dataset is not None:
        return (f"There is no dataset {missing_dataset}: an app's dataset is made when its first ping is loaded, "
                f"named after the app id with dots and dashes as underscores. Datasets: {_listed(sorted(datasets))}.")
    name = table
    lowered = {d.lower(): d for d in datasets}
    named = [lowered[s.lower()] for s in ([dataset] if dataset else _qualifiers(sql, name)) if s.lower() in lowered]
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


# BigQuery's 404 for a query's missing dataset or table ("Not found: Dataset my-project:nowhere was
# not found in location US", "Not found: Table my-project:app.baseline was not found in ..."; the
# emulator puts a dot after the project); a project id may hold dashes, and a domain-scoped one a
# colon of its own (example.com:project).
_BQ_NO_DATASET = re.compile(r"Not found: Dataset (?:\S+[:.])?(\w+) was not found")
_BQ_NO_TABLE = re.compile(r"Not found: Table (?:\S+[:.])?(\w+)\.(\w+) was not found")


def bigquery_hint(message: str, sql: str, app_datasets: Callable[[str | None], dict[str, list[str]]]) -> str | None:
    """BigQuery's 404 ``message`` for the query ``sql``, with what the warehouse has (``advise``);
    None when it is not about a missing dataset or table. ``app_datasets(listed)`` gives the app
    datasets, with the tables and views of ``listed`` (the dataset whose table is missing) only."""
    if (gone := _BQ_NO_DATASET.search(message)) is not None:
        advice = advise(sql, app_datasets(None), missing_dataset=gone.group(1))
    elif (within := _BQ_NO_TABLE.search(message)) is not None:
        advice = advise(sql, app_datasets(within.group(1)), table=within.group(2), dataset=within.group(1))
    else:
        return None
    return f"{message}\n\n{advice}"
