# Shared fixtures: tiny checkpoints written once per session (CI has two slow cores) and engines
# that are always closed, so one failing test cannot leave threads or KV pages behind.
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny_models import write_tiny_model

ModelFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> ModelFactory:
    """tiny_model(family, **write_tiny_model options) -> a checkpoint dir, written once per
    distinct set of options for the whole session. Treat the directory as read-only."""
    cache: dict[str, Path] = {}

    def get(family: str, **options: Any) -> Path:
        key = json.dumps([family, options], sort_keys=True)
        if key not in cache:
            cache[key] = write_tiny_model(tmp_path_factory.mktemp(f"{family}-"), family, **options)
        return cache[key]

    return get


@pytest.fixture
def make_llm() -> Iterator[Callable[..., Any]]:
    """make_llm(model_dir, **LLM options) -> an ember.LLM closed at the end of the test."""
    import ember

    made: list[Any] = []

    def make(model: str | Path, **options: Any) -> Any:
        llm = ember.LLM(str(model), **options)
        made.append(llm)
        return llm

    yield make
    for llm in reversed(made):
        llm.close()
