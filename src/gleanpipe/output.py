"""``gleanpipe query``'s output: a table for a terminal, or csv and json written a page at a time."""

from __future__ import annotations

import csv
import io

import click
import orjson

from .jsonvalues import dumps

# a table is for a terminal: control characters from ping data are shown, not sent to it (an
# escape sequence in a label could retitle the terminal or hide rows)
_SHOWN_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]} | {ord("\n"): "\\n", ord("\t"): "\\t"}
# widest column of a table (README "Fixed limits"): a longer value is cut, ending in "…" (csv and json
# give it whole)
TABLE_CELL_CHARS = 60


def counted(n: int, noun: str) -> str:
    """``n`` and the noun, singular for one: "1 ping", "2 pings" ("metrics": "1 metric")."""
    return f"{n} {noun if n == 1 else noun + 's'}"


def format_rows(columns: list[str], rows: list, fmt: str) -> str:
    if fmt == "table":
        return _table(columns, _plain(rows))
    return "".join(stream_rows(columns, iter([rows]), fmt)).rstrip("\n")


def _plain(rows: list) -> list:
    return orjson.loads(dumps(rows))  # the same plain values whether they came from the server or the file


def _cell(v) -> str:
    return "" if v is None else (v if isinstance(v, str) else orjson.dumps(v).decode())


def stream_rows(columns: list[str], pages, fmt: str):
    """``--format json`` or ``csv`` of the rows in ``pages``, as text pieces, a page at a time."""
    if fmt == "json":
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:  # a JSON object keeps one value per name: the others would be lost without a word
            raise click.ClickException(f"--format json needs distinct column names, and {', '.join(repeated)} "
                                       "is used more than once: give the columns names of their own (AS ...)")
        first = True
        for rows in pages:
            if rows:
                # the page's objects as orjson indents them inside a list, without the list's [ ]
                text = orjson.dumps([dict(zip(columns, r)) for r in _plain(rows)], option=orjson.OPT_INDENT_2)
                yield ("[\n" if first else ",\n") + text.decode()[2:-2]
                first = False
        yield "[]" if first else "\n]"
        return
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    yield buf.getvalue()
    for rows in pages:
        buf.seek(0)
        buf.truncate()
        w.writerows([[_cell(v) for v in r] for r in _plain(rows)])
        yield buf.getvalue()


def _table(columns: list[str], rows: list) -> str:
    table = [[str(c) for c in columns]] + [[_cell(v).translate(_SHOWN_CONTROLS) for v in r] for r in rows]
    widths = [min(max(len(r[i]) for r in table), TABLE_CELL_CHARS) for i in range(len(columns))]
    clip = lambda s, w: s if len(s) <= w else s[: w - 1] + "…"
    lines = ["  ".join(clip(v, w).ljust(w) for v, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"({counted(len(rows), 'row')})")
    return "\n".join(lines)
