-- Hybrid search for dores and documents: words ranked by how rare they are, fused with the vectors. A
-- repeatable file like functions.sql, applied by every `pipeline migrate` after it (files run in name
-- order), so these definitions replace the earlier ones that functions.sql still creates; functions.sql
-- stays as it was released. `migrate` keeps this file's checksum too: code that ships it asks for
-- `pipeline migrate` before it runs.
--
-- Same conventions as functions.sql: each function fixes its own search_path (pg_catalog, then the schema
-- that holds `vector`), tables are schema-qualified, SECURITY INVOKER (row-level security applies).

select set_config(
    'search_path',
    'pg_catalog, ' || (select e.extnamespace::regnamespace::text from pg_catalog.pg_extension e where e.extname = 'vector'),
    true
);
select '[1]'::vector is not null as vector_loaded;

-- Words and meaning together. The full-text side ranks the dores that share any of the query's Portuguese
-- stems by the sum of those stems' inverse document frequency (BM25's weight, counted among the rows
-- searched): a rare word that matches counts for more than a common one ("faltam" over "clientes"). The
-- vector side ranks by cosine. Each ranks 60 rows (or match_count, if more); reciprocal rank fusion orders the union:
-- `score` = sum of weight / (rrf_k + rank). `similarity` is the cosine, as in match_dores. With a segment
-- filter, pgvector's iterative index scan keeps going until enough rows of that segment are found.
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
        where d.embedding is not null and (filter_segmento is null or d.segmento = filter_segmento)
    ),
    weighted as materialized (
        select w.q, ln(1 + (s.n - df.n + 0.5) / (df.n + 0.5)) as idf
        from words w cross join searched s
        cross join lateral (
            select count(*) as n
            from public.dores d
            where to_tsvector('portuguese'::regconfig, pipeline.dor_text(d.dor_base, d.solucao_graventum)) @@ w.q
              and d.embedding is not null and (filter_segmento is null or d.segmento = filter_segmento)
        ) df
        where df.n > 0
    ),
    matching as materialized (
        select d.id, to_tsvector('portuguese'::regconfig, pipeline.dor_text(d.dor_base, d.solucao_graventum)) as fts
        from public.dores d
        where to_tsvector('portuguese'::regconfig, pipeline.dor_text(d.dor_base, d.solucao_graventum))
              @@ (select string_agg(q::text, ' | ')::tsquery from weighted)
          and d.embedding is not null
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
            select d.id, d.embedding <=> query_embedding as distance
            from public.dores d
            where d.embedding is not null and (filter_segmento is null or d.segmento = filter_segmento)
            order by d.embedding <=> query_embedding
            limit greatest(match_count, 60)
        ) n
    )
    select d.id, d.dor_base, d.solucao_graventum, d.segmento,
           1 - (d.embedding <=> query_embedding) as similarity,
           coalesce(1.0 / (rrf_k + full_text.rank_ix), 0.0) * full_text_weight
             + coalesce(1.0 / (rrf_k + semantic.rank_ix), 0.0) * semantic_weight as score
    from full_text
    full outer join semantic on full_text.id = semantic.id
    join public.dores d on d.id = coalesce(full_text.id, semantic.id)
    order by score desc, similarity desc
    limit match_count
$$;

-- The same fusion for document chunks: the chunks' Portuguese full text (stored column `fts`), ranked by the
-- summed inverse document frequency of the query's stems they contain, and the vectors; a `filter` on the
-- metadata applies to both sides.
create or replace function public.match_documents_hybrid(
    query_text text,
    query_embedding vector(384),
    match_count int default 10,
    full_text_weight float default 1,
    semantic_weight float default 1,
    rrf_k int default 20,
    filter jsonb default '{}'
)
returns table (id bigint, content text, metadata jsonb, similarity float, score float)
language sql stable security invoker
set search_path from current
set hnsw.ef_search = 100
set hnsw.iterative_scan = 'relaxed_order'
as $$
    with words as (
        select quote_literal(w)::tsquery as q
        from unnest(tsvector_to_array(to_tsvector('portuguese', query_text))) w
    ),
    -- Each chunk's words are read once (a detoasted copy), not once per query word.
    matching as materialized (
        select c.id, c.fts || ''::tsvector as fts
        from public.document_chunks c
        where c.fts @@ (select string_agg(q::text, ' | ')::tsquery from words)
          and (filter = '{}'::jsonb or c.metadata @> filter)
    ),
    searched as materialized (
        select count(*) as n from public.document_chunks c where filter = '{}'::jsonb or c.metadata @> filter
    ),
    weighted as materialized (
        select w.q, ln(1 + (s.n - df.n + 0.5) / (df.n + 0.5)) as idf
        from words w cross join searched s
        cross join lateral (select count(*) as n from matching m where m.fts @@ w.q) df
        where df.n > 0
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
            select c.id, c.embedding <=> query_embedding as distance
            from public.document_chunks c
            where c.metadata @> filter
            order by c.embedding <=> query_embedding
            limit greatest(match_count, 60)
        ) n
    )
    select c.id, c.content, c.metadata,
           1 - (c.embedding <=> query_embedding) as similarity,
           coalesce(1.0 / (rrf_k + full_text.rank_ix), 0.0) * full_text_weight
             + coalesce(1.0 / (rrf_k + semantic.rank_ix), 0.0) * semantic_weight as score
    from full_text
    full outer join semantic on full_text.id = semantic.id
    join public.document_chunks c on c.id = coalesce(full_text.id, semantic.id)
    order by score desc, similarity desc
    limit match_count
$$;
