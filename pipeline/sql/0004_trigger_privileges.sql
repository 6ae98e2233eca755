-- The queue triggers run with the rights of the migration's owner, so the roles that write dores and
-- documents (n8n, the app, Supabase's anon/authenticated through PostgREST) need no privilege on the
-- pipeline schema. A fixed search_path keeps them safe as SECURITY DEFINER functions.

alter function pipeline.enqueue_row() security definer set search_path = pg_catalog, pipeline, public;
alter function pipeline.forget_row() security definer set search_path = pg_catalog, pipeline, public;
alter function pipeline.forget_table() security definer set search_path = pg_catalog, pipeline, public;
alter function pipeline.notify_queue() security definer set search_path = pg_catalog, pipeline, public;
revoke all on function pipeline.enqueue_row(), pipeline.forget_row(), pipeline.forget_table(), pipeline.notify_queue()
    from public;
