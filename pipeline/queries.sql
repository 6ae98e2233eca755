-- Named queries the worker runs, loaded once by `pipeline.db.queries()`.

-- get_state --
select key, value from pipeline.state

-- record_model --
insert into pipeline.state (key, value)
values ('model', %(model)s), ('dimension', %(dimension)s::text)
on conflict (key) do nothing

-- set_model --
-- Segments were fitted in the old model's space: none is active until the next fit.
with forget as (delete from pipeline.state where key like 'segment\_model:%%')
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

-- create_staging --
-- Column names are prefixed so that they never shadow a column a source's text expression reads.
create temp table if not exists pipeline_staging (
    pipeline_key text not null,
    pipeline_chunk_index int not null default 0,
    pipeline_content text,
    pipeline_embedding vector not null,
    pipeline_hash text not null
) on commit delete rows

-- copy_rows --
copy pg_temp.pipeline_staging (pipeline_key, pipeline_embedding, pipeline_hash) from stdin (format binary)

-- copy_chunks --
copy pg_temp.pipeline_staging (pipeline_key, pipeline_chunk_index, pipeline_content, pipeline_embedding, pipeline_hash)
from stdin (format binary)

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

-- record_sync --
insert into pipeline.state (key, value, updated_at)
select k, now()::text, now() from unnest(%(keys)s::text[]) k
on conflict (key) do update set value = excluded.value, updated_at = now()

-- count_ready --
select count(*) as n from pipeline.queue
where (%(sources)s::text[] is null or source = any(%(sources)s::text[])) and next_attempt_at <= now()

-- any_ready --
select exists (
    select 1 from pipeline.queue
    where (%(sources)s::text[] is null or source = any(%(sources)s::text[])) and next_attempt_at <= now()
) as ready

-- has_vector_index --
-- Whether a table has a valid HNSW or IVFFlat index (not while a bulk write has set it aside).
select exists (
    select 1 from pg_index i
    join pg_class c on c.oid = i.indexrelid
    join pg_am am on am.oid = c.relam
    where i.indrelid = to_regclass(%(table)s) and am.amname in ('hnsw', 'ivfflat') and i.indisvalid
) as indexed

-- status_lag --
select source, pending, extract(epoch from oldest_pending_age)::float as oldest_pending_s, failed, other_model
from pipeline.lag

-- classifier_lag --
select classifier, source, version, unscored from pipeline.classifier_lag order by classifier

-- active_centroids --
select segmento, centroid from public.segments
where model_id = pipeline.source_segment_model(%(source)s)
order by segmento

-- insert_segment_model --
insert into pipeline.segment_models (source, method, k, params, n_rows, score)
values (%(source)s, %(method)s, %(k)s, %(params)s::jsonb, %(n_rows)s, %(score)s)
returning id

-- insert_segment --
insert into public.segments (model_id, segmento, label, top_terms, size, centroid)
values (%(model_id)s, %(segmento)s, %(label)s, %(top_terms)s, %(size)s, %(centroid)s)

-- create_segment_staging --
create temp table if not exists segment_staging (row_key text primary key, segmento int not null)
on commit delete rows

-- copy_segment_staging --
copy pg_temp.segment_staging (row_key, segmento) from stdin (format binary)

-- set_segment_model --
insert into pipeline.state (key, value, updated_at) values ('segment_model:' || %(source)s, %(model_id)s, now())
on conflict (key) do update set value = excluded.value, updated_at = now()

-- classify --
select s.segmento, s.label, s.top_terms, 1 - (s.centroid <=> %(embedding)s) as similarity
from public.segments s
where s.model_id = pipeline.source_segment_model(%(source)s)
order by s.centroid <=> %(embedding)s
limit 1

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
      and (%(row_id)s::text is null or row_id = %(row_id)s::text)
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
where c.oid in (
        select to_regclass(quote_ident(s.table_schema) || '.' || quote_ident(t))
        from pipeline.sources s, unnest(array[s.table_name, s.chunk_table]) t
        where t is not null
        union all
        select to_regclass('public.segments')
      )
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

-- existing_keys --
select pipeline.existing_keys(%(source)s, %(keys)s::text[]) as keys

-- advisor --
-- What Supabase's database linter (the dashboard's Security Advisor) checks, limited to the objects
-- the pipeline creates. API roles that do not exist (a plain PostgreSQL) are skipped.
with api_roles as (
    select rolname from pg_catalog.pg_roles where rolname in ('anon', 'authenticated')
),
tables as (
    select c.oid, c.relname, c.relkind, c.relrowsecurity, c.reloptions, n.nspname
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where (n.nspname = 'public' and c.relname in ('segments', 'current_segments'))
       or (n.nspname = 'pipeline' and c.relkind in ('r', 'v'))
       or (n.nspname, c.relname) in (
           select s.table_schema, t from pipeline.sources s, unnest(array[s.table_name, s.chunk_table]) t
           where t is not null
       )
),
functions as (
    select p.oid, p.proname, p.prosecdef, p.proconfig, n.nspname
    from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'pipeline'
       or (n.nspname = 'public' and p.proname in (
           select search_function from pipeline.sources
           union all select search_function || '_hybrid' from pipeline.sources
       ))
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
-- Rights that row-level security does not govern (0005, `source add` take them from the API roles).
select 'api_role_table_rights', t.nspname || '.' || t.relname,
       'the API roles can ' || string_agg(distinct a.rolname || ' ' || lower(priv.p), ', ')
       || ' it whatever its policies say: revoke truncate, references, trigger on '
       || t.nspname || '.' || t.relname || ' from anon, authenticated'
from tables t
cross join api_roles a
cross join (values ('TRUNCATE'), ('REFERENCES'), ('TRIGGER')) priv (p)
where t.relkind = 'r' and t.nspname <> 'pipeline' and pg_catalog.has_table_privilege(a.rolname, t.oid, priv.p)
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

-- load_sources --
select s.*,
       coalesce((
           select array_agg(a.attname::text order by a.attnum)
           from pg_catalog.pg_attribute a
           where a.attrelid = to_regclass(quote_ident(s.table_schema) || '.' || quote_ident(s.table_name))
             and a.attname = any(s.metadata_columns) and a.atttypid = 'jsonb'::regtype
       ), '{}') as jsonb_metadata,
       exists (select 1 from pipeline.classifiers c where c.source = s.name and c.active_version is not null)
           as classified,
       -- a row source whose vectors can wait outside the HNSW graph (migration 0012, `source add`), if this
       -- role may mark them (a least-privileged worker granted the older columns only may not)
       case when s.kind = 'row' and exists (
           select 1 from pg_catalog.pg_attribute a
           where a.attrelid = to_regclass(quote_ident(s.table_schema) || '.' || quote_ident(s.table_name))
             and a.attname = 'embedding_indexed' and not a.attisdropped
       ) then has_column_privilege(quote_ident(s.table_schema) || '.' || quote_ident(s.table_name),
                                   'embedding_indexed', 'UPDATE')
       else false end as waits
from pipeline.sources s
where %(names)s::text[] is null or s.name = any(%(names)s::text[])
order by s.created_at, s.name

-- table_info --
-- A table's key column(s) and the key's type, for `source add`.
select c.oid, n.nspname as schema, c.relname as name, c.relkind,
       (select array_agg(a.attname::text order by k.ord)
        from unnest(i.indkey) with ordinality k(attnum, ord)
        join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum) as key_columns,
       (select t.typname::text from pg_attribute a join pg_type t on t.oid = a.atttypid
        where a.attrelid = c.oid and a.attnum = i.indkey[0]) as key_type
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
left join pg_index i on i.indrelid = c.oid and i.indisprimary
where c.oid = to_regclass(%(table)s)

-- columns_read --
-- The columns of a table that the temporary view over a source's text expression reads.
select distinct a.attname::text as name
from pg_depend d
join pg_rewrite r on r.oid = d.objid
join pg_attribute a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid
where r.ev_class = 'pg_temp.pipeline_source_check'::regclass and d.refobjid = %(table)s::oid and d.refobjsubid > 0
order by 1

-- last_syncs --
select split_part(key, ':', 2) as source, updated_at from pipeline.state where starts_with(key, 'last_sync:')

-- insert_classifier_version --
insert into pipeline.classifier_versions (classifier, version, model, classes, counts, metrics, params, n_rows)
select %(classifier)s, coalesce(max(version), 0) + 1, %(model)s, %(classes)s, %(counts)s, %(metrics)s, %(params)s,
       %(n_rows)s
from pipeline.classifier_versions where classifier = %(classifier)s
returning version

-- insert_classifier_weight --
insert into pipeline.classifier_weights (classifier, version, position, label, weight, intercept)
values (%(classifier)s, %(version)s, %(position)s, %(label)s, %(weight)s, %(intercept)s)

-- active_classifier --
select c.name, c.source, c.positive, c.label_expression, c.active_version, v.model, v.classes
from pipeline.classifiers c
join pipeline.classifier_versions v on v.classifier = c.name and v.version = c.active_version
where c.name = %(name)s

-- list_classifiers --
select c.name, c.source, c.label_expression as label, c.positive, c.active_version as version, v.model,
       v.classes, v.counts, v.n_rows, v.metrics, v.params ->> 'C' as c, v.trained_at,
       (select count(*) from pipeline.classifier_versions o where o.classifier = c.name) as versions,
       pipeline.unscored_rows(c.name) as unscored
from pipeline.classifiers c
left join pipeline.classifier_versions v on v.classifier = c.name and v.version = c.active_version
order by c.name

-- predict_many --
select e.i, p.label, p.probability
from unnest(%(embeddings)s::vector[]) with ordinality as e(embedding, i)
cross join lateral pipeline.classifier_probabilities(%(classifier)s, %(version)s, e.embedding) p

-- score_staged --
-- The worker's batch: every active classifier of the source (trained on this model) scores the rows
-- just written, in the batch's transaction. Set-based (no function call per row): logits, then softmax
-- per row and classifier; the staged vectors are unit length already.
with weights as (
    select c.source, c.name, c.active_version, w.position, w.label, w.weight, w.intercept
    from pipeline.classifiers c
    join pipeline.classifier_versions v on v.classifier = c.name and v.version = c.active_version and v.model = %(model)s
    join pipeline.classifier_weights w on w.classifier = c.name and w.version = c.active_version
    where c.source = %(source)s
),
logits as (
    select s.pipeline_key as row_key, w.source, w.name, w.active_version, w.position, w.label,
           w.intercept - (w.weight <#> s.pipeline_embedding) as logit
    from pg_temp.pipeline_staging s cross join weights w
    where s.pipeline_key = any(%(keys)s)
),
shifted as (
    select l.*, exp(l.logit - max(l.logit) over (partition by l.row_key, l.name)) as e from logits l
),
probabilities as (
    select x.*, x.e / sum(x.e) over (partition by x.row_key, x.name) as probability from shifted x
)
insert into pipeline.predictions as p (source, row_key, classifier, label, probability, probabilities, version)
select min(source), row_key, name, (array_agg(label order by probability desc, position))[1], max(probability),
       jsonb_object_agg(label, round(probability::numeric, 6)), min(active_version)
from probabilities
group by row_key, name
on conflict (classifier, row_key) do update
set label = excluded.label, probability = excluded.probability, probabilities = excluded.probabilities,
    version = excluded.version, scored_at = now()

-- vector_indexes --
-- The HNSW and IVFFlat indexes of a table that the current role may drop (it owns the table), each as
-- what it takes to build it again from a fixed template: table, column, operator class, options.
select format('%%I.%%I', n.nspname, c.relname) as name,
       jsonb_build_object(
           'table', (select tn.nspname || '.' || tc.relname from pg_class tc
                     join pg_namespace tn on tn.oid = tc.relnamespace where tc.oid = i.indrelid),
           'column', a.attname,
           'method', am.amname,
           'opclass', opc.opcname,
           'options', coalesce((
               select jsonb_object_agg(split_part(o, '=', 1), split_part(o, '=', 2)) from unnest(c.reloptions) o
           ), '{}'),
           'predicate', pg_get_expr(i.indpred, i.indrelid)
       ) as definition
from pg_index i
join pg_class c on c.oid = i.indexrelid
join pg_namespace n on n.oid = c.relnamespace
join pg_am am on am.oid = c.relam
join pg_opclass opc on opc.oid = i.indclass[0]
join pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
where i.indrelid = to_regclass(%(table)s) and am.amname in ('hnsw', 'ivfflat') and i.indnatts = 1
  and (i.indpred is null or pg_get_expr(i.indpred, i.indrelid) = 'embedding_indexed')
  and pg_has_role(c.relowner, 'USAGE')

-- keep_index_definition --
insert into pipeline.state (key, value) values (%(key)s, %(value)s)
on conflict (key) do update set value = excluded.value, updated_at = now()

-- kept_index_definitions --
select key, value from pipeline.state where starts_with(key, 'index:') order by key
