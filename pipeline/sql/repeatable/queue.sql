-- The queue: the texts and hashes the worker and the staleness checks agree on, the triggers that queue a
-- source's changed rows, and where things stand (pipeline.lag).
--
-- Applied by every `pipeline migrate`, after the numbered migrations and together with the other files of
-- repeatable/, in one transaction: edited in place when a definition changes (migrate keeps each file's
-- checksum in pipeline.state, so code that ships a changed file asks for `pipeline migrate` first), and
-- harmless to run again. Each object is defined in exactly one file (tests/unit/test_sql_definitions.py).
-- Every function fixes its search_path in its own definition (pg_catalog, then the schema that holds
-- `vector`, captured with `set search_path from current`) and carries its own security attributes, so
-- re-running an old file by hand cannot leave anything weaker for long. Tables are schema-qualified.

select set_config(
    'search_path',
    'pg_catalog, ' || (select e.extnamespace::regnamespace::text from pg_catalog.pg_extension e where e.extname = 'vector'),
    true
);

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
