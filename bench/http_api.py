"""HTTP API overhead: `POST /ml/embed` with one short text and with 32 texts, against the raw model call
on the same texts in the same run; then `POST /ml/score-lead` (classifier, segment and 3 similar dores in
one call) beside `/ml/embed` of the same text. The server runs in this process (uvicorn, real sockets);
requests go one at a time, so latency is the model plus the HTTP layer (plus the database for score-lead).

    python bench/http_api.py [--requests 200]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, dores_texts, machine, scratch_database, table


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    import httpx
    import uvicorn

    from pipeline.api import create_app
    from pipeline.config import Settings
    from pipeline.model import load_embedder

    embedder = load_embedder(Settings())
    texts = [f"{d}\n{s}" for d, s in dores_texts(args.requests * 32)]
    rows = []
    with scratch_database() as url:
        app = create_app(settings=Settings(api_token="bench"), url=url, embedder=embedder)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer bench"}) as http:
            for size in (1, 32):
                batches = [texts[i * size : (i + 1) * size] for i in range(args.requests)]
                embedder.embed(batches[0])  # warm-up
                raw, served = [], []
                for batch in batches:  # alternate raw and HTTP so drift hits both alike
                    t0 = time.perf_counter()
                    embedder.embed(batch)
                    raw.append(1000 * (time.perf_counter() - t0))
                    body = {"text": batch[0]} if size == 1 else {"texts": batch}
                    t0 = time.perf_counter()
                    response = http.post("/ml/embed", json=body)
                    served.append(1000 * (time.perf_counter() - t0))
                    assert response.status_code == 200, response.text
                overhead = statistics.median(s - r for s, r in zip(served, raw, strict=True))
                rows.append(
                    [
                        f"{size} text{'s' if size > 1 else ''}",
                        f"{statistics.median(raw):.1f}",
                        f"{statistics.median(served):.1f}",
                        f"{percentile(served, 0.95):.1f}",
                        f"{1000 / statistics.median(served):.0f}",
                        f"{overhead:.1f}",
                    ]
                )
            lead_rows = score_lead(url, embedder, http, texts[: args.requests])
        server.should_exit = True
    print(f"\nmachine: {machine()}; model {embedder.name}; {args.requests} requests per size, one at a time\n")
    print(
        table(
            [
                "POST /ml/embed",
                "raw model ms (median)",
                "HTTP ms (median)",
                "HTTP ms (p95)",
                "requests/s",
                "HTTP overhead ms (median)",
            ],
            rows,
        )
    )

    print()
    print(table(["one text, same texts alternated", "HTTP ms (median)", "HTTP ms (p95)", "requests/s"], lead_rows))


def score_lead(url: str, embedder: object, http: object, texts: list[str]) -> list[list[object]]:
    """The sample dores embedded and segmented, a `lead` classifier on them; score-lead against embed."""
    from pipeline import classifiers
    from pipeline.config import Settings
    from pipeline.csvio import import_dores
    from pipeline.db import connect
    from pipeline.model import record_model
    from pipeline.segments import fit_database
    from pipeline.worker import Worker

    with connect(url) as conn:
        import_dores(conn, ROOT / "pipeline" / "data" / "dores_exemplo.csv")
        record_model(conn, embedder)  # type: ignore[arg-type]
        Worker(embedder=embedder, settings=Settings()).drain(conn)  # type: ignore[arg-type]
        fit_database(conn, clusters=6)
        label = "case when id % 2 = 0 then 'quente' else 'frio' end"
        classifiers.train(conn, "lead", source="dores", label=label, positive="quente")
    times: dict[str, list[float]] = {"/ml/embed": [], "/ml/score-lead": []}
    for text in texts:
        for route in times:
            t0 = time.perf_counter()
            response = http.post(route, json={"text": text})  # type: ignore[attr-defined]
            times[route].append(1000 * (time.perf_counter() - t0))
            assert response.status_code == 200, response.text
    return [
        [
            f"POST {route}",
            f"{statistics.median(v):.1f}",
            f"{percentile(v, 0.95):.1f}",
            f"{1000 / statistics.median(v):.0f}",
        ]
        for route, v in times.items()
    ]


if __name__ == "__main__":
    main()
