"""The HTTP API's request and response bodies (what /docs and /openapi.json describe)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, description="one text")
    texts: list[str] | None = Field(None, description="several texts, embedded in one model call")


class EmbedResponse(BaseModel):
    model: str
    embedding: list[float] | None = None
    embeddings: list[list[float]] | None = None


class DorRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    dor_base: str
    solucao_graventum: str | None = None


class SegmentarRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[DorRow]
    clusters: int = Field(8, ge=2, le=100)
    max_features: int = Field(500, ge=1, le=100_000)


class SegmentarResponse(BaseModel):
    rows: list[dict[str, Any]]
    counts: dict[str, int]


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    source: str = Field("dores", pattern=r"^[a-z][a-z0-9_]{0,39}$", description="whose segments")


class ClassifyResponse(BaseModel):
    segmento: int
    label: str
    top_terms: list[str]
    similarity: float


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str
    source: str = Field("dores", pattern=r"^[a-z][a-z0-9_]{0,39}$", description="a registered source")
    table: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]{0,39}$", description="alias of `source`")
    k: int = Field(5, ge=1, le=100)
    hybrid: bool | None = Field(
        None, description="null (default): words and meaning fused (RRF) where the source has it; false: vectors only"
    )
    filter: dict[str, Any] = Field(default_factory=dict)
    segmento: int | None = Field(None, ge=0, le=2**31 - 1)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classifier: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$", description="a trained classifier")
    text: str | None = Field(None, description="one text")
    texts: list[str] | None = Field(None, description="several texts")


class Scored(BaseModel):
    text: str
    label: str
    probability: float
    probabilities: dict[str, float] = Field(description="every class, most likely first")


class ScoreResponse(BaseModel):
    classifier: str
    label: str | None = None
    probability: float | None = None
    probabilities: dict[str, float] | None = None
    results: list[Scored] | None = Field(None, description="with `texts`: one per text, in order")


class ScoreLeadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="the lead's message (its pain, in its words)")


class ScoreLeadResponse(BaseModel):
    classifier: str
    score: float | None = Field(description="probability of the classifier's positive class")
    positive: str | None
    label: str
    probability: float
    probabilities: dict[str, float]
    segmento: int | None = None
    segment_label: str | None = None
    similar_dores: list[dict[str, Any]]


class ErrorResponse(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 403, 413, 422, 503)}
