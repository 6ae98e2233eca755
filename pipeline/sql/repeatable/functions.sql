-- The pipeline's functions and views with their security attributes, applied by every `pipeline migrate`
-- after the numbered migrations (a repeatable migration: it is rewritten in place when a definition
-- changes, and running it again is harmless). `migrate` keeps its checksum in pipeline.state, so code that
-- ships a changed file asks for `pipeline migrate` before it runs.
--
-- Numbered migrations are never edited, and the first ones created these functions without a fixed
-- search_path or SECURITY DEFINER. Re-running one of them by hand (pasting 0001 into the SQL editor)
-- replaces a function with that weaker version; the next `pipeline migrate` puts this one back, and
-- `pipeline status` says when it is needed.
--
-- Every function fixes its search_path in its own definition: pg_catalog, then the schema that holds
-- `vector` (public on a plain PostgreSQL, extensions on Supabase), captured below with
-- `set search_path from current`. Tables are always schema-qualified.

select set_config(
    'search_path',
    'pg_catalog, ' || (select e.extnamespace::regnamespace::text from pg_catalog.pg_extension e where e.extname = 'vector'),
    true
);
-- Load pgvector's library so that its settings (hnsw.ef_search) can be named in a function's SET clause
-- by a role that is not a superuser (Supabase's `postgres`).
select '[1]'::vector is not null as vector_loaded;

-- text and hashes: the worker, the staleness checks and `backfill` agree on them byte for byte ---------

create or replace function pipeline.dor_text(dor_base text, solucao_graventum text)
returns text
language sql immutable parallel safe
set search_path from current
as $$ select concat_ws(E'\n', dor_base, nullif(solucao_graventum, '')) $$;

create or replace function pipeline.document_text(title text, content text)
returns text
language sql immutable parallel safe
set search_path from current
as $$ select concat_ws(E'\n\n', nullif(title, ''), content) $$;

create or replace function pipeline.content_hash(body text)
returns text
language sql immutable parallel safe
set search_path from current
as $$ select encode(sha256(convert_to(coalesce(body, ''), 'UTF8')), 'hex') $$;

-- queue triggers ------------------------------------------------------------------------------------
-- SECURITY DEFINER: writers of the source tables (n8n, the app, PostgREST's roles) need no right on
-- schema pipeline. Nobody may call them directly (a trigger needs no EXECUTE right to fire).
-- Arguments: the source's name and its key column (`dores` and `documents`, whose triggers predate
-- the arguments, are named after their table and keyed by `id`).

create or replace function pipeline.enqueue_row()
returns trigger
language plpgsql
security definer
set search_path from current
as $$
declare
    v_source text := coalesce(tg_argv[0], tg_table_name);
    v_key text := to_jsonb(new) ->> coalesce(tg_argv[1], 'id');
begin
    delete from pipeline.failed where source = v_source and row_id = v_key;
    insert into pipeline.queue (source, row_id) values (v_source, v_key)
    on conflict (source, row_id) do nothing;
    return null;
end
$$;

create or replace function pipeline.forget_row()
returns trigger
language plpgsql
security definer
set search_path from current
as $$
begin
    -- The queue row (if any) is dropped by the worker when it finds the source row gone; deleting it
    -- here could wait on a worker that holds it.
    delete from pipeline.failed
    where source = coalesce(tg_argv[0], tg_table_name) and row_id = to_jsonb(old) ->> coalesce(tg_argv[1], 'id');
    delete from pipeline.predictions
    where source = coalesce(tg_argv[0], tg_table_name) and row_key = to_jsonb(old) ->> coalesce(tg_argv[1], 'id');
    return null;
end
$$;

create or replace function pipeline.forget_table()
returns trigger
language plpgsql
security definer
set search_path from current
as $$
begin
    delete from pipeline.queue where source = coalesce(tg_argv[0], tg_table_name);
    delete from pipeline.failed where source = coalesce(tg_argv[0], tg_table_name);
    delete from pipeline.predictions where source = coalesce(tg_argv[0], tg_table_name);
    return null;
end
$$;

create or replace function pipeline.notify_queue()
returns trigger
language plpgsql
security definer
set search_path from current
as $$
begin
    perform pg_notify('pipeline_queue', coalesce(tg_argv[0], tg_table_name));
    return null;
end
$$;

create or replace function pipeline.touch_updated_at()
returns trigger
language plpgsql
set search_path from current
as $$
begin
    new.updated_at := now();
    return new;
end
$$;

revoke all on function pipeline.enqueue_row(), pipeline.forget_row(), pipeline.forget_table(),
    pipeline.notify_queue() from public;

-- Which of `keys` still exist in a source's table, whatever row-level security hides from the caller:
-- the worker tells a deleted row (its queue row may go) from one it merely cannot see (it must stay).
-- SECURITY DEFINER, executable only by roles granted it (the worker role in docs/security.md).
drop function if exists pipeline.existing_ids(text, bigint[]);
create or replace function pipeline.existing_keys(source text, keys text[])
returns text[]
language plpgsql stable
security definer
set search_path from current
as $$
declare
    s pipeline.sources;
    present text[];
begin
    select * into s from pipeline.sources where name = source;
    if not found then
        raise exception 'unknown source %', source using errcode = '22023';
    end if;
    execute format(
        'select coalesce(array_agg(t.%1$I::text), ''{}'') from %2$I.%3$I t where t.%1$I = any($1::%4$s[])',
        s.key_column, s.table_schema, s.table_name, s.key_type
    ) into present using keys;
    return present;
end
$$;
revoke all on function pipeline.existing_keys(text, text[]) from public;

-- Rows of a source embedded with another model than `model`.
create or replace function pipeline.other_model_rows(source text, model text)
returns bigint
language plpgsql stable
set search_path from current
as $$
declare
    s pipeline.sources;
    n bigint;
begin
    select * into s from pipeline.sources where name = source;
    if not found or model is null then
        return 0;
    end if;
    if to_regclass(format('%I.%I', s.table_schema, s.table_name)) is null then
        return null;  -- the table is gone; `pipeline status` says so
    end if;
    execute format(
        'select count(*) from %I.%I t where t.embedding_model is distinct from $1 and t.embedding_model is not null',
        s.table_schema, s.table_name
    ) into n using model;
    return n;
end
$$;

-- segments ------------------------------------------------------------------------------------------

-- The segment model now in use for a source (null before its first fit, and after a model switch).
create or replace function pipeline.source_segment_model(source text)
returns bigint
language sql stable
set search_path from current
as $$ select nullif(value, '')::bigint from pipeline.state where key = 'segment_model:' || source $$;

create or replace function pipeline.active_segment_model()
returns bigint
language sql stable
set search_path from current
as $$ select pipeline.source_segment_model('dores') $$;

-- Nearest centroid of a source's active model (null when none has been fitted).
create or replace function pipeline.nearest_source_segment(source text, embedding vector)
returns int
language sql stable
set search_path from current
as $$
    select s.segmento
    from public.segments s
    where s.model_id = pipeline.source_segment_model(source)
    order by s.centroid <=> embedding
    limit 1
$$;

create or replace function pipeline.nearest_segment(embedding vector)
returns int
language sql stable
set search_path from current
as $$ select pipeline.nearest_source_segment('dores', embedding) $$;

-- The caller's rights and row-level security apply (security_invoker).
create or replace view public.current_segments with (security_invoker = true) as
select s.segmento, s.label, s.top_terms, s.size, s.centroid, s.model_id
from public.segments s
where s.model_id = pipeline.active_segment_model();

-- RAG: SECURITY INVOKER, so the caller's row-level security policies decide what it finds -----------

-- With a segment filter, HNSW would return the nearest rows of all segments and drop most of them
-- (fewer than match_count results); the filtered branch scans that segment exactly instead.
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
            select d.id, d.dor_base, d.solucao_graventum, d.segmento,
                   1 - (d.embedding <=> query_embedding) as similarity
            from public.dores d
            where d.embedding is not null
            order by d.embedding <=> query_embedding
            limit match_count;
    else
        return query
            select d.id, d.dor_base, d.solucao_graventum, d.segmento,
                   1 - (d.embedding <=> query_embedding) as similarity
            from public.dores d
            where d.embedding is not null and d.segmento = filter_segmento
            order by (d.embedding <=> query_embedding) + 0
            limit match_count;
    end if;
end
$$;

-- Words and meaning together: the dores that share the query's words (Portuguese stems, any of them, ranked
-- by cover density) fused with the nearest vectors by reciprocal rank fusion. `score` orders the results;
-- `similarity` is the cosine, as in match_dores. With a segment filter, pgvector's iterative index scan
-- keeps going until enough rows of that segment are found.
create or replace function public.match_dores_hybrid(
    query_text text,
    query_embedding vector(384),
    match_count int default 10,
    filter_segmento int default null,
    full_text_weight float default 1,
    semantic_weight float default 1,
    rrf_k int default 50
)
returns table (id bigint, dor_base text, solucao_graventum text, segmento int, similarity float, score float)
language sql stable security invoker
set search_path from current
set hnsw.ef_search = 100
set hnsw.iterative_scan = 'relaxed_order'
as $$
    with query as (
        select nullif(replace(plainto_tsquery('portuguese', query_text)::text, ' & ', ' | '), '')::tsquery as words
    ),
    full_text as (
        select d.id,
               row_number() over (order by ts_rank_cd(
                   to_tsvector('portuguese'::regconfig, pipeline.dor_text(d.dor_base, d.solucao_graventum)), q.words
               ) desc) as rank_ix
        from public.dores d, query q
        where to_tsvector('portuguese'::regconfig, pipeline.dor_text(d.dor_base, d.solucao_graventum)) @@ q.words
          and d.embedding is not null
          and (filter_segmento is null or d.segmento = filter_segmento)
        order by rank_ix
        limit least(match_count, 30) * 2
    ),
    semantic as (
        select n.id, row_number() over (order by n.distance) as rank_ix
        from (
            select d.id, d.embedding <=> query_embedding as distance
            from public.dores d
            where d.embedding is not null and (filter_segmento is null or d.segmento = filter_segmento)
            order by d.embedding <=> query_embedding
            limit least(match_count, 30) * 2
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

-- hnsw.ef_search is raised to 100 for this call only (recall@10 >= 0.98 at 100,000 chunks). With a selective
-- `filter`, pgvector's iterative index scan goes on past the first candidates until `match_count` chunks
-- that match are found (relaxed order, put back in order here).
create or replace function public.match_documents(
    query_embedding vector(384),
    match_count int default null,
    filter jsonb default '{}'
)
returns table (id bigint, content text, metadata jsonb, similarity float)
language sql stable security invoker
set search_path from current
set hnsw.ef_search = 100
set hnsw.iterative_scan = 'relaxed_order'
as $$
    with nearest as materialized (
        select c.id, c.content, c.metadata, c.embedding <=> query_embedding as distance
        from public.document_chunks c
        where c.metadata @> filter
        order by c.embedding <=> query_embedding
        limit match_count
    )
    select n.id, n.content, n.metadata, 1 - n.distance as similarity
    from nearest n
    order by n.distance
$$;

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
set search_path from current
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

-- classifiers ---------------------------------------------------------------------------------------

-- Every class's probability under one version of a classifier: softmax(weight · embedding + intercept)
-- over the unit vector, most likely first.
create or replace function pipeline.classifier_probabilities(classifier text, version int, embedding vector)
returns table (label text, probability float8)
language sql stable parallel safe
set search_path from current
as $$
    with logits as (
        select w.position, w.label, w.intercept - (w.weight <#> l2_normalize(embedding)) as logit
        from pipeline.classifier_weights w
        where w.classifier = $1 and w.version = $2
    )
    select l.label, exp(l.logit - m.top) / sum(exp(l.logit - m.top)) over ()
    from logits l cross join (select max(logit) as top from logits) m
    order by 2 desc, l.position
$$;

-- The verdict of one version: the most likely label, its probability, and every class's probability.
create or replace function pipeline.classify_embedding(classifier text, version int, embedding vector)
returns table (label text, probability float8, probabilities jsonb)
language sql stable parallel safe
set search_path from current
as $$
    select (array_agg(p.label order by p.probability desc))[1],
           max(p.probability),
           jsonb_object_agg(p.label, round(p.probability::numeric, 6))
    from pipeline.classifier_probabilities($1, $2, $3) p
    having count(*) > 0
$$;

-- Rows of a classifier's source whose vector was not scored by its active version (null: source gone).
-- Rows embedded with another model than the one it was trained on count too: it cannot score them until
-- it is trained again, and the count says so.
create or replace function pipeline.unscored_rows(classifier text)
returns bigint
language plpgsql stable
set search_path from current
as $$
declare
    c pipeline.classifiers;
    s pipeline.sources;
    v pipeline.classifier_versions;
    n bigint;
begin
    select * into c from pipeline.classifiers where name = classifier;
    select * into s from pipeline.sources where name = c.source;
    select * into v from pipeline.classifier_versions cv where cv.classifier = c.name and cv.version = c.active_version;
    if v.version is null or s.kind <> 'row' then
        return 0;
    end if;
    if to_regclass(format('%I.%I', s.table_schema, s.table_name)) is null then
        return null;
    end if;
    execute format(
        'select count(*) from %I.%I t where t.embedding is not null'
        ' and not exists (select 1 from pipeline.predictions p'
        '  where p.classifier = $1 and p.row_key = t.%I::text and p.version = $2)',
        s.table_schema, s.table_name, s.key_column
    ) into n using c.name, v.version;
    return n;
end
$$;

-- For the API: every class's probability for a query vector under a classifier's active version,
-- most likely first. SECURITY DEFINER (the weights live in schema pipeline), executable only by the
-- roles granted it: the service role on Supabase; `grant execute` opens it to others.
create or replace function public.predict(classifier text, query_embedding vector)
returns table (label text, probability float)
language plpgsql stable
security definer
set search_path from current
as $$
declare
    v_version int;
begin
    select c.active_version into v_version from pipeline.classifiers c where c.name = predict.classifier;
    if v_version is null then
        raise exception 'no trained classifier named %', predict.classifier using errcode = '22023';
    end if;
    return query select p.label, p.probability from pipeline.classifier_probabilities(predict.classifier, v_version, query_embedding) p;
end
$$;
revoke all on function public.predict(text, vector) from public;
do $$
begin
    -- Supabase grants every new function in public to its API roles: take it back, open it to the service role.
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'anon') then
        revoke all on function public.predict(text, vector) from anon;
    end if;
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'authenticated') then
        revoke all on function public.predict(text, vector) from authenticated;
    end if;
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'service_role') then
        grant execute on function public.predict(text, vector) to service_role;
    end if;
end
$$;

-- Rows still unscored per classifier (beside pipeline.lag, whose columns a hand-run 0001 must still match).
create or replace view pipeline.classifier_lag with (security_invoker = true) as
select c.name as classifier, c.source, c.active_version as version, pipeline.unscored_rows(c.name) as unscored
from pipeline.classifiers c;

-- Where things stand, one row per source.
create or replace view pipeline.lag with (security_invoker = true) as
with model as (select value as name from pipeline.state where key = 'model')
select s.name as source,
       coalesce(q.pending, 0) as pending,
       q.oldest_pending_age,
       coalesce(f.failed, 0) as failed,
       pipeline.other_model_rows(s.name, (select name from model)) as other_model
from pipeline.sources s
left join (
    select source, count(*) as pending, now() - min(enqueued_at) as oldest_pending_age
    from pipeline.queue group by source
) q on q.source = s.name
left join (select source, count(*) as failed from pipeline.failed group by source) f on f.source = s.name;
