-- Full text beside the vectors for dores (hybrid search, `match_dores_hybrid`): an expression index over
-- the very text the model reads, in the source's full-text configuration (Portuguese).

create index if not exists dores_fts_idx on public.dores
    using gin (to_tsvector('portuguese'::regconfig, pipeline.dor_text(dor_base, solucao_graventum)));
