"""Classifier quality through the whole pipeline on Portuguese tweets (tweet_sentiment_pt, 3 labels).

The training split goes into a source table and is embedded by the worker; `classifier train` learns
the label from the stored vectors; the test split is then inserted, embedded and scored by the worker
(as the daemon does, in the transaction that writes each vector); accuracy is read from
`pipeline.predictions`. Beside it, in the same run: a plain scikit-learn `LogisticRegression()` on
`SentenceTransformer.encode` vectors of the same texts.

(a) all 1,839 training tweets; (b) 8 per label, mean of 10 draws (MTEB's few-shot protocol).

    python bench/classify.py [--draws 10] [--evaldata ../shared/evaldata]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, scratch_database, table

TWEETS = "create table tweets (id bigint generated always as identity primary key, texto text, label text, gold text)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--per-label", type=int, default=8)
    parser.add_argument("--evaldata", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "evaldata")
    args = parser.parse_args()

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from pipeline import classifiers
    from pipeline.config import Settings
    from pipeline.db import connect
    from pipeline.source_admin import add_source
    from pipeline.worker import prepare_worker

    folder = args.evaldata / "tweet_sentiment_pt"

    def read(split: str) -> tuple[list[str], list[str]]:
        texts = (folder / f"{split}_text.txt").read_text(encoding="utf-8").splitlines()
        labels = (folder / f"{split}_labels.txt").read_text(encoding="utf-8").splitlines()
        return texts, labels

    train_texts, train_labels = read("train")
    test_texts, test_labels = read("test")
    rows: list[list[object]] = []
    with scratch_database() as url, connect(url) as conn:
        worker = prepare_worker(conn, Settings())
        model = worker.embedder.model  # type: ignore[attr-defined]
        conn.execute(TWEETS)
        add_source(conn, name="tweets", table="tweets", text="texto")
        with conn.transaction(), conn.cursor().copy("copy tweets (texto, label) from stdin") as copy:
            for text, label in zip(train_texts, train_labels, strict=True):
                copy.write_row((text, label))
        worker.drain(conn)
        ids = {r["texto_id"]: r["label"] for r in conn.execute("select id as texto_id, label from tweets")}

        # (a) every training tweet
        started = time.perf_counter()
        full = classifiers.train(conn, "sentiment", source="tweets", label="label", score=False)
        train_s = time.perf_counter() - started
        with conn.transaction(), conn.cursor().copy("copy tweets (texto, gold) from stdin") as copy:
            for text, label in zip(test_texts, test_labels, strict=True):
                copy.write_row((text, label))
        started = time.perf_counter()
        report = worker.drain(conn)
        drain_s = time.perf_counter() - started
        assert report.embedded == len(test_texts)
        pipeline_full = accuracy(conn, "sentiment")

        # The same texts through the raw model, and a plain logistic regression.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x_train = model.encode(train_texts, batch_size=32, normalize_embeddings=True)
            x_test = model.encode(test_texts, batch_size=32, normalize_embeddings=True)
            y_train, y_test = np.asarray(train_labels), np.asarray(test_labels)
            plain_full = float((LogisticRegression().fit(x_train, y_train).predict(x_test) == y_test).mean())

            # (b) few-shot: each draw retrains (a new version) and rescores every row in SQL.
            by_label: dict[str, list[int]] = {}
            for key, label in sorted(ids.items()):
                by_label.setdefault(label, []).append(key)
            position = {key: i for i, key in enumerate(sorted(ids))}
            pipeline_few, plain_few = [], []
            for draw in range(args.draws):
                rng = np.random.default_rng(draw)
                picked = [int(k) for keys in by_label.values() for k in rng.choice(keys, args.per_label, replace=False)]
                label = f"case when id = any('{{{','.join(map(str, picked))}}}'::bigint[]) then label end"
                classifiers.train(conn, "few", source="tweets", label=label)
                pipeline_few.append(accuracy(conn, "few"))
                rows_picked = [position[k] for k in picked]
                plain = LogisticRegression().fit(x_train[rows_picked], y_train[rows_picked])
                plain_few.append(float((plain.predict(x_test) == y_test).mean()))
                print(f"draw {draw + 1}: pipeline {pipeline_few[-1]:.4f}, plain {plain_few[-1]:.4f}", file=sys.stderr)

    rows.append(
        [
            f"all {len(train_texts)} training tweets",
            f"{pipeline_full:.4f}",
            f"{plain_full:.4f}",
            f"cross-validated C={full.c:g}, macro-F1 {full.macro_f1}",
        ]
    )
    rows.append(
        [
            f"{args.per_label} per label, mean of {args.draws} draws",
            f"{statistics.mean(pipeline_few):.4f}",
            f"{statistics.mean(plain_few):.4f}",
            "C=1 (too few rows to cross-validate C)",
        ]
    )
    print(
        f"\nmachine: {machine()}; model {worker.embedder.name}; tweet_sentiment_pt test split ({len(test_texts)} "
        f"tweets, accuracy); train {train_s:.1f}s, test split embedded and scored by the worker in {drain_s:.1f}s\n"
    )
    print(table(["training rows", "pipeline (predictions)", "plain LogisticRegression", "notes"], rows))


def accuracy(conn: object, classifier: str) -> float:
    row = conn.execute(  # type: ignore[attr-defined]
        "select avg((p.label = t.gold)::int)::float as accuracy, count(*) as n from tweets t"
        " join pipeline.predictions p on p.row_key = t.id::text and p.classifier = %s where t.gold is not null",
        (classifier,),
    ).fetchone()
    return float(row["accuracy"])


if __name__ == "__main__":
    main()
