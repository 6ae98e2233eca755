"""Classifiers from labelled rows: train on the stored vectors, keep the fit as data, score in SQL.

A classifier is a multinomial logistic regression on the unit vectors of a row source, trained on the
rows whose label (a column or an SQL expression of the row) is not null. Its classes' weights and
intercepts are stored in `pipeline.classifier_weights`, so that scoring is
`softmax(weight · embedding + intercept)`: the worker does it in SQL for every row it embeds (in the
same transaction), `public.predict()` does it for a query vector, and nothing lives on one machine.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import psycopg

from pipeline.db import Connection, query, translate_errors
from pipeline.errors import InputError, PipelineError
from pipeline.sources import Source, load_sources

logger = logging.getLogger(__name__)

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MIN_PER_LABEL = 2  # fewer cannot be learnt (nor cross-validated)
FEW_PER_LABEL = 8  # fewer: a warning
CV_FROM = 10  # examples of the rarest label from which C is chosen by cross-validation
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
SCORE_BATCH = 5000
RANDOM_STATE = 42


@dataclasses.dataclass
class TrainResult:
    name: str
    source: str
    version: int
    classes: list[str]
    counts: dict[str, int]
    positive: str | None
    accuracy: float | None
    macro_f1: float | None
    c: float
    folds: int
    seconds: float
    scored: int = 0

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["seconds"] = round(self.seconds, 2)
        return data


@dataclasses.dataclass
class Fit:
    """A fitted linear model: one weight row and intercept per class, and how well it did."""

    classes: list[str]
    weights: np.ndarray
    intercepts: np.ndarray
    c: float
    folds: int
    accuracy: float | None
    macro_f1: float | None

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """softmax(W·x + b) for unit vectors x, as `pipeline.classifier_probabilities` computes it."""
        logits = vectors @ self.weights.T + self.intercepts
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True))


# -- fitting (pure) --------------------------------------------------------------------------------


def check_labels(labels: Sequence[str], *, what: str = "the label") -> dict[str, int]:
    """Count per label; refuse what cannot be learnt, warn about what can hardly be."""
    values, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    per_label = {str(v): int(c) for v, c in zip(values, counts, strict=True)}
    if len(per_label) < 2:
        only = f" (every labelled row is {next(iter(per_label))!r})" if per_label else ""
        raise InputError(f"{what} has {len(per_label)} class{only}: a classifier needs at least 2 labels")
    rare = {k: v for k, v in per_label.items() if v < MIN_PER_LABEL}
    if rare:
        shown = ", ".join(f"{k!r} ({v})" for k, v in rare.items())
        raise InputError(f"each label needs at least {MIN_PER_LABEL} examples; too few: {shown}")
    few = {k: v for k, v in per_label.items() if v < FEW_PER_LABEL}
    if few:
        shown = ", ".join(f"{k!r} ({v})" for k, v in few.items())
        logger.warning("labels with fewer than %d examples: %s; expect a rough classifier", FEW_PER_LABEL, shown)
    return per_label


def fit(vectors: np.ndarray, labels: Sequence[str]) -> Fit:
    """Logistic regression on unit vectors, classes weighted against imbalance.

    The regularisation C is chosen by stratified cross-validation (macro-F1) when the rarest label has
    at least CV_FROM examples; with fewer, C = 1. The reported accuracy and macro-F1 are cross-validated
    predictions of the chosen C (slightly optimistic: the same folds chose it).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = np.asarray(labels, dtype=object).astype(str)
    x = _unit(np.asarray(vectors, dtype=np.float64))
    rarest = int(np.unique(y, return_counts=True)[1].min())
    folds = min(5, rarest)

    def model(c: float) -> Any:
        return LogisticRegression(C=c, class_weight="balanced", max_iter=5000)

    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=RANDOM_STATE) if folds >= 2 else None
    best, predicted = 1.0, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny folds
        if cv is not None and rarest >= CV_FROM:
            scores = {}
            for c in C_GRID:
                guess = cross_val_predict(model(c), x, y, cv=cv)
                scores[c] = (f1_score(y, guess, average="macro"), guess)
            best = max(C_GRID, key=lambda c: (scores[c][0], -abs(np.log(c))))  # ties: nearest to 1
            predicted = scores[best][1]
        elif cv is not None:
            predicted = cross_val_predict(model(best), x, y, cv=cv)
        final = model(best).fit(x, y)
    classes = [str(c) for c in final.classes_]
    weights, intercepts = np.asarray(final.coef_, dtype=np.float64), np.asarray(final.intercept_, dtype=np.float64)
    if len(classes) == 2:  # sklearn keeps one row for two classes: the first class gets zeros
        weights = np.vstack([np.zeros_like(weights[0]), weights[0]])
        intercepts = np.asarray([0.0, intercepts[0]])
    accuracy = macro_f1 = None
    if predicted is not None:
        accuracy = round(float(accuracy_score(y, predicted)), 4)
        macro_f1 = round(float(f1_score(y, predicted, average="macro")), 4)
    return Fit(classes, weights, intercepts, best, folds if cv is not None else 0, accuracy, macro_f1)


def _unit(matrix: np.ndarray) -> np.ndarray:
    return np.asarray(matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12))


def binarise(labels: Sequence[str], positive: str) -> list[str]:
    """With --positive: that label against the rest (`not <positive>`), unless there are only two."""
    present = set(labels)
    if positive not in present:
        shown = ", ".join(sorted(present)[:10])
        raise InputError(f"--positive {positive!r} is not among the labels ({shown})")
    if len(present) <= 2:
        return list(labels)
    other = f"not {positive}"
    return [label if label == positive else other for label in labels]


# -- the database --------------------------------------------------------------------------------


def _row_source(conn: Connection, name: str) -> Source:
    (source,) = load_sources(conn, [name])
    if source.chunked:
        raise InputError(f"classifiers learn from row sources; {name} is chunked (its vectors are its chunks')")
    return source


def _database_model(conn: Connection) -> str:
    from pipeline.model import recorded_model

    model, _ = recorded_model(conn)
    if not model:
        raise PipelineError("nothing is embedded yet: run `pipeline sync` first")
    return model


def read_labelled(conn: Connection, source: Source, label: str, model: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Keys, vectors and labels of the embedded rows whose label is not null."""
    statement = source.labelled_query(label)
    keys: list[str] = []
    vectors: list[np.ndarray] = []
    labels: list[str] = []
    try:
        with conn.transaction(), conn.cursor(name="classifier_read") as cursor:
            cursor.itersize = 5000
            cursor.execute(statement, {"model": model})
            for row in cursor:
                keys.append(row["key"])
                vectors.append(row["embedding"].to_numpy())
                labels.append(row["label"])
    except (psycopg.errors.SyntaxError, psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedFunction) as exc:
        what = f"--label {label!r} is not an expression over {source.qualified}"
        raise InputError(f"{what}: {_first_line(exc)}") from None
    except psycopg.errors.DataError as exc:
        raise InputError(f"--label {label!r} failed for some row of {source.qualified}: {_first_line(exc)}") from None
    matrix = np.vstack(vectors) if vectors else np.empty((0, 0), dtype=np.float32)
    return keys, matrix, labels


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def train(
    conn: Connection,
    name: str,
    *,
    source: str,
    label: str,
    positive: str | None = None,
    score: bool = True,
    on_scored: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train a new version of classifier `name`, make it active, and (by default) score every row with it."""
    if not NAME.match(name):
        raise InputError(f"classifier name {name!r}: use lowercase letters, digits and _ (e.g. lead)")
    if not label.strip():
        raise InputError("--label is empty: name a column or an SQL expression of the row")
    started = time.perf_counter()
    with translate_errors():
        table = _row_source(conn, source)
        existing = conn.execute("select source from pipeline.classifiers where name = %s", (name,)).fetchone()
        if existing and existing["source"] != source:
            raise InputError(
                f"classifier {name} belongs to source {existing['source']}; remove it or pick another name"
            )
        model = _database_model(conn)
        _, vectors, labels = read_labelled(conn, table, label, model)
        if not labels:
            raise InputError(f"no embedded {source} row has a {label!r} that is not null: label some rows first")
        if positive is not None:
            labels = binarise(labels, positive)
        elif set(labels) <= {"true", "false"}:
            positive = "true"
        counts = check_labels(labels, what=f"--label {label!r}")
        result = fit(vectors, labels)
        with conn.transaction():
            conn.execute(
                "insert into pipeline.classifiers (name, source, label_expression, positive) values (%s, %s, %s, %s)"
                " on conflict (name) do update set label_expression = excluded.label_expression,"
                " positive = excluded.positive",
                (name, source, label, positive),
            )
            version = conn.execute(
                query("insert_classifier_version"),
                {
                    "classifier": name,
                    "model": model,
                    "classes": result.classes,
                    "counts": [counts[c] for c in result.classes],
                    "metrics": json.dumps(
                        {"accuracy": result.accuracy, "macro_f1": result.macro_f1, "folds": result.folds}
                    ),
                    "params": json.dumps({"C": result.c, "class_weight": "balanced", "label": label}),
                    "n_rows": len(labels),
                },
            ).fetchone()["version"]
            with conn.cursor() as cursor:
                cursor.executemany(
                    query("insert_classifier_weight"),
                    [
                        {
                            "classifier": name,
                            "version": version,
                            "position": i,
                            "label": cls,
                            "weight": result.weights[i].astype(np.float32),
                            "intercept": float(result.intercepts[i]),
                        }
                        for i, cls in enumerate(result.classes)
                    ],
                )
            conn.execute("update pipeline.classifiers set active_version = %s where name = %s", (version, name))
    seconds = time.perf_counter() - started
    logger.info(
        "classifier %s v%d over %d %s rows in %.1fs: accuracy %s, macro-F1 %s (C=%g, %d folds)",
        name,
        version,
        len(labels),
        source,
        seconds,
        result.accuracy,
        result.macro_f1,
        result.c,
        result.folds,
    )
    trained = TrainResult(
        name,
        source,
        version,
        result.classes,
        counts,
        positive,
        result.accuracy,
        result.macro_f1,
        result.c,
        result.folds,
        seconds,
    )
    if score:
        trained.scored = score_all(conn, name, on_scored=on_scored)
    return trained


def score_all(conn: Connection, name: str, *, on_scored: Callable[[int], None] | None = None) -> int:
    """Score every embedded row of the classifier's source not yet scored by its active version.

    Batch by batch, each its own transaction: interrupted, it goes on where it stopped.
    """
    with translate_errors():
        info = _active(conn, name)
        (source,) = load_sources(conn, [info["source"]])
        statement = source.score_query()
        params = {"classifier": name, "version": info["active_version"], "model": info["model"], "limit": SCORE_BATCH}
        total = 0
        while True:
            with conn.transaction():
                done = conn.execute(statement, params).rowcount
            total += done
            if on_scored and done:
                on_scored(done)
            if done < SCORE_BATCH:
                return total


def unscored(conn: Connection, name: str) -> int:
    with translate_errors():
        row = conn.execute("select pipeline.unscored_rows(%s) as n", (name,)).fetchone()
    return int(row["n"] or 0) if row else 0


def _active(conn: Connection, name: str) -> dict[str, Any]:
    row = conn.execute(query("active_classifier"), {"name": name}).fetchone()
    if row is None:
        known = ", ".join(r["name"] for r in conn.execute("select name from pipeline.classifiers order by name"))
        raise InputError(f"no classifier named {name} (classifiers: {known or 'none'}; see `pipeline classifier list`)")
    return dict(row)


def list_classifiers(conn: Connection) -> list[dict[str, Any]]:
    with translate_errors():
        return [dict(r) for r in conn.execute(query("list_classifiers"))]


def remove(conn: Connection, name: str) -> int:
    """Drop a classifier, its versions and its predictions; the number of predictions dropped."""
    with translate_errors(), conn.transaction():
        _active(conn, name)
        dropped = conn.execute("delete from pipeline.predictions where classifier = %s", (name,)).rowcount
        conn.execute("delete from pipeline.classifiers where name = %s", (name,))
    return dropped


def usable(conn: Connection, name: str) -> dict[str, Any]:
    """The classifier's active version, refused when it is unknown or trained on another model's vectors."""
    with translate_errors():
        info = _active(conn, name)
        model = _database_model(conn)
    if info["model"] != model:
        raise PipelineError(
            f"classifier {name} was trained on {info['model']} vectors but the database now holds {model}'s: "
            f"train it again (`pipeline classifier train {name} ...`)"
        )
    return info


def predict(conn: Connection, name: str, vectors: np.ndarray) -> list[dict[str, Any]]:
    """Every class's probability (most likely first) for each vector under the active version, computed by
    the database; `label` and `probability` are the most likely class's."""
    info = usable(conn, name)
    with translate_errors():
        rows = conn.execute(
            query("predict_many"), {"classifier": name, "version": info["active_version"], "embeddings": list(vectors)}
        ).fetchall()
    out: list[dict[str, Any]] = [{"probabilities": {}} for _ in range(len(vectors))]
    for row in rows:
        out[row["i"] - 1]["probabilities"][row["label"]] = round(float(row["probability"]), 6)
    for item in out:
        item["probabilities"] = dict(sorted(item["probabilities"].items(), key=lambda kv: -kv[1]))
        label, probability = next(iter(item["probabilities"].items()))
        item.update(label=label, probability=probability, positive=info["positive"])
    return out
