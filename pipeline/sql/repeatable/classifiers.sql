-- Classifiers: probabilities under a stored version, rows still unscored, `predict` for the API.
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
select '[1]'::vector is not null as vector_loaded;

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

