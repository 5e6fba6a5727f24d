"""The README's settings tables and config.SETTINGS say the same thing: every variable in both,
with the same default. A new user reads the table, the code reads SETTINGS."""

from __future__ import annotations

import re
from pathlib import Path

from gleanpipe.config import SETTINGS

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| `(GLEANPIPE_[A-Z0-9_]+)` \| ([^|]*) \|")


def readme_settings() -> dict[str, str]:
    rows = {}
    for line in README.read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = m.group(2).strip()
    return rows


def documented_default(cell: str) -> str:
    """`1048576` (1 MiB) -> "1048576"; a description such as (the bundled schema), (empty),
    `<project>-gleanpipe-raw` or "the region" stands for an empty default that the code derives."""
    m = re.fullmatch(r"`([^`]*)`(\s*\(.*\))?", cell)
    if m and "<" not in m.group(1):
        return m.group(1)
    return ""


def test_every_setting_is_in_the_readme_and_every_documented_variable_is_a_setting():
    documented = readme_settings()
    assert len(documented) >= 45  # both tables were read: serve's and the deploy settings
    assert sorted(set(SETTINGS) - set(documented)) == []
    assert sorted(set(documented) - set(SETTINGS)) == []


def test_documented_defaults_are_the_defaults_in_config():
    documented = readme_settings()
    wrong = {name: (documented_default(cell), SETTINGS[name].default)
             for name, cell in documented.items() if documented_default(cell) != SETTINGS[name].default}
    assert wrong == {}
    # the parsing itself: a literal, a literal with a note, and a derived default
    assert documented_default(documented["GLEANPIPE_MAX_WIRE_BYTES"]) == "1048576"
    assert documented_default(documented["GLEANPIPE_STORE_URL"]) == ""
    assert documented_default(documented["GLEANPIPE_SCHEMA_PATH"]) == ""
