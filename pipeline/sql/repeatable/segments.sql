-- Segments: which fitted model is active for a source, the nearest centroid of a vector, the active
-- segments of dores.
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

