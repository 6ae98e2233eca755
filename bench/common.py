"""Helpers shared by the benchmarks: a scratch database, the model, realistic texts, a table printer."""

from __future__ import annotations

import contextlib
import csv
import os
import platform
import random
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "pipeline" / "data" / "dores_exemplo.csv"


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A new, migrated database on DATABASE_URL's server, else on a throw-away embedded server."""
    from pipeline.db import connect
    from pipeline.migrations import migrate

    with contextlib.ExitStack() as stack:
        server_url = os.environ.get("DATABASE_URL")
        if not server_url:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import pgserver

            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pipeline-bench-")))
            server = pgserver.get_server(directory / "pg", cleanup_mode="delete")
            stack.callback(server.cleanup)
            server_url = server.get_uri()
        name = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"create database {name}")
        url = make_conninfo(server_url, dbname=name)
        with connect(url) as conn:
            migrate(conn)
        try:
            yield url
        finally:
            with psycopg.connect(server_url, autocommit=True) as admin:
                admin.execute(f"drop database if exists {name} with (force)")


def dores_texts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` distinct, realistic (dor_base, solucao_graventum) pairs built from the shipped sample."""
    with SAMPLE.open(encoding="utf-8") as handle:
        rows = [(r["dor_base"], r["solucao_graventum"]) for r in csv.DictReader(handle)]
    rng = random.Random(seed)
    contexts = [
        "em uma rede com {k} lojas",
        "desde que a empresa passou de {k} funcionários",
        "no cliente {k} da carteira",
        "segundo o gestor da unidade {k}",
        "há {k} meses seguidos",
        "na filial {k}, principalmente no fim do mês",
    ]
    out = []
    for i in range(n):
        dor, solucao = rows[i % len(rows)]
        context = rng.choice(contexts).format(k=i // len(rows) + 2)
        out.append((f"{dor} {context}", solucao))
    return out


def assin2_sentences(evaldata: Path, n: int) -> list[str]:
    """The first `n` distinct sentences of ASSIN 2's test pairs (short Portuguese, 10-20 tokens each)."""
    import xml.etree.ElementTree as ET

    sentences: dict[str, None] = {}
    for pair in ET.parse(evaldata / "assin2" / "assin2-test.xml").getroot().iter("pair"):
        for tag in ("t", "h"):
            sentences[(pair.findtext(tag) or "").strip()] = None
    return [text for text in sentences if text][:n]


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table, so the output can be pasted into docs/benchmarks.md."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])
