"""Sources as data: what the worker embeds, read from `pipeline.sources`, and the SQL each one needs.

A source is a table with a primary key and an SQL expression over its columns (the text the model
reads). A `row` source keeps its vector in the row itself (`dores`); a `chunked` source splits long
text into a table of chunks (`documents` → `document_chunks`). Statements for a source's own tables are
composed here with `psycopg.sql.Identifier`; the text expression is SQL written by the database's
owner (`pipeline source add`), stored in `pipeline.sources`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from psycopg import sql

from pipeline.db import Connection, query, translate_errors
from pipeline.errors import InputError

Kind = Literal["row", "chunked"]
KEY_TYPES = ("bigint", "integer", "uuid", "text")


@dataclasses.dataclass(frozen=True)
class Source:
    """One row of `pipeline.sources`, with the SQL it takes to read and write it."""

    name: str
    table_schema: str
    table_name: str
    key_column: str
    key_type: str
    text_expression: str
    text_columns: tuple[str, ...]
    kind: Kind
    search_function: str
    language: str = "portuguese"
    chunk_table: str | None = None
    chunk_key_column: str | None = None
    metadata_columns: tuple[str, ...] = ()
    jsonb_metadata: tuple[str, ...] = ()  # the metadata columns of type jsonb: merged, not nested
    segment_column: str | None = None
    classified: bool = False  # it has an active classifier: the worker scores the rows it embeds
    waits: bool = False  # a row source with `embedding_indexed`: its new vectors may wait outside the HNSW graph

    @property
    def table(self) -> sql.Composable:
        return sql.Identifier(self.table_schema, self.table_name)

    @property
    def qualified(self) -> str:
        return f"{self.table_schema}.{self.table_name}"

    @property
    def chunks(self) -> sql.Composable:
        assert self.chunk_table is not None
        return sql.Identifier(self.table_schema, self.chunk_table)

    @property
    def chunked(self) -> bool:
        return self.kind == "chunked"

    @property
    def vector(self) -> sql.Composable:
        """The row's vector in a query that calls the table `t`."""
        return sql.SQL("t.embedding")

    def _parts(self) -> dict[str, sql.Composable]:
        return {
            "vector": self.vector,
            "table": self.table,
            "key": sql.Identifier(self.key_column),
            "key_type": sql.SQL(self.key_type),
            # Executed with parameters: a `%` of the owner's SQL (`id % 2`) must reach the server as it is.
            "text": sql.SQL(self.text_expression.replace("%", "%%")),
        }

    # -- the worker's statements -----------------------------------------------------------------

    def read_query(self) -> sql.Composed:
        """Texts, hashes and whether each is already embedded, for the claimed keys."""
        embedded = sql.SQL("" if self.chunked else " and t.embedding is not null")
        return sql.SQL(
            "select t.{key}::text as key, x.text, pipeline.content_hash(x.text) as hash,"
            " coalesce(t.content_hash = pipeline.content_hash(x.text) and t.embedding_model = %(model)s{embedded},"
            " false) as current"
            " from {table} t cross join lateral (select coalesce(({text})::text, '') as text) x"
            " where t.{key} = any(%(keys)s::{key_type}[])"
        ).format(embedded=embedded, **self._parts())

    def write_query(self, *, index_later: bool = False) -> sql.Composed:
        """Write the staged vectors of rows whose text is still the text that was embedded.

        A row changed meanwhile keeps its queue row and is embedded again. The staging table's column
        names are prefixed so that they never shadow a column the text expression reads. With
        `index_later` (a source whose vectors may wait), the vectors are written outside the HNSW graph
        (`embedding_indexed` false: the partial index skips them), to be searched exactly until
        `index_waiting_query` marks them.
        """
        if self.chunked:
            return sql.SQL(
                "update {table} t set embedding_model = %(model)s, content_hash = s.pipeline_hash, embedded_at = now()"
                " from (select distinct pipeline_key, pipeline_hash from pg_temp.pipeline_staging) s"
                " where t.{key} = s.pipeline_key::{key_type} and {same_text}"
                " returning t.{key}::text as key"
            ).format(same_text=self._same_text(), **self._parts())
        segment = sql.SQL("")
        if self.segment_column:
            segment = sql.SQL(
                ", {col} = coalesce(pipeline.nearest_source_segment({name}, s.pipeline_embedding), t.{col})"
            ).format(col=sql.Identifier(self.segment_column), name=sql.Literal(self.name))
        columns = "embedding = s.pipeline_embedding"
        if self.waits:
            columns += f", embedding_indexed = {'false' if index_later else 'true'}"
        return sql.SQL(
            "update {table} t set {columns}, embedding_model = %(model)s,"
            " content_hash = s.pipeline_hash, embedded_at = now(){segment}"
            " from pg_temp.pipeline_staging s"
            " where t.{key} = s.pipeline_key::{key_type} and {same_text}"
            " returning t.{key}::text as key"
        ).format(columns=sql.SQL(columns), segment=segment, same_text=self._same_text(), **self._parts())

    def unindexed_query(self) -> sql.Composed:
        """How many of the source's vectors wait for the vector index, counted up to %(cap)s."""
        return sql.SQL(
            "select count(*) as n from"
            " (select from {table} where embedding is not null and not embedding_indexed limit %(cap)s) w"
        ).format(table=self.table)

    def index_waiting_query(self) -> sql.Composed:
        """Mark up to %(limit)s waiting vectors indexed, which inserts them into the HNSW graph.

        The rows are picked once, in a CTE: as an `IN (subquery)` the planner may rescan a LIMIT ... FOR
        UPDATE subquery for every row, which moves them all at once and costs quadratic time.
        """
        return sql.SQL(
            "with picked as materialized (select w.{key} from {table} w"
            "  where w.embedding is not null and not w.embedding_indexed limit %(limit)s for update skip locked)"
            " update {table} t set embedding_indexed = true"
            " from picked p where t.{key} = p.{key}"  # locked since picked: it still waits
        ).format(**self._parts())

    def _same_text(self) -> sql.Composed:
        """The row's text still hashes to what was embedded. The CASE evaluates the text expression only
        for the staged row itself (a join may pair a row with others' keys first), so a row whose
        expression raises never breaks another row's write. It sits in the UPDATE's WHERE so that a row
        changed by a concurrent transaction is checked again on its new version."""
        return sql.SQL(
            "pipeline.content_hash(case when t.{key} = s.pipeline_key::{key_type} then ({text})::text end)"
            " = s.pipeline_hash"
        ).format(**self._parts())

    def queue_all_query(self) -> sql.Composed:
        """Queue every row (when the staleness check itself raises for some row)."""
        return sql.SQL(
            "insert into pipeline.queue (source, row_id) select {name}, t.{key}::text from {table} t"
            " on conflict (source, row_id) do nothing"
        ).format(name=sql.Literal(self.name), **self._parts())

    def delete_chunks_query(self) -> sql.Composed:
        return sql.SQL("delete from {chunks} where {ckey} = any(%(keys)s::{key_type}[])").format(
            chunks=self.chunks, ckey=sql.Identifier(self.chunk_key_column or ""), key_type=sql.SQL(self.key_type)
        )

    def insert_chunks_query(self) -> sql.Composed:
        """Insert the staged chunks of %(keys)s. Their metadata is composed by `pipeline.chunk_metadata`
        (sql/repeatable/chunks.sql), as the trigger that keeps it current when the row's metadata changes
        composes it, from the row's metadata columns and key (not its whole row: a document's text is not
        copied once per chunk)."""
        assert self.chunk_key_column is not None
        parent = sql.SQL(" || ").join(
            sql.SQL("jsonb_build_object({}, t.{})").format(sql.Literal(c), sql.Identifier(c))
            for c in dict.fromkeys((*self.metadata_columns, self.key_column))
        )
        return sql.SQL(
            "insert into {chunks} ({ckey}, chunk_index, content, metadata, embedding, embedding_model, content_hash)"
            " select t.{key}, s.pipeline_chunk_index, s.pipeline_content,"
            " pipeline.chunk_metadata({name}, {parent}, s.pipeline_chunk_index), s.pipeline_embedding,"
            " %(model)s, pipeline.content_hash(s.pipeline_content)"
            " from pg_temp.pipeline_staging s join {table} t on t.{key} = s.pipeline_key::{key_type}"
            " where s.pipeline_key = any(%(keys)s)"
            " order by s.pipeline_key, s.pipeline_chunk_index"
        ).format(
            chunks=self.chunks,
            ckey=sql.Identifier(self.chunk_key_column),
            name=sql.Literal(self.name),
            parent=parent,
            **self._parts(),
        )

    def queue_stale_query(self) -> sql.Composed:
        """Queue every row whose vectors are missing or stale."""
        missing = sql.SQL("" if self.chunked else "t.embedding is null or ")
        return sql.SQL(
            "insert into pipeline.queue (source, row_id)"
            " select {name}, t.{key}::text from {table} t"
            " where ({missing}t.embedding_model is distinct from %(model)s"
            " or t.content_hash is distinct from pipeline.content_hash(({text})::text))"
            # A row that failed for good stays in pipeline.failed until its text changes (the trigger
            # takes it out then): queueing it again would only fail it again. `retry-failed` is the way.
            " and not exists (select 1 from pipeline.failed f where f.source = {name} and f.row_id = t.{key}::text)"
            " on conflict (source, row_id) do nothing"
        ).format(name=sql.Literal(self.name), missing=missing, **self._parts())

    def forget_hashes_query(self) -> sql.Composed:
        return sql.SQL("update {table} set content_hash = null where content_hash is not null").format(table=self.table)

    # -- segments (row sources) ---------------------------------------------------------------------

    def segment_read_query(self) -> sql.Composed:
        """Key, vector and text of every embedded row, in key order (execute it with parameters, `{}`)."""
        return sql.SQL(
            "select t.{key}::text as key, {vector} as embedding, coalesce(({text})::text, '') as text"
            " from {table} t where {vector} is not null order by t.{key}"
        ).format(**self._parts())

    def apply_segments_query(self) -> sql.Composed:
        """Write the staged segment numbers; only rows whose number changes (an UPDATE is an index insert)."""
        return sql.SQL(
            "update {table} t set {col} = s.segmento from pg_temp.segment_staging s"
            " where t.{key} = s.row_key::{key_type} and t.{col} is distinct from s.segmento"
        ).format(col=sql.Identifier(self.segment_column or "segmento"), **self._parts())

    def list_segments_query(self) -> sql.Composed:
        """The active segments with the texts nearest each centroid."""
        return sql.SQL(
            "select s.segmento, s.label, s.size, s.top_terms, coalesce(("
            " select array_agg(e.text order by e.distance) from ("
            "  select ({text})::text as text, {vector} <=> s.centroid as distance from {table} t"
            "  where t.{col} = s.segmento and {vector} is not null"
            "  order by ({vector} <=> s.centroid) + 0 limit %(examples)s) e), '{{}}') as examples"
            " from public.segments s where s.model_id = pipeline.source_segment_model(%(source)s)"
            " order by s.segmento"
        ).format(col=sql.Identifier(self.segment_column or "segmento"), **self._parts())

    def segment_growth_query(self) -> sql.Composed:
        return sql.SQL(
            "select (select count(*) from {table} t where {vector} is not null) as embedded,"
            " (select n_rows from pipeline.segment_models where id = pipeline.source_segment_model(%(source)s))"
            " as n_rows"
        ).format(**self._parts())

    # -- classifiers (row sources) ------------------------------------------------------------------

    def labelled_query(self, label: str) -> sql.Composed:
        """Key, vector and label of every row embedded with %(model)s whose label is not null."""
        return sql.SQL(
            "select t.{key}::text as key, {vector} as embedding, l.label from {table} t"
            " cross join lateral (select ({label})::text as label) l"
            " where {vector} is not null and t.embedding_model = %(model)s and l.label is not null"
            " order by t.{key}"
        ).format(label=sql.SQL(label.replace("%", "%%")), **self._parts())

    def score_query(self) -> sql.Composed:
        """Score up to %(limit)s rows not yet scored by the classifier's active version."""
        return sql.SQL(
            "insert into pipeline.predictions (source, row_key, classifier, label, probability, probabilities, version)"
            " select {name}, t.key, %(classifier)s, r.label, r.probability, r.probabilities, %(version)s"
            " from (select t.{key}::text as key, {vector} as embedding from {table} t"
            "  where {vector} is not null and t.embedding_model = %(model)s and not exists ("
            "   select 1 from pipeline.predictions p"
            "   where p.classifier = %(classifier)s and p.row_key = t.{key}::text and p.version = %(version)s)"
            "  limit %(limit)s) t"
            " cross join lateral pipeline.classify_embedding(%(classifier)s, %(version)s, t.embedding) r"
            " on conflict (classifier, row_key) do update"
            " set label = excluded.label, probability = excluded.probability,"
            " probabilities = excluded.probabilities, version = excluded.version, scored_at = now()"
        ).format(name=sql.Literal(self.name), **self._parts())

    def status_query(self) -> sql.Composed:
        embedded = "embedded_at is not null" if self.chunked else "embedding is not null"
        unindexed = "count(*) filter (where embedding is not null and not embedding_indexed)" if self.waits else "0"
        chunks: sql.Composable = sql.SQL("null::bigint")
        if self.chunked:
            chunks = sql.SQL("(select count(*) from {})").format(self.chunks)
        return sql.SQL(
            "select count(*) as rows, count(*) filter (where {embedded}) as embedded, {chunks} as chunks,"
            " {unindexed} as unindexed, max(embedded_at) as last_embedded_at from {table}"
        ).format(embedded=sql.SQL(embedded), chunks=chunks, unindexed=sql.SQL(unindexed), table=self.table)


def load_sources(conn: Connection, names: list[str] | None = None) -> list[Source]:
    """The registered sources (all of them, or those named, in that order; an unknown name is an error)."""
    with translate_errors():
        rows = conn.execute(query("load_sources"), {"names": names}).fetchall()
        if not conn.autocommit:
            conn.rollback()
    found = {row["name"]: _source(row) for row in rows}
    if names is None:
        return list(found.values())
    unknown = [name for name in names if name not in found]
    if unknown:
        known = ", ".join(sorted(s.name for s in load_sources(conn))) or "none"
        raise InputError(f"no source named {', '.join(unknown)} (sources: {known}; see `pipeline source list`)")
    return [found[name] for name in names]


def _source(row: dict[str, Any]) -> Source:
    return Source(
        name=row["name"],
        table_schema=row["table_schema"],
        table_name=row["table_name"],
        key_column=row["key_column"],
        key_type=row["key_type"],
        text_expression=row["text_expression"],
        text_columns=tuple(row["text_columns"]),
        kind=row["kind"],
        search_function=row["search_function"],
        language=str(row["language"]),
        chunk_table=row["chunk_table"],
        chunk_key_column=row["chunk_key_column"],
        metadata_columns=tuple(row["metadata_columns"]),
        jsonb_metadata=tuple(row["jsonb_metadata"]),
        segment_column=row["segment_column"],
        classified=bool(row["classified"]),
        waits=bool(row["waits"]),
    )
