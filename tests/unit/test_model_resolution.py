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


def test_resolution_offline_never_asks_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def ask(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the hub was asked while HF_HUB_OFFLINE is set")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "model_info", ask)
    assert resolve_model(None, None).name == BUNDLED_MODEL


def test_resolution_asks_the_hub_once_with_a_short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online, a model in no cache costs one brief question to the hub, then the fallback (how long
    resolving and loading take is measured by bench/model_load.py, not asserted here)."""
    import huggingface_hub

    from pipeline.model import HUB_TIMEOUT_S

    asked: list[tuple[str, object]] = []

    def unreachable(name: str, timeout: object = None, **_kwargs: object) -> None:
        asked.append((name, timeout))
        raise OSError("network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    assert resolve_model(None, None).name == BUNDLED_MODEL
    assert asked == [(DEFAULT_MODEL, HUB_TIMEOUT_S)]
    assert HUB_TIMEOUT_S <= 5
