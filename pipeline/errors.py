"""One exception root; each subclass carries a message meant for the user."""

from __future__ import annotations


class PipelineError(Exception):
    """Something the user can act on. The CLI prints it as one line and exits 1."""


class ConfigError(PipelineError):
    """A setting is missing or malformed."""


class DatabaseError(PipelineError):
    """The database could not be reached or refused a statement."""


class MigrationError(PipelineError):
    """The schema on the database does not agree with the files in `sql/`."""


class ModelError(PipelineError):
    """The embedding model could not be resolved or loaded."""


class ModelMismatchError(PipelineError):
    """The database was embedded with another model than the one configured."""


class InputError(PipelineError):
    """A file or argument given by the user is unusable."""


class RowSecurityError(PipelineError):
    """Row-level security would hide rows from the worker, which would then drop their queued work."""


class SourceUnavailable(PipelineError):
    """A source's table (or a column its text reads) is gone; its rows stay queued."""
