"""`pipeline demo`: the whole loop on the embedded default (or DATABASE_URL) in one command."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.commands.common import plural
from pipeline.config import Settings
from pipeline.csvio import import_dores
from pipeline.db import connect, database_url
from pipeline.migrations import migrate
from pipeline.progress import Progress
from pipeline.search import search_dores
from pipeline.status import format_status, status
from pipeline.worker import count_ready, prepare_worker

SAMPLE = Path(__file__).parent / "data" / "dores_exemplo.csv"
QUERIES = [
    "o fechamento do mês da contabilidade sempre atrasa",
    "clientes faltam às consultas",
    "caminhões fazendo rotas longas e gastando combustível",
]


def run_demo(settings: Settings) -> int:
    url = database_url(settings)
    print(f"database: {'DATABASE_URL' if settings.database_url else f'embedded PostgreSQL in {settings.data_dir}'}")
    with connect(url) as conn, connect(url) as spare:
        applied = migrate(conn)
        print(f"migrate: {len(applied)} migration(s) applied")
        row = conn.execute("select count(*) as n from public.dores").fetchone()
        if row and row["n"] == 0:
            report = import_dores(conn, SAMPLE)
            print(f"import-csv: {plural(report.inserted, 'sample dor', 'sample dores')} from {SAMPLE.name}")
        else:
            print(f"import-csv: dores already has {plural(row['n'] if row else 0, 'row')}; sample not loaded again")
        worker = prepare_worker(conn, settings)
        with Progress(count_ready(conn), "sync") as progress:
            sync = worker.drain(conn, spare=spare, on_batch=progress)
        print(f"sync: {plural(sync.embedded, 'row')} embedded in {sync.seconds:.1f}s, {sync.unchanged} unchanged")
        for text in QUERIES:
            print(f'\nsearch "{text}" (words and meaning, RRF score):')
            for hit in search_dores(conn, worker.embedder, text, k=3):
                print(f"  {hit['score']:.4f}  {hit['dor_base']}  ->  {hit['solucao_graventum']}")
        print("\n" + format_status(status(conn)))
    print(
        "\nThe database keeps running: `pipeline db psql` opens psql on it (`pipeline db url` prints its URL), "
        "`pipeline run` starts the daemon, `pipeline db stop` stops the server.",
        file=sys.stderr,
    )
    return 0
