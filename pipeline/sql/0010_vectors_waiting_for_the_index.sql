-- A row source's new vectors can wait for the vector index. Inserting a vector into an HNSW graph costs
-- about 0.7 ms of the database's CPU (docs/benchmarks.md), as much as the model spends on a short text
-- with the faster backend. So the worker writes a burst's vectors into `embedding_unindexed`, which has no
-- vector index (and sets `embedding` to null: the old vector of a changed text is stale), and moves them
-- into `embedding` when it has nothing left to embed. The search functions scan the waiting vectors
-- exactly, beside the HNSW index over the others, so a row is searchable as soon as it is embedded.
-- A row holds a vector in one of the two columns, never both. `PIPELINE_MAX_UNINDEXED` caps how many wait.
--
-- The column takes the dimension `embedding` has now (a switch of model may have changed it).

do $$
begin
    execute format(
        'alter table public.dores add column if not exists embedding_unindexed %s',
        (select pg_catalog.format_type(a.atttypid, a.atttypmod) from pg_catalog.pg_attribute a
         where a.attrelid = 'public.dores'::regclass and a.attname = 'embedding')
    );
end
$$;

-- Finds the waiting vectors (the exact scan) without reading the table; empty once they are indexed.
create index if not exists dores_embedding_unindexed_idx on public.dores (id) where embedding_unindexed is not null;
