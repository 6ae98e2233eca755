"""The seed's clustering, kept: TF-IDF + KMeans over `dor_base + " " + solucao_graventum` (the CSV mode of
`pipeline segment --csv`, and `/ml/segmentar`), and segment names from their top TF-IDF terms (every fit)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.errors import InputError

logger = logging.getLogger(__name__)

RANDOM_STATE = 42

# Portuguese function words (and a few of the domain's filler words) left out of segment names.
PT_STOPWORDS = frozenset(
    """
    a à às ao aos aquela aquelas aquele aqueles aquilo as até com como da das de dela delas dele deles
    depois do dos e é ela elas ele eles em entre era eram essa essas esse esses esta está estão estas
    este estes eu foi foram há isso isto já la lhe lhes lo mais mas me mesmo meu meus minha minhas muito
    na nas nem no nos nós nossa nossas nosso nossos num numa não o os ou para pela pelas pelo pelos por
    qual quando que quem se sem ser seu seus sua suas são só também te tem têm tu tua tuas um uma umas
    uns você vocês vos cada todo toda todos todas sempre nunca ainda onde porque pois sobre sob após
    ter tendo sido seja sejam será serão fica ficam faz fazem feito feita vez vezes dia dias mês meses
    ano anos hora horas outro outra outros outras alguns algumas nenhum nenhuma bem mal the of and to in
    """.split()
)


def seed_text(dor_base: Sequence[str], solucao: Sequence[str | None]) -> list[str]:
    """The text the seed clustered: `dor_base + " " + solucao_graventum`."""
    return [f"{d} {s or ''}" for d, s in zip(dor_base, solucao, strict=True)]


SEED_TFIDF = {"min_df": 2, "max_df": 0.95}
SMALL_TFIDF = {"min_df": 1, "max_df": 1.0}


def fit_tfidf(texts: Sequence[str], *, clusters: int, max_features: int = 500) -> tuple[np.ndarray, Any, Any]:
    """TF-IDF (max_features, min_df=2, max_df=0.95) + KMeans(clusters, fixed random state), as the seed did.

    The seed's settings keep only words found in two texts or more: a handful of texts (an n8n call with
    two rows) can leave no word at all. Then every word counts (min_df=1, max_df=1.0), and the log says so.
    """
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    if clusters < 2:
        raise InputError(f"the number of segments must be at least 2, got {clusters}")
    if len(texts) < clusters:
        rows = "1 row" if len(texts) == 1 else f"{len(texts)} rows"
        raise InputError(f"{rows} cannot make {clusters} segments: ask for {len(texts)} or fewer")
    matrix = None
    for settings in (SEED_TFIDF, SMALL_TFIDF):
        vectorizer = TfidfVectorizer(max_features=max_features, **settings)  # type: ignore[arg-type]
        try:
            matrix = vectorizer.fit_transform(texts)
            break
        except ValueError as exc:  # no word left, or max_df below min_df: too few or too short texts
            if settings is SMALL_TFIDF:
                raise InputError(f"cannot build a TF-IDF vocabulary from these {len(texts)} texts ({exc})") from None
            logger.warning(
                "%d texts are too few for the seed's TF-IDF settings (min_df=2, max_df=0.95): every word counts "
                "instead (min_df=1, max_df=1.0)",
                len(texts),
            )
    kmeans = KMeans(n_clusters=clusters, random_state=RANDOM_STATE, n_init=10)
    labels = kmeans.fit_predict(matrix)
    return labels, vectorizer, kmeans


def segment_csv(path: Any, *, clusters: int, max_features: int) -> tuple[Any, dict[int, int]]:
    """Read a CSV, add `segmento`; return the frame and the count per segment."""
    import pandas as pd

    from pipeline.csvio import open_csv

    header, rows = open_csv(path, ("dor_base", "solucao_graventum"))  # one-line errors for bad files
    frame = pd.DataFrame([[row.get(name, "") for name in header] for row in rows], columns=header, dtype=str)
    if frame.empty:
        raise InputError(f"{path} has a header but no rows")
    labels, _, _ = fit_tfidf(
        seed_text(frame["dor_base"].tolist(), frame["solucao_graventum"].tolist()),
        clusters=clusters,
        max_features=max_features,
    )
    frame["segmento"] = labels
    counts = {int(k): int(v) for k, v in sorted(frame["segmento"].value_counts().items())}
    return frame, counts


# -- names ---------------------------------------------------------------------------------------


def top_terms(texts: Sequence[str], labels: Sequence[int], *, n_terms: int = 5) -> dict[int, list[str]]:
    """Class-based TF-IDF: the words that set each segment apart from the others (stop words removed)."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(
        stop_words=list(PT_STOPWORDS), token_pattern=r"(?u)\b[^\W\d_]{3,}\b", lowercase=True, min_df=1
    )
    try:
        counts = vectorizer.fit_transform(texts)
    except ValueError:
        return {int(label): [] for label in set(labels)}
    vocabulary = np.asarray(vectorizer.get_feature_names_out())
    classes = sorted(set(int(label) for label in labels))
    label_array = np.asarray(labels)
    per_class = np.vstack([np.asarray(counts[label_array == c].sum(axis=0)).ravel() for c in classes]).astype(float)
    tf = per_class / np.maximum(per_class.sum(axis=1, keepdims=True), 1)
    average_words = per_class.sum() / len(classes)
    idf = np.log(1 + average_words / np.maximum(per_class.sum(axis=0), 1))
    scores = tf * idf
    result = {}
    for row, cls in enumerate(classes):
        best = np.argsort(-scores[row])[:n_terms]
        result[cls] = [str(vocabulary[i]) for i in best if scores[row, i] > 0]
    return result


def label_from_terms(terms: Sequence[str]) -> str:
    return " / ".join(terms[:3]) if terms else "(sem termos)"
