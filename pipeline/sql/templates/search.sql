-- Every source's search functions, dores and documents included, rendered from these templates by
-- `pipeline migrate` (pipeline/search_functions.py fills the {placeholders}; braces that SQL itself needs are
-- doubled). One definition of the vector side, of the word side and of their fusion, whatever the source.
--
-- Conventions: SECURITY INVOKER (the caller's row-level security decides what is found), a fixed search_path
-- (pg_catalog, public, the schema that holds `vector`), tables schema-qualified, nothing from schema
-- `pipeline` (the API roles have no right there). hnsw.ef_search is raised to 100 for the call only (recall@10
-- >= 0.98 at 100,000 rows); with a selective filter, pgvector's iterative index scan goes on past the first
-- candidates until enough rows that match are found (relaxed order, put back in order here).

-- nearest --
-- The `{limit}` nearest rows as (key, distance). A row source's vectors may wait for the vector index
-- (`embedding_indexed` false: written in a burst, not yet in the HNSW graph, which covers only the indexed
-- rows); they are scanned exactly beside the index, so every row with a vector is found.
(select t.{key} as key, t.embedding <=> query_embedding as distance
 from {table} t
 where {indexed} and {filter}
 order by t.embedding <=> query_embedding
 limit {limit})
{waiting}

-- waiting --
union all
(select t.{key}, t.embedding <=> query_embedding
 from {table} t
 where t.embedding is not null and not t.embedding_indexed and {filter}
 order by 2
 limit {limit})

-- vector --
create or replace function {function}(query_embedding vector({dim}), match_count int default {count}{arguments})
returns table ({returns}, similarity float)
language sql stable security invoker
set search_path from current
set hnsw.ef_search = 100
set hnsw.iterative_scan = 'relaxed_order'
as $$
    select {output}, 1 - n.distance
    from ({nearest}) n
    join {table} t on t.{key} = n.key
    order by n.distance, n.key
    limit match_count
$$

-- hybrid --
-- Words and meaning together. The word side ranks the rows that share any of the query's stems (in the
-- source's full-text configuration) by the sum of those stems' inverse document frequency, BM25's weight
-- counted among the rows searched: a rare word that matches counts for more than a common one. The vector
-- side ranks by cosine. Each ranks 60 rows (or match_count, if more); reciprocal rank fusion orders the
-- union: `score` = sum of weight / (rrf_k + rank). `similarity` is the cosine, as in the vector function.
create or replace function {function}(query_text text, query_embedding vector({dim}), match_count int default 10{arguments})
returns table ({returns}, similarity float, score float)
language sql stable security invoker
set search_path from current
set hnsw.ef_search = 100
set hnsw.iterative_scan = 'relaxed_order'
as $$
    with words as (
        select quote_literal(w)::tsquery as q
        from unnest(tsvector_to_array(to_tsvector({language}::regconfig, query_text))) w
    ),
    -- Each row's words are read once, not once per query word.
    matching as materialized (
        select t.{key} as key, {words_once} as fts
        from {table} t
        where {words} @@ (select string_agg(q::text, ' | ')::tsquery from words) and {searched}
    ),
    searched as materialized (
        select count(*) as n from {table} t where {searched}
    ),
    weighted as materialized (
        select w.q, ln(1 + (s.n - df.n + 0.5) / (df.n + 0.5)) as idf
        from words w cross join searched s
        cross join lateral (select count(*) as n from matching m where m.fts @@ w.q) df
        where df.n > 0
    ),
    full_text as (
        select m.key, row_number() over (order by r.idf desc, m.key) as rank_ix
        from matching m
        cross join lateral (select round(sum(w.idf)::numeric, 9) as idf from weighted w where m.fts @@ w.q) r
        order by rank_ix
        limit greatest(match_count, 60)
    ),
    semantic as (
        select n.key, row_number() over (order by n.distance, n.key) as rank_ix
        from ({nearest}) n
        order by n.distance, n.key
        limit greatest(match_count, 60)
    )
    select {output}, 1 - (t.embedding <=> query_embedding) as similarity,
           coalesce(1.0 / (rrf_k + full_text.rank_ix), 0.0) * full_text_weight
             + coalesce(1.0 / (rrf_k + semantic.rank_ix), 0.0) * semantic_weight as score
    from full_text
    full outer join semantic on full_text.key = semantic.key
    join {table} t on t.{key} = coalesce(full_text.key, semantic.key)
    order by score desc, similarity desc
    limit match_count
$$
