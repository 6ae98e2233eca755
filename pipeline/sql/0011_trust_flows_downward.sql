-- What API callers can reach never depends on the pipeline's private schema, and nothing in the catalog
-- blocks Supabase's upgrades.
--
-- Hybrid search over dores indexed the words of `pipeline.dor_text(...)`: a caller of `match_dores_hybrid`
-- then needed a right on schema `pipeline` (anon and authenticated have none, and get "permission denied
-- for schema pipeline"). The same text, spelled with the built-in operators, needs no such right.
create index if not exists dores_words_idx on public.dores
    using gin (to_tsvector('portuguese'::regconfig, dor_base || coalesce(E'\n' || nullif(solucao_graventum, ''), '')));
drop index if exists public.dores_fts_idx;

-- A column of type regconfig blocks Supabase's pg_upgrade (its linter: unsupported_reg_types); the name
-- of the full-text configuration is kept as text and cast where it is used.
alter table pipeline.sources alter column language drop default;
alter table pipeline.sources alter column language type text using language::text;
alter table pipeline.sources alter column language set default 'portuguese';
