-- Chunks follow their parent. A chunk's metadata is composed from its parent row (the row of the source's
-- table it was cut from) in one place, pipeline.chunk_metadata: the worker calls it when it writes a row's
-- chunks, and a trigger on the parent calls it when the parent's metadata columns change, in the same
-- transaction, so a document moved to another organisation is moved in its chunks before anyone can read
-- them. Nothing is queued or embedded again: the chunks keep their vectors, contents and hashes.
-- A repeatable file (applied by every `migrate` with the others, in one transaction; checksummed; edited
-- in place). `refresh_search_functions` installs the trigger of every chunked source added with `source add`.

select set_config('search_path', 'pg_catalog', true);

-- The metadata of chunk `chunk_index` of a row of chunked source `source`, the row given as jsonb
-- (`to_jsonb(t)`, or any object holding its metadata columns and key): the source's metadata columns whose
-- value is a JSON object (a jsonb or json column) merged into it, in the order the source lists them, then
-- its other metadata columns by name (null included), then the row's key under the
-- chunk table's key column (`document_id`) and `chunk_index`. A later key wins. For documents: the document's
-- `metadata`, then `title`, `document_id` and `chunk_index`. It reads the values only, never the catalog:
-- the worker calls it once per chunk it writes (about 20 µs).
create or replace function pipeline.chunk_metadata(source text, parent jsonb, chunk_index integer)
returns jsonb
language plpgsql stable
set search_path from current
as $$
declare
    s pipeline.sources;
    v_column text;
    v_metadata jsonb := '{}';
begin
    select * into s from pipeline.sources where name = source and kind = 'chunked';
    if not found then
        raise exception 'no chunked source named %', source using errcode = '22023';
    end if;
    foreach v_column in array s.metadata_columns loop
        if jsonb_typeof(parent -> v_column) = 'object' then
            v_metadata := v_metadata || (parent -> v_column);
        end if;
    end loop;
    foreach v_column in array s.metadata_columns loop
        if jsonb_typeof(parent -> v_column) is distinct from 'object' then
            v_metadata := v_metadata || jsonb_build_object(v_column, parent -> v_column);
        end if;
    end loop;
    return v_metadata || jsonb_build_object(s.chunk_key_column, parent -> s.key_column, 'chunk_index', chunk_index);
end
$$;

-- The trigger: after an UPDATE that changed a metadata column of a chunked source's row, that row's chunks
-- get their metadata composed again from the row as it now is (argument: the source's name).
--
-- SECURITY DEFINER, owned by the pipeline's owner (who runs `migrate`). The chunk tables are written by the
-- pipeline only: pipeline_keep_derived (security.sql) refuses a chunk written by a role that may not delete
-- from pipeline.queue, and the role whose UPDATE fires this trigger usually is one (a signed-in user whose
-- policies let them move a document to another organisation, n8n's service role). Letting writes from inside
-- any trigger through the guard would let through every trigger someone can attach to a chunk table; here
-- one function writes as the owner, and writes only what it computes itself: the metadata composed by
-- pipeline.chunk_metadata from the row the caller was allowed to change. Nothing the caller writes is run:
-- the tables and columns come from pipeline.sources, which only the owner writes; the row that fired it must
-- be a row of that source's own table; and EXECUTE is revoked from public, which CREATE TRIGGER needs, so
-- nobody else can attach it to a table of theirs. As the owner, it also updates chunks that row-level
-- security hides from the caller: they are the chunks of the row the caller changed.
create or replace function pipeline.copy_metadata_to_chunks()
returns trigger
language plpgsql
security definer
set search_path from current
as $$
declare
    s pipeline.sources;
begin
    select * into s from pipeline.sources where name = tg_argv[0] and kind = 'chunked';
    if not found or tg_relid is distinct from to_regclass(format('%I.%I', s.table_schema, s.table_name)) then
        raise exception 'pipeline.copy_metadata_to_chunks(%) fired on %.%, which is not that source''s table',
            tg_argv[0], tg_table_schema, tg_table_name using errcode = '42501';
    end if;
    execute format(
        'update %1$I.%2$I c set metadata = pipeline.chunk_metadata($1, $2, c.chunk_index)'
        ' where c.%3$I = ($2 ->> %4$L)::%5$s'
        ' and c.metadata is distinct from pipeline.chunk_metadata($1, $2, c.chunk_index)',
        s.table_schema, s.chunk_table, s.chunk_key_column, s.key_column, s.key_type::regtype
    ) using s.name, to_jsonb(new);
    return null;
end
$$;

-- Every chunk of a chunked source whose metadata is not what pipeline.chunk_metadata composes from its row
-- now, composed again; returns how many. For the chunks written before their source had the trigger, and
-- for the owner after a bulk change made with the trigger disabled (`select pipeline.refresh_chunk_metadata('documents')`).
create or replace function pipeline.refresh_chunk_metadata(source text)
returns bigint
language plpgsql
set search_path from current
as $$
declare
    s pipeline.sources;
    v_parent text;
    v_count bigint;
begin
    select * into s from pipeline.sources where name = source and kind = 'chunked';
    if not found then
        raise exception 'no chunked source named %', source using errcode = '22023';
    end if;
    -- the row's metadata columns and key only: a document's content is not copied once per chunk
    select string_agg(format('jsonb_build_object(%L, t.%I)', c, c), ' || ') into v_parent
    from unnest(array_append(s.metadata_columns, s.key_column)) c;
    execute format(
        'update %1$I.%2$I c set metadata = pipeline.chunk_metadata($1, p.parent, c.chunk_index)'
        ' from (select t.%4$I as key, %5$s as parent from %1$I.%3$I t) p'
        ' where c.%6$I = p.key and c.metadata is distinct from pipeline.chunk_metadata($1, p.parent, c.chunk_index)',
        s.table_schema, s.chunk_table, s.table_name, s.key_column, v_parent, s.chunk_key_column
    ) using s.name;
    get diagnostics v_count = row_count;
    return v_count;
end
$$;

-- Make a chunked source's chunks follow its row's metadata columns: the trigger pipeline_NAME_chunk_metadata
-- on its table (none when it copies no column); when the trigger is new (the first `migrate` of a version
-- that has it; `source add`), the chunks already there are brought up to date once. Returns how many chunks
-- that rewrote. Run by the owner (`migrate`, `source add`): the trigger is its.
create or replace function pipeline.follow_parent_metadata(source text)
returns bigint
language plpgsql
set search_path from current
as $$
declare
    s pipeline.sources;
    v_table regclass;
    v_trigger text;
    v_new boolean;
begin
    select * into s from pipeline.sources where name = source and kind = 'chunked';
    if not found then
        raise exception 'no chunked source named %', source using errcode = '22023';
    end if;
    v_table := to_regclass(format('%I.%I', s.table_schema, s.table_name));
    if v_table is null then
        return 0;  -- its table is gone: `pipeline status` says so
    end if;
    v_trigger := format('pipeline_%s_chunk_metadata', s.name);
    if cardinality(s.metadata_columns) = 0 then
        execute format('drop trigger if exists %I on %s', v_trigger, v_table);
        return 0;
    end if;
    v_new := not exists (select 1 from pg_trigger t where t.tgrelid = v_table and t.tgname = v_trigger);
    execute format(
        'create or replace trigger %I after update of %s on %s for each row when (%s)'
        ' execute function pipeline.copy_metadata_to_chunks(%L)',
        v_trigger,
        (select string_agg(format('%I', c), ', ') from unnest(s.metadata_columns) c),
        v_table,
        (select string_agg(format('old.%1$I is distinct from new.%1$I', c), ' or ') from unnest(s.metadata_columns) c),
        s.name
    );
    if v_new then
        return pipeline.refresh_chunk_metadata(s.name);
    end if;
    return 0;
end
$$;

revoke all on function pipeline.copy_metadata_to_chunks(), pipeline.refresh_chunk_metadata(text),
    pipeline.follow_parent_metadata(text) from public;

-- documents: its chunks carry its `metadata` and `title` (pipeline.sources, 0006).
select pipeline.follow_parent_metadata('documents');
