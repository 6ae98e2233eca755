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


_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)


def read_document(path: Path, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Title, content and metadata of a .txt/.md file.

    Metadata: the file's name and path, then its YAML front matter (`---` ... `---` at the top; a `title`
    there is the title), then `metadata` (from `--metadata`). The title is otherwise the first Markdown
    heading, taken out of the content (the model reads title and content together: it would read the
    heading twice), else the file name.
    """
    if path.suffix.lower() not in DOCUMENT_SUFFIXES:
        raise InputError(f"{path}: only .txt and .md files are loaded as documents")
    try:
        content = path.read_text(encoding="utf-8-sig").replace("\x00", "")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8: save it as UTF-8 and try again") from None
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    meta: dict[str, Any] = {"source": str(path), "file_name": path.name}
    front = _FRONT_MATTER.match(content)
    if front:
        meta.update(_front_matter(path, front.group(1)))
        content = content[front.end() :]
    meta.update(metadata or {})
    title = str(meta.pop("title")) if meta.get("title") else None
    lines = content.splitlines(keepends=True)
    for number, line in enumerate(lines):
        match = _HEADING.match(line)
        if match:
            if title is None:
                title = match.group(1)
                content = "".join(lines[:number] + lines[number + 1 :]).strip("\n")
            break
        if line.strip():
            break  # the first non-empty line is not a heading
    title = title or path.stem.replace("_", " ").replace("-", " ").strip()
    return {"title": title, "content": content, "metadata": _json_safe(meta)}


def _front_matter(path: Path, text: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: the front matter is not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: the front matter must be `key: value` lines")
    return {str(k): v for k, v in data.items()}


def _json_safe(value: Any) -> Any:
    """YAML dates and the like as strings, so the metadata is JSON."""
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


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
