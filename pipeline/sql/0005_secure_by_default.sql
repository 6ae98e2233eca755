-- Secure by default on Supabase: what the pipeline created is closed to the API roles (`anon`,
-- `authenticated`) until its owner opens it with a policy. `service_role` and the pipeline's own roles
-- bypass row-level security, the table owner is not subject to it, and the worker refuses to run where
-- it is (docs/security.md).
--
-- A table the pipeline created gets row-level security; a table that existed before the pipeline
-- (adopted, e.g. a `dores` table written by n8n) keeps its owner's settings, and `pipeline status`
-- warns when the API roles can reach it without row-level security. "Created by the pipeline" is
-- read from the catalog: such a table was created after schema `pipeline` (object ids are handed out
-- in creation order), which the pipeline's first migration creates before any table.

do $$
declare
    pipeline_schema oid := (select oid from pg_catalog.pg_namespace where nspname = 'pipeline');
    api_roles text := (
        select string_agg(quote_ident(rolname), ', ')
        from pg_catalog.pg_roles where rolname in ('anon', 'authenticated')
    );
    t regclass;
begin
    foreach t in array array[
        'public.dores', 'public.documents', 'public.document_chunks', 'public.segments'
    ]::regclass[] loop
        if t::oid > pipeline_schema then
            execute format('alter table %s enable row level security', t);
        end if;
        -- Not governed by row-level security: taken from the API roles wherever they exist.
        if api_roles is not null then
            execute format('revoke truncate, references, trigger on %s from %s', t, api_roles);
        end if;
    end loop;
    if api_roles is not null then
        -- The view reads the pipeline's own schema: it is for the service role and the worker.
        execute format('revoke all on public.current_segments from %s', api_roles);
    end if;
end
$$;
