# Bad requests against one shared engine: each is refused with a ValueError that names what was
# wrong, nothing is left queued or holding pages, and the engine keeps answering correctly.
from __future__ import annotations

import math
import time

import pytest
from ember import SamplingParams
from numpy_reference import ReferenceModel
from tiny_models import SAMPLE_PROMPT_IDS

MAX_LEN = 64
VOCAB = 512
PROMPT = list(SAMPLE_PROMPT_IDS)


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model("qwen2")


@pytest.fixture(scope="module")
def llm(model_dir):
    import ember

    engine = ember.LLM(str(model_dir), max_model_len=MAX_LEN)
    yield engine
    engine.close()


def greedy(n: int = 4) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


PROMPT_CASES = {
    "longer-than-max-model-len": ([7] * (MAX_LEN + 1), greedy(1), r"(?i)prompt|max_model_len"),
    "prompt-plus-max-tokens": ([7] * (MAX_LEN - 4), greedy(10), r"(?i)max_tokens|max_model_len"),
    "negative-token-id": ([5, -1, 6], greedy(), r"(?i)token"),
    "token-id-equal-to-vocab": ([5, VOCAB, 6], greedy(), r"(?i)token"),
    "token-id-far-out": ([2**31 - 1], greedy(), r"(?i)token"),
    "empty-id-list": ([], greedy(), r"(?i)empty|prompt"),
    "empty-string": ("", greedy(), r"(?i)empty|prompt"),
}


@pytest.mark.parametrize("case", list(PROMPT_CASES))
def test_bad_prompt_is_refused(llm, case):
    prompt, params, pattern = PROMPT_CASES[case]
    with pytest.raises(ValueError, match=pattern):
        llm.generate([prompt], params)
    with pytest.raises(ValueError, match=pattern):
        list(llm.stream(prompt, params))


def test_bad_prompt_in_a_batch_refuses_the_call(llm):
    with pytest.raises(ValueError, match=r"(?i)token"):
        llm.generate([PROMPT, [1, 2, VOCAB + 5]], greedy())


PARAM_CASES = {
    "temperature-negative": ({"temperature": -1.0}, "temperature"),
    "temperature-nan": ({"temperature": math.nan}, "temperature"),
    "top-p-zero": ({"top_p": 0.0}, "top_p"),
    "top-p-above-one": ({"top_p": 1.5}, "top_p"),
    "top-k-minus-two": ({"top_k": -2}, "top_k"),
    "max-tokens-zero": ({"max_tokens": 0}, "max_tokens"),
    "min-tokens-above-max": ({"max_tokens": 2, "min_tokens": 5}, "min_tokens"),
}


@pytest.mark.parametrize("case", list(PARAM_CASES))
def test_bad_sampling_parameter_is_refused(llm, case):
    options, name = PARAM_CASES[case]
    # Refused when the parameters are built or, at the latest, when they are used.
    with pytest.raises(ValueError, match=name):
        params = SamplingParams(**options)
        llm.generate([PROMPT], params)


def test_nothing_is_left_behind(llm):
    deadline = time.monotonic() + 5.0
    while True:
        stats = llm.stats()
        idle = (stats["blocks_used"], stats["running"], stats["waiting"]) == (0, 0, 0)
        if idle or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert idle, stats


def test_engine_still_generates_correctly(llm, model_dir):
    ref = ReferenceModel.from_dir(model_dir)
    outs = llm.generate([PROMPT, [3, 4, 5, 6]], greedy(6))
    assert [list(o.outputs[0].token_ids) for o in outs] == [
        ref.greedy(PROMPT, 6),
        ref.greedy([3, 4, 5, 6], 6),
    ]
    # The longest request the context allows still runs to its end.
    edge = [7] * (MAX_LEN - 4)
    out = llm.generate([edge], greedy(4))[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 4
