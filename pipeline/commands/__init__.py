"""The `pipeline` subcommands by noun: each module adds its parsers and keeps their handlers beside them.

`db` (migrate, db, demo), `sync` (sync, run, backfill, reembed, status, failed, retry-failed), `sources`
(source), `documents` (import-docs, import-csv, export-csv), `search`, `segments` (segment, segments,
segment-of), `classifiers` (classifier, score), `model` (model download, embed), `serve`. Shared helpers are
in `common`. Heavy imports happen inside the handlers, so building the parser stays fast.
"""
