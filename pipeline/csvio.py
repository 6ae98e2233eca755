"""CSV in and out, with the rules for bad files stated once.

Rules: the file must be UTF-8 (a BOM is fine); the delimiter is `,`, `;`, tab or `|`, detected from the
header; NUL bytes are removed (PostgreSQL text cannot hold them); rows whose `dor_base` is empty are
skipped and counted; every column other than `dor_base` and `solucao_graventum` goes into `metadata`.
A file is loaded in one transaction: an error part-way leaves nothing behind.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from pipeline.db import Connection, translate_errors
from pipeline.errors import InputError

logger = logging.getLogger(__name__)

DELIMITERS = [",", ";", "\t", "|"]
csv.field_size_limit(64 * 1024 * 1024)


@dataclasses.dataclass
class ImportReport:
    inserted: int = 0
    skipped_empty: int = 0


def _lines(path: Path) -> Iterator[str]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            for line in handle:
                yield line.replace("\x00", "")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path} is not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start} of a read block); "
            "save it as UTF-8 and try again"
        ) from None


def open_csv(path: Path, required: tuple[str, ...]) -> tuple[list[str], Iterator[dict[str, str]]]:
    """Header and rows of a CSV; a one-line `InputError` if it cannot be read or lacks a column."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    lines = _lines(path)
    header_line = next(lines, None)
    if header_line is None or not header_line.strip():
        raise InputError(f"{path} is empty")
    delimiter = max(DELIMITERS, key=header_line.count)
    header = next(csv.reader([header_line], delimiter=delimiter))
    header = [name.strip() for name in header]
    missing = [name for name in required if name not in header]
    if missing:
        raise InputError(f"{path} has no {', '.join(missing)} column (columns found: {', '.join(header) or 'none'})")
    reader = csv.DictReader(lines, fieldnames=header, delimiter=delimiter, restval="")
    return header, reader


def import_dores(conn: Connection, path: Path) -> ImportReport:
    """Load a CSV with `dor_base` (and usually `solucao_graventum`) into `dores`."""
    header, rows = open_csv(path, ("dor_base",))
    extra = [name for name in header if name not in ("dor_base", "solucao_graventum") and name]
    report = ImportReport()
    statement = "copy public.dores (dor_base, solucao_graventum, metadata) from stdin"
    with translate_errors(), conn.transaction(), conn.cursor().copy(statement) as copy:
        try:
            for row in rows:
                dor = (row.get("dor_base") or "").strip()
                if not dor:
                    report.skipped_empty += 1
                    continue
                solucao = (row.get("solucao_graventum") or "").strip() or None
                metadata = {name: row[name] for name in extra if row.get(name) not in (None, "")}
                copy.write_row((dor, solucao, json.dumps(metadata, ensure_ascii=False)))
                report.inserted += 1
        except csv.Error as exc:
            raise InputError(f"{path}: malformed CSV: {exc}") from None
    if report.skipped_empty:
        logger.warning("%s: skipped %d rows with an empty dor_base", path, report.skipped_empty)
    return report


def export_dores(conn: Connection, out: io.TextIOBase | io.TextIOWrapper) -> int:
    """Write dores (id, dor_base, solucao_graventum, segmento, metadata) as CSV; return the row count."""
    writer = csv.writer(out)
    writer.writerow(["id", "dor_base", "solucao_graventum", "segmento", "metadata"])
    count = 0
    with translate_errors(), conn.transaction(), conn.cursor(name="export") as cursor:
        cursor.execute(
            "select id, dor_base, coalesce(solucao_graventum, '') as solucao, "
            "coalesce(segmento::text, '') as segmento, metadata::text as metadata from public.dores order by id"
        )
        for row in cursor:
            writer.writerow([row["id"], row["dor_base"], row["solucao"], row["segmento"], row["metadata"]])
            count += 1
    return count
