-- Search over dores whose newest vectors may still wait for the vector index (migration 0010): each
-- function takes the nearest rows from the HNSW index over `embedding` and the nearest of the few rows
-- whose vector waits in `embedding_unindexed` (an exact scan), and keeps the best of both. A row holds its
-- vector in one column or the other, never both, so no row comes twice.
--
-- A repeatable file, applied by every `pipeline migrate` after functions.sql and hybrid_search.sql (name
-- order): these definitions replace theirs, which stay as they were released. Same conventions: a fixed
-- search_path (pg_catalog, then the schema that holds `vector`), schema-qualified tables, SECURITY INVOKER.

select set_config(
    'search_path',
    'pg_catalog, ' || (select e.extnamespace::regnamespace::text from pg_catalog.pg_extension e where e.extname = 'vector'),
    true
);
select '[1]'::vector is not null as vector_loaded;

-- With a segment filter, HNSW would return the nearest rows of all segments and drop most of them; the
-- filtered branch scans that segment exactly instead.
create or replace function public.match_dores(
    query_embedding vector(384),
    match_count int default 10,
    filter_segmento int default null
)
returns table (id bigint, dor_base text, solucao_graventum text, segmento int, similarity float)
language plpgsql stable security invoker
set search_path from current
as $$
begin
    if filter_segmento is null then
        return query
            select n.id, n.dor_base, n.solucao_graventum, n.segmento, 1 - n.distance
            from (
                (select d.id, d.dor_base, d.solucao_graventum, d.segmento, d.embedding <=> query_embedding as distance
                 from public.dores d
                 where d.embedding is not null
                 order by d.embedding <=> query_embedding
                 limit match_count)
                union all
                (select d.id, d.dor_base, d.solucao_graventum, d.segmento, d.embedding_unindexed <=> query_embedding
                 from public.dores d
                 where d.embedding_unindexed is not null
                 order by 5
                 limit match_count)
            ) n
            order by n.distance, n.id
            limit match_count;
    else
        return query
            select d.id, d.dor_base, d.solucao_graventum, d.segmento,
                   1 - (coalesce(d.embedding, d.embedding_unindexed) <=> query_embedding) as similarity
            from public.dores d
            where coalesce(d.embedding, d.embedding_unindexed) is not null and d.segmento = filter_segmento
            order by coalesce(d.embedding, d.embedding_unindexed) <=> query_embedding, d.id
            limit match_count;
    end if;
end
$$;

-- Words and meaning together, as in hybrid_search.sql; the vector side also ranks the waiting vectors. The
-- words are those of pipeline.dor_text spelled with built-in operators (the expression of dores_words_idx,
-- 0011): a caller needs no right on schema pipeline.
create or replace function public.match_dores_hybrid(
    query_text text,
    query_embedding vector(384),
    match_count int default 10,
    filter_segmento int default null,
    full_text_weight float default 1,
    semantic_weight float default 1,
    rrf_k int default 20
)
returns table (id bigint, dor_base text, solucao_graventum text, segmento int, similarity float, score float)
language sql stable security invoker
set search_path from current
set hnsw.ef_search = 100
set hnsw.iterative_scan = 'relaxed_order'
as $$
    with words as (
        select quote_literal(w)::tsquery as q
        from unnest(tsvector_to_array(to_tsvector('portuguese', query_text))) w
    ),
    searched as materialized (
        select count(*) as n
        from public.dores d
        where coalesce(d.embedding, d.embedding_unindexed) is not null
          and (filter_segmento is null or d.segmento = filter_segmento)
    ),
    weighted as materialized (
        select w.q, ln(1 + (s.n - df.n + 0.5) / (df.n + 0.5)) as idf
        from words w cross join searched s
        cross join lateral (
            select count(*) as n
            from public.dores d
            where to_tsvector('portuguese'::regconfig, d.dor_base || coalesce(E'\n' || nullif(d.solucao_graventum, ''), '')) @@ w.q
              and coalesce(d.embedding, d.embedding_unindexed) is not null
              and (filter_segmento is null or d.segmento = filter_segmento)
        ) df
        where df.n > 0
    ),
    matching as materialized (
        select d.id, to_tsvector('portuguese'::regconfig, d.dor_base || coalesce(E'\n' || nullif(d.solucao_graventum, ''), '')) as fts
        from public.dores d
        where to_tsvector('portuguese'::regconfig, d.dor_base || coalesce(E'\n' || nullif(d.solucao_graventum, ''), ''))
              @@ (select string_agg(q::text, ' | ')::tsquery from weighted)
          and coalesce(d.embedding, d.embedding_unindexed) is not null
          and (filter_segmento is null or d.segmento = filter_segmento)
    ),
    full_text as (
        select m.id, row_number() over (order by r.idf desc, m.id) as rank_ix
        from matching m
        cross join lateral (select round(sum(w.idf)::numeric, 9) as idf from weighted w where m.fts @@ w.q) r
        order by rank_ix
        limit greatest(match_count, 60)
    ),
    semantic as (
        select n.id, row_number() over (order by n.distance, n.id) as rank_ix
        from (
            (select d.id, d.embedding <=> query_embedding as distance
             from public.dores d
             where d.embedding is not null and (filter_segmento is null or d.segmento = filter_segmento)
             order by d.embedding <=> query_embedding
             limit greatest(match_count, 60))
            union all
            (select d.id, d.embedding_unindexed <=> query_embedding
             from public.dores d
             where d.embedding_unindexed is not null and (filter_segmento is null or d.segmento = filter_segmento)
             order by 2
             limit greatest(match_count, 60))
        ) n
        order by n.distance, n.id
        limit greatest(match_count, 60)
    )
    select d.id, d.dor_base, d.solucao_graventum, d.segmento,
           1 - (coalesce(d.embedding, d.embedding_unindexed) <=> query_embedding) as similarity,
           coalesce(1.0 / (rrf_k + full_text.rank_ix), 0.0) * full_text_weight
             + coalesce(1.0 / (rrf_k + semantic.rank_ix), 0.0) * semantic_weight as score
    from full_text
    full outer join semantic on full_text.id = semantic.id
    join public.dores d on d.id = coalesce(full_text.id, semantic.id)
    order by score desc, similarity desc
    limit match_count
$$;
