-- Segments for any row source: each fitted model belongs to a source, and each source has its own active
-- model (pipeline.state key `segment_model:NAME`; dores' was `segment_model`).

alter table pipeline.segment_models add column if not exists source text not null default 'dores';
create index if not exists segment_models_source_idx on pipeline.segment_models (source, id);

update pipeline.state set key = 'segment_model:dores' where key = 'segment_model';
