# End-to-end parity of the CPU engine with the numpy reference: for every family, tied or not, and
# every checkpoint dtype, the logits of each generated step and the greedy tokens must agree.
from __future__ import annotations

import numpy as np
import pytest
from ember import SamplingParams
from numpy_reference import ReferenceModel, rel_error
from tiny_models import FAMILIES, SAMPLE_NEW_TOKENS, SAMPLE_PROMPT_IDS
from tokenizers import Tokenizer

PROMPT = list(SAMPLE_PROMPT_IDS)
N = SAMPLE_NEW_TOKENS
# Relative to max |reference logit|. fp16/bf16 checkpoints may round activations too.
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 4e-2}


def greedy(n: int = N, **extra) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **extra)


def generate_with_logits(llm, prompt: list[int], n: int = N):
    out = llm.generate([prompt], greedy(n), return_logits=True)
    assert len(out) == 1
    completion = out[0].outputs[0]
    assert completion.finish_reason == "length"
    assert len(completion.token_ids) == n
    assert len(completion.logits) == n
    return completion


def check_against_reference(
    ref: ReferenceModel, prompt: list[int], completion, tol: float, exact_greedy: bool
) -> None:
    tokens = list(completion.token_ids)
    # Row i of the reference predicts the token after prompt + tokens[:i]: teacher-forced on
    # the engine's own tokens, so one early difference cannot cascade into the later steps.
    expected = ref.forward(prompt + tokens[:-1])[len(prompt) - 1 :]
    for step, got in enumerate(completion.logits):
        got = np.asarray(got, dtype=np.float32)
        assert got.shape == (ref.config.vocab_size,), f"step {step}"
        err = rel_error(got, expected[step])
        assert err <= tol, f"step {step}: relative logit error {err:.3g} > {tol}"
        assert tokens[step] == int(np.argmax(got)), f"step {step}: greedy did not take argmax"
        # The engine's pick is (within tolerance) the reference's best token.
        scale = np.max(np.abs(expected[step]))
        best = expected[step].max()
        assert expected[step][tokens[step]] >= best - 2 * tol * scale, f"step {step}"
    if exact_greedy:
        assert tokens == ref.greedy(prompt, len(tokens))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_greedy_match_reference(tiny_model, make_llm, family, tied, dtype):
    d = tiny_model(family, tied=tied, dtype=dtype)
    llm = make_llm(d)
    completion = generate_with_logits(llm, PROMPT)
    check_against_reference(
        ReferenceModel.from_dir(d), PROMPT, completion, TOLERANCE[dtype], dtype == "float32"
    )


SHAPE_CASES = {
    "mha": ("llama", {"heads": 4, "kv_heads": 4}),
    "mqa": ("mistral", {"heads": 4, "kv_heads": 1}),
    "qwen3-head-dim-32": ("qwen3", {"head_dim": 32}),
    "llama-head-dim-8": ("llama", {"head_dim": 8}),
    "llama3-rope": ("llama", {"rope_scaling": "llama3"}),
    "sharded": ("qwen2", {"shards": 3}),
    "three-layers": ("qwen3", {"layers": 3, "hidden": 96, "heads": 6, "kv_heads": 3}),
}


@pytest.mark.parametrize("case", list(SHAPE_CASES))
def test_model_shapes_and_options_match_reference(tiny_model, make_llm, case):
    family, options = SHAPE_CASES[case]
    d = tiny_model(family, **options)
    llm = make_llm(d)
    completion = generate_with_logits(llm, PROMPT)
    check_against_reference(ReferenceModel.from_dir(d), PROMPT, completion, 1e-4, True)


def test_long_prompt_crosses_many_kv_blocks(tiny_model, make_llm):
    # 70 positions with block_size 16: attention reads five pages, positions far past the
    # 64-position original context of the llama3 scaling.
    d = tiny_model("llama", rope_scaling="llama3")
    prompt = [int(t) for t in np.random.default_rng(5).integers(5, 512, size=70)]
    llm = make_llm(d, block_size=16)
    completion = generate_with_logits(llm, prompt, 6)
    check_against_reference(ReferenceModel.from_dir(d), prompt, completion, 1e-4, True)


@pytest.mark.parametrize("family", FAMILIES)
def test_string_prompt_goes_through_tokenizer(tiny_model, make_llm, family):
    d = tiny_model(family)
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    prompt = "Please write a short story about the river."
    ids = tok.encode(prompt).ids
    llm = make_llm(d)
    assert llm.tokenizer is not None
    out = llm.generate(prompt, greedy(8))[0]
    assert out.prompt == prompt
    assert list(out.prompt_token_ids) == ids
    completion = out.outputs[0]
    assert list(completion.token_ids) == ReferenceModel.from_dir(d).greedy(ids, 8)
    assert completion.text == tok.decode(list(completion.token_ids), skip_special_tokens=True)


def test_list_of_prompts_keeps_order(tiny_model, make_llm):
    d = tiny_model("qwen2")
    ref = ReferenceModel.from_dir(d)
    prompts = [[10, 11, 12], PROMPT, [400]]
    outs = make_llm(d).generate(prompts, greedy(5))
    assert len(outs) == 3
    for prompt, out in zip(prompts, outs, strict=True):
        assert list(out.prompt_token_ids) == prompt
        assert list(out.outputs[0].token_ids) == ref.greedy(prompt, 5)
    assert len({out.request_id for out in outs}) == 3


def test_token_ids_without_tokenizer_files(tiny_model, make_llm):
    d = tiny_model("qwen3", with_tokenizer=False)
    assert not (d / "tokenizer.json").exists()
    llm = make_llm(d)
    assert llm.tokenizer is None
    completion = llm.generate([PROMPT], greedy(6))[0].outputs[0]
    assert list(completion.token_ids) == ReferenceModel.from_dir(d).greedy(PROMPT, 6)
    with pytest.raises(ValueError, match="(?i)tokenizer"):
        llm.generate("a string needs a tokenizer", greedy(2))


def test_skip_tokenizer_init(tiny_model, make_llm):
    d = tiny_model("llama")
    llm = make_llm(d, skip_tokenizer_init=True)
    assert llm.tokenizer is None
    completion = llm.generate([PROMPT], greedy(6))[0].outputs[0]
    assert list(completion.token_ids) == ReferenceModel.from_dir(d).greedy(PROMPT, 6)


def test_stop_token_id_ends_generation(tiny_model, make_llm):
    d = tiny_model("mistral")
    expected = ReferenceModel.from_dir(d).greedy(PROMPT, N)
    # The first token that has not appeared before it: generation must stop right there.
    k = next(i for i in range(2, N) if expected[i] not in expected[:i])
    completion = (
        make_llm(d)
        .generate(
            [PROMPT], SamplingParams(max_tokens=N, temperature=0.0, stop_token_ids=[expected[k]])
        )[0]
        .outputs[0]
    )
    assert completion.finish_reason == "stop"
    assert list(completion.token_ids[:k]) == expected[:k]
    assert len(completion.token_ids) in (k, k + 1)  # with or without the stop token itself


def test_config_is_reported(tiny_model, make_llm):
    d = tiny_model("qwen3", head_dim=32)
    llm = make_llm(d, max_model_len=128)
    cfg = llm.config
    assert cfg["architecture"] == "qwen3"
    assert (cfg["vocab_size"], cfg["hidden_size"], cfg["num_layers"]) == (512, 64, 2)
    assert (cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]) == (4, 2, 32)
    assert llm.max_model_len == 128
    assert llm.stats()["max_model_len"] == 128
