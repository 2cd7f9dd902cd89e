"""The services' garbage-collector setting (GC_THRESHOLD)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shared.messaging.runner import tune_gc
from shared.settings import Settings


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_threshold_is_raised_and_start_up_objects_frozen(restore_gc: None) -> None:
    tune_gc(Settings(gc_threshold=12_345))
    assert gc.get_threshold()[0] == 12_345
    assert gc.get_freeze_count() > 0


def test_zero_leaves_python_defaults(restore_gc: None) -> None:
    before = gc.get_threshold()
    tune_gc(Settings(gc_threshold=0))
    assert gc.get_threshold() == before


def test_the_default_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GC_THRESHOLD", "777")
    assert Settings().gc_threshold == 777
    assert Settings.model_fields["gc_threshold"].default == 50_000
