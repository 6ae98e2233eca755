from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipeline.errors import ModelError
from pipeline.model import BUNDLED_MODEL, DEFAULT_MODEL, bundled_model_path, resolve_model


def test_default_falls_back_to_the_bundled_weights_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        resolved = resolve_model(None, None)
    assert resolved.name == BUNDLED_MODEL
    assert Path(resolved.source) == bundled_model_path()
    assert DEFAULT_MODEL in caplog.text and BUNDLED_MODEL in caplog.text


def test_bundled_directory_is_recorded_under_its_hub_name() -> None:
    path = bundled_model_path()
    assert resolve_model(str(path)).name == BUNDLED_MODEL


def test_recorded_model_is_used_when_no_flag() -> None:
    assert resolve_model(None, BUNDLED_MODEL).name == BUNDLED_MODEL


def test_explicit_model_that_is_nowhere_is_an_error_not_a_fallback() -> None:
    with pytest.raises(ModelError, match="not in the local cache"):
        resolve_model("someone/missing-model")
    with pytest.raises(ModelError, match="directory not found"):
        resolve_model("./no/such/dir")


def test_resolution_does_not_wait_on_the_network() -> None:
    import time

    started = time.perf_counter()
    resolve_model(None, None)
    assert time.perf_counter() - started < 5
