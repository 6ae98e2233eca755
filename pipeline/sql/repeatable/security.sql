-- Trust flows downward only: what a less privileged role can write (the worker, signed-in users, the API's
-- callers) is never executed, loaded or believed by a more privileged one. A repeatable file (applied by
-- every `migrate` with the others, in one transaction; checksummed; edited in place).
--
-- Triggers, not grants, hold these lines: a table-wide grant (Supabase gives the API roles every right on
-- the tables of `public`) cannot be narrowed by revoking columns, and BYPASSRLS passes any policy, but no
-- role except the table's owner can step around a trigger.

select set_config('search_path', 'pg_catalog', true);

-- pipeline.state: keys that decide what the owner's commands run or load ---------------------------------
-- `model` and `dimension` pick the model every command loads; `repeatable:*` are the checksums that tell
-- code whether the schema is current; `index:*` are vector indexes set aside during a bulk write, built
-- again by the owner's next fit or backfill. Only the owner of pipeline.state (and its members) writes
-- them; the worker keeps its own bookkeeping there (`last_sync:*`, `segment_model:*`).
create or replace function pipeline.protect_owner_keys()
returns trigger
language plpgsql
set search_path from current
as $$
declare
    v_owner oid := (select c.relowner from pg_catalog.pg_class c where c.oid = tg_relid);
    v_key text;
begin
    if pg_has_role(v_owner, 'MEMBER') then
        return coalesce(new, old);
    end if;
    if tg_op = 'TRUNCATE' then
        raise exception 'only % may empty pipeline.state', v_owner::regrole using errcode = '42501';
    end if;
    if tg_op = 'DELETE' then
        v_key := old.key;
    else
        v_key := new.key;
        if tg_op = 'UPDATE' and old.key is distinct from new.key then
            v_key := case when pipeline.owner_key(old.key) then old.key else new.key end;
        end if;
    end if;
    if pipeline.owner_key(v_key) then
        raise exception 'pipeline.state key %: only % writes it (the model, the schema''s checksums and '
            'set-aside indexes are the owner''s)', v_key, v_owner::regrole
            using errcode = '42501';
    end if;
    return coalesce(new, old);
end
$$;

create or replace function pipeline.owner_key(key text)
returns boolean
language sql immutable parallel safe
set search_path from current
as $$ select key in ('model', 'dimension') or starts_with(key, 'repeatable:') or starts_with(key, 'index:') $$;

create or replace trigger pipeline_owner_keys
    before insert or update or delete on pipeline.state
    for each row execute function pipeline.protect_owner_keys();
create or replace trigger pipeline_owner_keys_truncate
    before truncate on pipeline.state
    for each statement execute function pipeline.protect_owner_keys();

-- The pipeline's own columns of the source tables ------------------------------------------------------
-- A vector, its model, its content hash and a segment are written by the pipeline only: a role that may not
-- delete from pipeline.queue (anyone but the owner, a superuser and the worker) writes them in vain. On
-- INSERT they start empty, so the row is embedded; on UPDATE they keep their old values. The sync's
-- "unchanged" (same text hash, same model) can then believe them. Arguments: the source's derived
-- columns; with none (a table of chunks, all derived), such a write is refused.
create or replace function pipeline.keep_derived_columns()
returns trigger
language plpgsql
set search_path from current
as $$
declare
    v_kept jsonb;
begin
    if has_schema_privilege('pipeline', 'USAGE') then
        if has_table_privilege('pipeline.queue', 'DELETE') then
            return new;
        end if;
    end if;
    if tg_nargs = 0 then
        raise exception 'only the pipeline writes %.%', tg_table_schema, tg_table_name using errcode = '42501';
    end if;
    if tg_op = 'INSERT' then  -- empty (embedding_indexed as its default)
        select jsonb_object_agg(c, case when c = 'embedding_indexed' then 'true'::jsonb end) into v_kept
        from unnest(tg_argv) c;
    else
        select jsonb_object_agg(c, to_jsonb(old) -> c) into v_kept from unnest(tg_argv) c;
    end if;
    return jsonb_populate_record(new, v_kept);
end
$$;

create or replace trigger pipeline_keep_derived
    before insert or update of embedding, embedding_indexed, embedding_model, content_hash, embedded_at, segmento
    on public.dores
    for each row execute function pipeline.keep_derived_columns(
        'embedding', 'embedding_indexed', 'embedding_model', 'content_hash', 'embedded_at', 'segmento');
create or replace trigger pipeline_keep_derived
    before insert or update of embedding_model, content_hash, embedded_at on public.documents
    for each row execute function pipeline.keep_derived_columns('embedding_model', 'content_hash', 'embedded_at');
create or replace trigger pipeline_keep_derived
    before insert or update on public.document_chunks
    for each row execute function pipeline.keep_derived_columns();

revoke all on function pipeline.protect_owner_keys(), pipeline.keep_derived_columns() from public;
