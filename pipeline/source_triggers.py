"""The triggers a source's tables get: the queue's (insert, a change of the text, delete, truncate, NOTIFY)
and the guard that keeps the pipeline's own columns the pipeline's."""

from __future__ import annotations

from psycopg import sql

from pipeline.db import Connection
from pipeline.sources import Source

TRIGGER_FUNCTIONS = (
    "enqueue_row",
    "forget_row",
    "forget_table",
    "notify_queue",
    "keep_derived_columns",
    "copy_metadata_to_chunks",
)
"""Trigger functions of the pipeline's, whose triggers on a source's table `source remove` drops."""


def install_guard(conn: Connection, source: Source) -> None:
    """Keep the pipeline's own columns the pipeline's (sql/repeatable/security.sql): a vector, model, hash or
    segment written by any other role is dropped, a chunk written by one refused. And the rights that
    row-level security does not govern are taken from the API roles, as 0005 does for dores."""
    derived = ["embedding_model", "content_hash", "embedded_at"]
    if not source.chunked:
        derived = ["embedding", *(["embedding_indexed"] if source.waits else []), *derived]
        derived += [source.segment_column] if source.segment_column else []
    statement = (
        "create or replace trigger pipeline_keep_derived before insert or update of {columns} on {table}"
        " for each row execute function pipeline.keep_derived_columns({args})"
    )
    conn.execute(
        sql.SQL(statement).format(
            columns=sql.SQL(", ").join(map(sql.Identifier, derived)),
            table=source.table,
            args=sql.SQL(", ").join(map(sql.Literal, derived)),
        )
    )
    tables = [source.table]
    if source.chunked:
        conn.execute(
            sql.SQL(
                "create or replace trigger pipeline_keep_derived before insert or update on {}"
                " for each row execute function pipeline.keep_derived_columns()"
            ).format(source.chunks)
        )
        tables.append(source.chunks)
    for row in conn.execute("select rolname from pg_roles where rolname in ('anon', 'authenticated')").fetchall():
        for table in tables:
            conn.execute(
                sql.SQL("revoke truncate, references, trigger on {} from {}").format(
                    table, sql.Identifier(row["rolname"])
                )
            )


def install_queue_triggers(conn: Connection, source: Source) -> None:
    """Queue the source's rows when they are inserted, their text changes or they go (repeatable/queue.sql)."""
    table, name = source.table, sql.Literal(source.name)
    args = sql.SQL("{}, {}").format(name, sql.Literal(source.key_column))
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in source.text_columns)
    changed = sql.SQL(" or ").join(
        sql.SQL("old.{c} is distinct from new.{c}").format(c=sql.Identifier(c)) for c in source.text_columns
    )
    statements = [
        ("enqueue_insert", "after insert on {table} for each row execute function pipeline.enqueue_row({args})"),
        (
            "enqueue_update",
            "after update of {cols} on {table} for each row when ({changed})"
            " execute function pipeline.enqueue_row({args})",
        ),
        ("forget", "after delete on {table} for each row execute function pipeline.forget_row({args})"),
        ("truncate", "after truncate on {table} for each statement execute function pipeline.forget_table({name})"),
        (
            "notify",
            "after insert or update of {cols} on {table} for each statement"
            " execute function pipeline.notify_queue({name})",
        ),
    ]
    for suffix, body in statements:
        conn.execute(
            sql.SQL("create trigger {trigger} " + body).format(
                trigger=sql.Identifier(f"pipeline_{source.name}_{suffix}"),
                table=table,
                args=args,
                cols=cols,
                changed=changed,
                name=name,
            )
        )
