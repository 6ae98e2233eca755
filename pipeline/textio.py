"""Texts in for the n8n-facing commands: stdin (plain, one per line, or JSON) and document files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline.errors import InputError

DOCUMENT_SUFFIXES = {".txt", ".md", ".markdown"}
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")


def parse_stdin(raw: str, *, lines: bool = False) -> list[str]:
    """Texts from standard input.

    A JSON object `{"text": "..."}` or `{"texts": [...]}` is understood (n8n sends JSON bodies); with
    `lines`, each non-empty line is one text; otherwise the whole input is one text.
    """
    stripped = raw.strip()
    if not stripped:
        raise InputError('nothing on standard input: pipe a text, e.g. echo "texto" | pipeline embed --stdin')
    if stripped.startswith("{"):
        try:
            body = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"standard input looks like JSON but is not valid: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        return _texts_from_json(body)
    if lines:
        return [line.strip() for line in raw.splitlines() if line.strip()]
    return [stripped]


def _texts_from_json(body: Any) -> list[str]:
    if isinstance(body, dict) and isinstance(body.get("text"), str):
        return [body["text"]]
    if isinstance(body, dict) and isinstance(body.get("texts"), list):
        texts = body["texts"]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InputError('"texts" must be a non-empty list of strings')
        return list(texts)
    raise InputError('JSON input must be {"text": "..."} or {"texts": ["...", ...]}')


def read_document(path: Path) -> dict[str, Any]:
    """Title (first Markdown heading, else the file name), content and metadata of a .txt/.md file."""
    if path.suffix.lower() not in DOCUMENT_SUFFIXES:
        raise InputError(f"{path}: only .txt and .md files are loaded as documents")
    try:
        content = path.read_text(encoding="utf-8-sig").replace("\x00", "")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8: save it as UTF-8 and try again") from None
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    title = path.stem.replace("_", " ").replace("-", " ").strip()
    for line in content.splitlines():
        match = _HEADING.match(line)
        if match:
            title = match.group(1)
            break
        if line.strip():
            break  # the first non-empty line is not a heading: keep the file name
    return {"title": title, "content": content, "metadata": {"source": str(path), "file_name": path.name}}


def document_paths(paths: list[str]) -> list[Path]:
    """Files named, and .txt/.md files under directories named (sorted, recursive)."""
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in DOCUMENT_SUFFIXES and p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"{path}: no such file or directory")
    if not found:
        raise InputError("no .txt or .md files found in " + ", ".join(paths))
    return found
