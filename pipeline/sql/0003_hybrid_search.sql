-- Hybrid search over document chunks: Portuguese full text (GIN) fused with vector search by reciprocal
-- rank fusion, as in Supabase's hybrid-search guide.

alter table public.document_chunks
    add column if not exists fts tsvector generated always as (to_tsvector('portuguese', content)) stored;
create index if not exists document_chunks_fts_idx on public.document_chunks using gin (fts);
create index if not exists document_chunks_metadata_idx on public.document_chunks using gin (metadata jsonb_path_ops);

create or replace function public.match_documents_hybrid(
    query_text text,
    query_embedding vector(384),
    match_count int default 10,
    full_text_weight float default 1,
    semantic_weight float default 1,
    rrf_k int default 50,
    filter jsonb default '{}'
)
returns table (id bigint, content text, metadata jsonb, similarity float, score float)
language sql stable security invoker
set hnsw.ef_search = 100
as $$
    with full_text as (
        select c.id,
               row_number() over (order by ts_rank_cd(c.fts, websearch_to_tsquery('portuguese', query_text)) desc) as rank_ix
        from public.document_chunks c
        where c.fts @@ websearch_to_tsquery('portuguese', query_text)
          and c.metadata @> filter
        order by rank_ix
        limit least(match_count, 30) * 2
    ),
    semantic as (
        select c.id, row_number() over (order by c.embedding <=> query_embedding) as rank_ix
        from public.document_chunks c
        where c.metadata @> filter
        order by c.embedding <=> query_embedding
        limit least(match_count, 30) * 2
    )
    select c.id, c.content, c.metadata,
           1 - (c.embedding <=> query_embedding) as similarity,
           coalesce(1.0 / (rrf_k + full_text.rank_ix), 0.0) * full_text_weight
             + coalesce(1.0 / (rrf_k + semantic.rank_ix), 0.0) * semantic_weight as score
    from full_text
    full outer join semantic on full_text.id = semantic.id
    join public.document_chunks c on c.id = coalesce(full_text.id, semantic.id)
    order by score desc
    limit least(match_count, 30)
$$;
