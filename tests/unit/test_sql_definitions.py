"""One live definition per SQL object: the repeatable files and the search template never define the same
function, view or trigger twice, so a reader finds each in exactly one place."""

from __future__ import annotations

import re
from collections import Counter

from pipeline.migrations import checksummed, repeatable, sql_dir

DEFINITION = re.compile(
    r"^create\s+(?:or\s+replace\s+)?(function|view|trigger)\s+([\w.]+)(?:\s+(?:before|after)\s+[\w\s,]+?\son\s+([\w.]+))?",
    re.IGNORECASE | re.MULTILINE,
)


def definitions() -> list[tuple[str, str]]:
    found = []
    for migration in repeatable():
        for kind, name, table in DEFINITION.findall(migration.sql):
            found.append((kind.lower(), f"{name} on {table}" if table else name))
    return found


def test_no_object_is_defined_in_two_places() -> None:
    twice = [what for what, n in Counter(definitions()).items() if n > 1]
    assert not twice, f"defined more than once in repeatable/: {twice}"


def test_search_functions_come_from_the_template_only() -> None:
    assert not [name for kind, name in definitions() if name.startswith("public.match_")]
    assert (sql_dir() / "templates" / "search.sql").is_file()
    assert "templates/search.sql" in {m.name for m in checksummed()}


def test_the_pattern_sees_definitions() -> None:
    names = {name for _, name in definitions()}
    assert {"pipeline.enqueue_row", "pipeline.lag", "public.predict"} <= names
    assert ("trigger", "pipeline_keep_derived on public.dores") in definitions()
