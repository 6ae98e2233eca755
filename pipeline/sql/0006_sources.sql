-- Sources are data: each table the pipeline embeds is a row here, and the worker reads what it needs
-- (table, key, the text the model reads, row or chunked) from it. `dores` and `documents` are the first
-- two; `pipeline source add` registers more (docs/sources.md).

create table if not exists pipeline.sources (
    name text primary key check (name ~ '^[a-z][a-z0-9_]{0,39}$'),
    table_schema text not null,
    table_name text not null,
    key_column text not null,
    key_type text not null check (key_type in ('bigint', 'integer', 'uuid', 'text')),
    -- An SQL expression over the row's columns; the model reads its value.
    text_expression text not null,
    -- The columns it reads: an UPDATE of one of them queues the row again.
    text_columns text[] not null,
    kind text not null check (kind in ('row', 'chunked')),
    -- chunked: the table of chunks (in table_schema) and its column that holds the source row's key
    chunk_table text,
    chunk_key_column text,
    -- chunked: columns copied into each chunk's metadata (jsonb columns are merged into it)
    metadata_columns text[] not null default '{}',
    -- row: a column that receives the nearest segment of each new vector
    segment_column text,
    -- what `pipeline search --source` calls
    search_function text not null,
    -- the full-text configuration of the source's texts (hybrid search)
    language regconfig not null default 'portuguese',
    created_at timestamptz not null default now(),
    unique (table_schema, table_name),
    check ((kind = 'chunked') = (chunk_table is not null and chunk_key_column is not null))
);

insert into pipeline.sources
    (name, table_schema, table_name, key_column, key_type, text_expression, text_columns, kind,
     chunk_table, chunk_key_column, metadata_columns, segment_column, search_function)
values
    ('dores', 'public', 'dores', 'id', 'bigint', 'pipeline.dor_text(dor_base, solucao_graventum)',
     '{dor_base,solucao_graventum}', 'row', null, null, '{}', 'segmento', 'match_dores'),
    ('documents', 'public', 'documents', 'id', 'bigint', 'pipeline.document_text(title, content)',
     '{title,content}', 'chunked', 'document_chunks', 'document_id', '{metadata,title}', null, 'match_documents')
on conflict (name) do nothing;

-- Keys of every type travel as text through the queue and the dead letter.
alter table pipeline.queue drop constraint if exists queue_source_check;
alter table pipeline.queue alter column row_id type text using row_id::text;
alter table pipeline.failed alter column row_id type text using row_id::text;
