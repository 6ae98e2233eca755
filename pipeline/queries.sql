-- Named queries the worker runs, loaded once by `pipeline.db.queries()`.

-- get_state --
select key, value from pipeline.state

-- record_model --
insert into pipeline.state (key, value)
values ('model', %(model)s), ('dimension', %(dimension)s::text)
on conflict (key) do nothing

-- set_model --
-- Segments were fitted in the old model's space: none is active until the next fit.
with forget as (delete from pipeline.state where key = 'segment_model')
insert into pipeline.state (key, value, updated_at)
values ('model', %(model)s, now()), ('dimension', %(dimension)s::text, now())
on conflict (key) do update set value = excluded.value, updated_at = now()

-- column_dimension --
select atttypmod as dimension
from pg_attribute
where attrelid = 'public.dores'::regclass and attname = 'embedding'

-- claim --
select row_id, attempts
from pipeline.queue
where source = %(source)s and next_attempt_at <= now()
order by next_attempt_at, row_id
limit %(limit)s
for update skip locked

-- read_dores --
select id, text, hash, (content_hash = hash and embedding_model = %(model)s and has_embedding) as current
from (
    select d.id,
           pipeline.dor_text(d.dor_base, d.solucao_graventum) as text,
           pipeline.content_hash(pipeline.dor_text(d.dor_base, d.solucao_graventum)) as hash,
           d.content_hash, d.embedding_model, d.embedding is not null as has_embedding
    from public.dores d
    where d.id = any(%(ids)s)
) t

-- read_documents --
select id, title, text, hash, (content_hash = hash and embedding_model = %(model)s) as current
from (
    select d.id, d.title,
           pipeline.document_text(d.title, d.content) as text,
           pipeline.content_hash(pipeline.document_text(d.title, d.content)) as hash,
           d.content_hash, d.embedding_model
    from public.documents d
    where d.id = any(%(ids)s)
) t

-- create_staging --
create temp table if not exists pipeline_staging (
    row_id bigint not null,
    chunk_index int not null default 0,
    content text,
    embedding vector not null,
    content_hash text not null
) on commit delete rows

-- copy_dores --
copy pg_temp.pipeline_staging (row_id, embedding, content_hash) from stdin (format binary)

-- copy_chunks --
copy pg_temp.pipeline_staging (row_id, chunk_index, content, embedding, content_hash) from stdin (format binary)

-- write_dores --
-- Only rows whose text is still the text that was embedded; a row changed meanwhile keeps its queue
-- row and is embedded again.
-- The new vector also gets the segment of its nearest current centroid.
update public.dores d
set embedding = s.embedding,
    embedding_model = %(model)s,
    content_hash = s.content_hash,
    embedded_at = now(),
    segmento = coalesce(pipeline.nearest_segment(s.embedding), d.segmento)
from pg_temp.pipeline_staging s
where d.id = s.row_id
  and pipeline.content_hash(pipeline.dor_text(d.dor_base, d.solucao_graventum)) = s.content_hash
returning d.id

-- write_documents --
update public.documents d
set embedding_model = %(model)s,
    content_hash = s.content_hash,
    embedded_at = now()
from (select distinct row_id, content_hash from pg_temp.pipeline_staging) s
where d.id = s.row_id
  and pipeline.content_hash(pipeline.document_text(d.title, d.content)) = s.content_hash
returning d.id

-- delete_chunks --
delete from public.document_chunks where document_id = any(%(ids)s)

-- insert_chunks --
insert into public.document_chunks
    (document_id, chunk_index, content, metadata, embedding, embedding_model, content_hash)
select s.row_id, s.chunk_index, s.content,
       d.metadata || jsonb_build_object('document_id', d.id, 'title', d.title, 'chunk_index', s.chunk_index),
       s.embedding, %(model)s, pipeline.content_hash(s.content)
from pg_temp.pipeline_staging s
join public.documents d on d.id = s.row_id
where s.row_id = any(%(ids)s)
order by s.row_id, s.chunk_index

-- delete_queue --
delete from pipeline.queue where source = %(source)s and row_id = any(%(ids)s)

-- retry_later --
update pipeline.queue
set attempts = attempts + 1,
    last_error = %(error)s,
    next_attempt_at = now() + make_interval(secs => %(delay)s)
where source = %(source)s and row_id = %(row_id)s

-- move_to_failed --
with gone as (
    delete from pipeline.queue
    where source = %(source)s and row_id = %(row_id)s
    returning source, row_id, attempts
)
insert into pipeline.failed (source, row_id, attempts, error)
select source, row_id, attempts + 1, %(error)s from gone
on conflict (source, row_id)
do update set attempts = excluded.attempts, error = excluded.error, failed_at = now()

-- queue_stale_dores --
insert into pipeline.queue (source, row_id)
select 'dores', d.id
from public.dores d
where d.embedding is null
   or d.embedding_model is distinct from %(model)s
   or d.content_hash is distinct from pipeline.content_hash(pipeline.dor_text(d.dor_base, d.solucao_graventum))
on conflict (source, row_id) do nothing

-- queue_stale_documents --
insert into pipeline.queue (source, row_id)
select 'documents', d.id
from public.documents d
where d.embedding_model is distinct from %(model)s
   or d.content_hash is distinct from pipeline.content_hash(pipeline.document_text(d.title, d.content))
on conflict (source, row_id) do nothing

-- forget_hashes_dores --
update public.dores set content_hash = null where content_hash is not null

-- forget_hashes_documents --
update public.documents set content_hash = null where content_hash is not null

-- count_ready --
select count(*) as n from pipeline.queue where source = any(%(sources)s) and next_attempt_at <= now()

-- status_tables --
select 'dores' as source,
       (select count(*) from public.dores) as rows,
       (select count(*) from public.dores where embedding is not null) as embedded,
       null::bigint as chunks,
       (select max(embedded_at) from public.dores) as last_embedded_at
union all
select 'documents',
       (select count(*) from public.documents),
       (select count(*) from public.documents where embedded_at is not null),
       (select count(*) from public.document_chunks),
       (select max(embedded_at) from public.documents)

-- status_lag --
select source, pending, extract(epoch from oldest_pending_age)::float as oldest_pending_s, failed, other_model
from pipeline.lag

-- match_dores --
select id, dor_base, solucao_graventum, segmento, similarity
from public.match_dores(%(embedding)s, %(k)s::int, %(segmento)s::int)

-- change_dimension --
drop index if exists public.dores_embedding_idx;
drop index if exists public.document_chunks_embedding_idx;
update public.dores set embedding = null, embedding_model = null, content_hash = null, embedded_at = null where embedding is not null;
delete from public.document_chunks;
update public.documents set embedding_model = null, content_hash = null, embedded_at = null where embedded_at is not null;
alter table public.dores alter column embedding type vector({dim});
alter table public.document_chunks alter column embedding type vector({dim});
delete from public.segments;
create index dores_embedding_idx on public.dores using hnsw (embedding vector_cosine_ops) with (m = 16, ef_construction = 64);
create index document_chunks_embedding_idx on public.document_chunks using hnsw (embedding vector_cosine_ops) with (m = 16, ef_construction = 64)

-- segment_read --
select id, embedding, dor_base || ' ' || coalesce(solucao_graventum, '') as text
from public.dores
where embedding is not null
order by id

-- active_centroids --
select segmento, centroid from public.current_segments order by segmento

-- insert_segment_model --
insert into pipeline.segment_models (method, k, params, n_rows, score)
values (%(method)s, %(k)s, %(params)s::jsonb, %(n_rows)s, %(score)s)
returning id

-- insert_segment --
insert into public.segments (model_id, segmento, label, top_terms, size, centroid)
values (%(model_id)s, %(segmento)s, %(label)s, %(top_terms)s, %(size)s, %(centroid)s)

-- create_segment_staging --
create temp table if not exists segment_staging (row_id bigint primary key, segmento int not null)
on commit delete rows

-- copy_segment_staging --
copy pg_temp.segment_staging (row_id, segmento) from stdin (format binary)

-- apply_segments --
-- Only rows whose number changes are written: an UPDATE also inserts into the HNSW index.
update public.dores d
set segmento = s.segmento
from pg_temp.segment_staging s
where d.id = s.row_id and d.segmento is distinct from s.segmento

-- set_segment_model --
insert into pipeline.state (key, value, updated_at) values ('segment_model', %(model_id)s, now())
on conflict (key) do update set value = excluded.value, updated_at = now()

-- list_segments --
select s.segmento, s.label, s.size, s.top_terms,
       coalesce((
           select array_agg(e.dor_base order by e.distance)
           from (
               select d.dor_base, d.embedding <=> s.centroid as distance
               from public.dores d
               where d.segmento = s.segmento and d.embedding is not null
               order by (d.embedding <=> s.centroid) + 0
               limit %(examples)s
           ) e
       ), '{}') as examples
from public.current_segments s
order by s.segmento

-- classify --
select s.segmento, s.label, s.top_terms, 1 - (s.centroid <=> %(embedding)s) as similarity
from public.current_segments s
order by s.centroid <=> %(embedding)s
limit 1

-- segment_growth --
select m.n_rows,
       (select count(*) from public.dores where embedding is not null) as embedded,
       m.created_at
from pipeline.segment_models m
where m.id = pipeline.active_segment_model()

-- match_documents --
select id, content, metadata, similarity
from public.match_documents(query_embedding => %(embedding)s, match_count => %(k)s::int, filter => %(filter)s::jsonb)

-- match_documents_hybrid --
select id, content, metadata, similarity, score
from public.match_documents_hybrid(%(text)s, %(embedding)s, %(k)s::int, filter => %(filter)s::jsonb)

-- insert_document --
insert into public.documents (title, content, metadata) values (%(title)s, %(content)s, %(metadata)s::jsonb)
returning id

-- list_failed --
select source, row_id, attempts, error, failed_at from pipeline.failed
where (%(source)s::text is null or source = %(source)s)
order by failed_at desc, source, row_id

-- retry_failed --
with moved as (
    delete from pipeline.failed
    where (%(source)s::text is null or source = %(source)s)
      and (%(row_id)s::bigint is null or row_id = %(row_id)s)
    returning source, row_id
)
insert into pipeline.queue (source, row_id)
select source, row_id from moved
on conflict (source, row_id) do update set attempts = 0, next_attempt_at = now(), last_error = null
returning source, row_id

-- row_security_blocks --
-- The pipeline's tables on which row-level security would hide rows from the current role: RLS is on,
-- the role is neither a superuser, nor BYPASSRLS, nor (a member of) the owner unless RLS is forced,
-- and no policy for all commands with `using (true)` opens the table to it.
select c.relnamespace::regnamespace::text || '.' || c.relname as table_name, c.relforcerowsecurity as forced
from pg_catalog.pg_class c
join pg_catalog.pg_roles r on r.rolname = current_user
where c.oid = any(array[
        to_regclass('public.dores'), to_regclass('public.documents'),
        to_regclass('public.document_chunks'), to_regclass('public.segments')
      ])
  and c.relrowsecurity
  and not (r.rolsuper or r.rolbypassrls)
  and (c.relforcerowsecurity or not pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE'))
  and not exists (
      select 1 from pg_catalog.pg_policies p
      where p.schemaname = c.relnamespace::regnamespace::text and p.tablename = c.relname
        and p.permissive = 'PERMISSIVE' and p.cmd = 'ALL' and p.qual = 'true'
        and (current_user = any(p.roles) or 'public' = any(p.roles))
  )
order by c.relname = 'dores' desc, 1

-- existing_ids --
select pipeline.existing_ids(%(source)s, %(ids)s) as ids

-- advisor --
-- What Supabase's database linter (the dashboard's Security Advisor) checks, limited to the objects
-- the pipeline creates. API roles that do not exist (a plain PostgreSQL) are skipped.
with api_roles as (
    select rolname from pg_catalog.pg_roles where rolname in ('anon', 'authenticated')
),
tables as (
    select c.oid, c.relname, c.relkind, c.relrowsecurity, c.reloptions, n.nspname
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where (n.nspname = 'public' and c.relname in ('dores', 'documents', 'document_chunks', 'segments', 'current_segments'))
       or (n.nspname = 'pipeline' and c.relkind in ('r', 'v'))
),
functions as (
    select p.oid, p.proname, p.prosecdef, p.proconfig, n.nspname
    from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'pipeline'
       or (n.nspname = 'public' and p.proname in ('match_dores', 'match_documents', 'match_documents_hybrid'))
)
select 'rls_disabled_in_public' as lint, t.nspname || '.' || t.relname as object,
       'the API roles can ' || string_agg(distinct a.rolname || ' ' || lower(priv.p), ', ')
       || ' it without row-level security' as detail
from tables t
cross join api_roles a
cross join (values ('SELECT'), ('INSERT'), ('UPDATE'), ('DELETE')) priv (p)
where t.relkind = 'r' and t.nspname = 'public' and not t.relrowsecurity
  and pg_catalog.has_table_privilege(a.rolname, t.oid, priv.p)
group by t.nspname, t.relname
union all
select 'security_definer_view', t.nspname || '.' || t.relname, 'view without security_invoker'
from tables t
where t.relkind = 'v'
  and not coalesce(lower(t.reloptions::text)::text[] && array['security_invoker=true', 'security_invoker=on'], false)
union all
select 'function_search_path_mutable', f.nspname || '.' || f.proname, 'function without a fixed search_path'
from functions f
where not exists (select 1 from unnest(coalesce(f.proconfig, '{}')) c where c like 'search_path=%')
union all
select 'security_definer_function_executable', f.nspname || '.' || f.proname,
       'SECURITY DEFINER function executable by ' || a.rolname
from functions f cross join api_roles a
where f.prosecdef and pg_catalog.has_function_privilege(a.rolname, f.oid, 'EXECUTE')
union all
select 'trigger_function_not_definer', f.nspname || '.' || f.proname,
       'queue trigger function lost SECURITY DEFINER (a migration re-run by hand): run `pipeline migrate`'
from functions f
where f.proname in ('enqueue_row', 'forget_row', 'forget_table', 'notify_queue') and not f.prosecdef
union all
select 'extension_in_public', e.extname, 'extension installed in schema public'
from pg_catalog.pg_extension e
where e.extname = 'vector' and e.extnamespace = 'public'::regnamespace and exists (select 1 from api_roles)
order by 1, 2
