from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import Settings, redact
from pipeline.errors import ConfigError


def test_flags_beat_environment_beat_defaults() -> None:
    env = {"PIPELINE_BATCH_SIZE": "16", "PIPELINE_INTERVAL": "5", "DATABASE_URL": "postgresql://x/y"}
    settings = Settings.load({"batch_size": 8, "model": None}, environ=env)
    assert settings.batch_size == 8  # flag
    assert settings.interval == 5.0  # env
    assert settings.max_attempts == 5  # default
    assert settings.database_url == "postgresql://x/y"


def test_paths_and_blank_values() -> None:
    settings = Settings.load(environ={"PIPELINE_DATA_DIR": "~/dados", "PIPELINE_MODEL": "  "})
    assert settings.data_dir == Path("~/dados").expanduser()
    assert settings.model is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PIPELINE_BATCH_SIZE": "muitos"}, "PIPELINE_BATCH_SIZE='muitos' is not a number"),
        ({"PIPELINE_CLAIM_SIZE": "0"}, "claim_size must be at least 1"),
        ({"PIPELINE_INTERVAL": "-1"}, "interval must be positive"),
        ({"PIPELINE_CHUNK_OVERLAP": "0.9"}, "chunk_overlap"),
        ({"PIPELINE_SYNCHRONOUS_COMMIT": "maybe; drop table dores"}, "synchronous_commit must be on, off or local"),
    ],
)
def test_bad_settings_are_one_line_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(environ=env)


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://app:s3cr3t@db.example:5432/prod",
        "connection to postgresql://app:s3cr3t@host/db failed",
        "host=db user=app password=s3cr3t dbname=prod",
        "host=db password='s3cr3t with space' dbname=prod",
    ],
)
def test_redact_hides_passwords(text: str) -> None:
    assert "s3cr3t" not in redact(text)
    assert "***" in redact(text)
