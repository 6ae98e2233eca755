-- One vector column. Since 0010 a fresh vector could wait in `embedding_unindexed` (no HNSW insert: the
-- model's speed during a burst) while `embedding` was null, so a user's own SQL missed the newest rows. Now
-- every vector is in `embedding` from the transaction that writes it, and `embedding_indexed` says whether it
-- is in the HNSW graph: the index covers only the rows marked indexed (a partial index), so writing a
-- vector with the mark off costs no graph insert; the search functions scan the unmarked tail exactly beside
-- the index, and the worker marks the tail (inserting it into the graph) when it has nothing to embed.
--
-- For every row source that has 0010's column (dores, and those added since): the waiting vectors move to
-- `embedding`, unmarked; the vector index is built again over the marked rows, with the same operator class
-- and options (a one-time cost: about a minute per 100,000 rows on two cores); roles that could write the
-- old column may write the mark.

do $$
declare
    s record;
    t text;
    ix record;
    r record;
begin
    for s in select * from pipeline.sources where kind = 'row' loop
        t := format('%I.%I', s.table_schema, s.table_name);
        if to_regclass(t) is null or not exists (
            select 1 from pg_catalog.pg_attribute a
            where a.attrelid = to_regclass(t) and a.attname = 'embedding_unindexed' and not a.attisdropped
        ) then
            continue;
        end if;
        -- A vector is in the graph unless the worker wrote it to wait (a role that may not write the mark
        -- writes into the graph, as before 0010).
        execute format('alter table %s add column if not exists embedding_indexed boolean not null default true', t);
        for ix in
            select c.relname as name, o.opcname as opclass, c.reloptions as options
            from pg_catalog.pg_index i
            join pg_catalog.pg_class c on c.oid = i.indexrelid
            join pg_catalog.pg_am am on am.oid = c.relam
            join pg_catalog.pg_opclass o on o.oid = i.indclass[0]
            join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
            where i.indrelid = to_regclass(t) and am.amname = 'hnsw' and a.attname = 'embedding' and i.indpred is null
        loop
            execute format('drop index %I.%I', s.table_schema, ix.name);
            execute format('update %s set embedding = embedding_unindexed, embedding_indexed = false'
                           ' where embedding_unindexed is not null', t);
            execute format(
                'create index %I on %s using hnsw (embedding %I)%s where embedding_indexed',
                ix.name, t, ix.opclass,
                case when ix.options is null then '' else ' with (' || array_to_string(ix.options, ', ') || ')' end
            );
        end loop;
        -- Without a vector index (set aside by a bulk write), the vectors move all the same.
        execute format('update %s set embedding = embedding_unindexed, embedding_indexed = false'
                       ' where embedding_unindexed is not null', t);
        for r in
            select distinct p.grantee
            from information_schema.column_privileges p
            where p.table_schema = s.table_schema and p.table_name = s.table_name
              and p.column_name = 'embedding_unindexed' and p.privilege_type = 'UPDATE' and p.grantee <> 'PUBLIC'
        loop
            execute format('grant update (embedding_indexed) on %s to %I', t, r.grantee);
        end loop;
        execute format('drop trigger if exists pipeline_keep_derived on %s', t);  -- `migrate` makes it again
        execute format('alter table %s drop column embedding_unindexed', t);
        -- Finds the tail without reading the table; empty once it is indexed.
        execute format(
            'create index if not exists %I on %s (%I) where embedding is not null and not embedding_indexed',
            s.name || '_embedding_waiting_idx', t, s.key_column
        );
    end loop;
end
$$;

-- The text of a dor, spelled with built-in operators (as pipeline.dor_text computes it: dor_base is never
-- null), so that the search functions read it without a right on schema pipeline, and the word index (0011)
-- serves them.
update pipeline.sources
set text_expression = 'dor_base || coalesce(E''\n'' || nullif(solucao_graventum, ''''), '''')'
where name = 'dores' and text_expression = 'pipeline.dor_text(dor_base, solucao_graventum)';
