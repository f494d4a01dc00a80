# The scheduling choices must not change the answer: chunked or whole prefill, one or several
# pipeline stages, alone or in a batch, preempted or not, and seeded sampling must be repeatable.
from __future__ import annotations

import time

import numpy as np
import pytest

from ember import SamplingParams
from numpy_reference import rel_error

LONG_PROMPT = [int(t) for t in np.random.default_rng(11).integers(5, 512, size=100)]
PROMPTS = [
    [int(t) for t in np.random.default_rng(100 + i).integers(5, 512, size=3 + 5 * i)]
    for i in range(8)
]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def run(llm, prompts, n: int, logits: bool = True):
    """Token ids and per-step logits of each prompt, generated together in one call."""
    outs = llm.generate(prompts, greedy(n), return_logits=logits)
    ids = [list(o.outputs[0].token_ids) for o in outs]
    lg = [np.stack([np.asarray(x) for x in o.outputs[0].logits]) for o in outs] if logits else None
    return ids, lg


def assert_same(ids_a, lg_a, ids_b, lg_b, tol: float = 1e-4) -> None:
    assert ids_a == ids_b
    if lg_a is not None and lg_b is not None:
        for a, b in zip(lg_a, lg_b, strict=True):
            assert rel_error(a, b) <= tol


@pytest.fixture(scope="module")
def four_layer_model(tiny_model):
    return tiny_model("qwen3", layers=4)


@pytest.fixture(scope="module")
def baseline(four_layer_model):
    """What one stage, default chunking and no memory pressure produce."""
    import ember

    with ember.LLM(str(four_layer_model)) as llm:
        long_ids, long_logits = run(llm, [LONG_PROMPT], 8)
        alone = [run(llm, [p], 10) for p in PROMPTS]
    return {"long": (long_ids, long_logits), "alone": alone}


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunked_prefill_equals_unchunked(four_layer_model, baseline, make_llm, chunk_size):
    llm = make_llm(four_layer_model, chunk_size=chunk_size)
    ids, logits = run(llm, [LONG_PROMPT], 8)
    assert_same(ids, logits, *baseline["long"])


def test_small_step_budget_equals_unchunked(four_layer_model, baseline, make_llm):
    llm = make_llm(four_layer_model, chunk_size=32, max_num_batched_tokens=16)
    ids, logits = run(llm, [LONG_PROMPT], 8)
    assert_same(ids, logits, *baseline["long"])


@pytest.mark.parametrize(
    "devices,layer_split",
    [
        (["cpu", "cpu"], None),
        (["cpu", "cpu", "cpu"], None),
        (["cpu", "cpu"], [1, 3]),
        (["cpu", "cpu"], [3, 1]),
        (["cpu", "cpu", "cpu"], [2, 1, 1]),
        (["cpu"] * 4, None),
    ],
    ids=["2-stages", "3-stages", "split-1-3", "split-3-1", "split-2-1-1", "4-stages"],
)
def test_pipeline_stages_equal_one_stage(
    four_layer_model, baseline, make_llm, devices, layer_split
):
    llm = make_llm(four_layer_model, devices=devices, layer_split=layer_split, chunk_size=16)
    assert llm.stats()["num_stages"] == len(devices)
    ids, logits = run(llm, [LONG_PROMPT], 8)
    assert_same(ids, logits, *baseline["long"])
    # Several sequences in flight at once keep every stage busy: still the same tokens.
    batch_ids, _ = run(llm, PROMPTS, 10, logits=False)
    assert batch_ids == [alone[0][0] for alone in baseline["alone"]]


@pytest.mark.parametrize(
    "chunk_size,layer_split",
    [(16, None), (1, None), (5, [2, 2])],
    ids=["chunk-16", "chunk-1", "chunk-5-given-split"],
)
def test_interleaved_stages_equal_one_stage(
    four_layer_model, baseline, make_llm, chunk_size, layer_split
):
    """Two stages of two one-layer blocks each (layers 0 and 2 on the first, 1 and 3 on the
    second): every batch goes round the ring twice and gives the same tokens and logits."""
    llm = make_llm(
        four_layer_model,
        devices=["cpu", "cpu"],
        interleave=2,
        chunk_size=chunk_size,
        layer_split=layer_split,
    )
    stats = llm.stats()
    assert stats["interleave"] == 2
    assert [(s["layers"], s["blocks"]) for s in stats["stages"]] == [(2, 2), (2, 2)]
    ids, logits = run(llm, [LONG_PROMPT], 8)
    assert_same(ids, logits, *baseline["long"])
    batch_ids, _ = run(llm, PROMPTS, 10, logits=False)
    assert batch_ids == [alone[0][0] for alone in baseline["alone"]]
    assert llm.stats()["blocks_used"] == 0


def test_interleaved_ring_with_thinned_ends(tiny_model, make_llm):
    """Eight layers on two stages in two rounds: the pipeline's first and last blocks thin to one
    layer (blocks of 1 3 | 3 1); batches go round the ring and give one stage's tokens, logits."""
    model = tiny_model("llama", layers=8)
    ids_1, logits_1 = run(make_llm(model), [LONG_PROMPT] + PROMPTS[:3], 6)
    llm = make_llm(model, devices=["cpu", "cpu"], interleave=2, chunk_size=24)
    assert [s["block_layers"] for s in llm.stats()["stages"]] == [[1, 3], [3, 1]]
    ids_2, logits_2 = run(llm, [LONG_PROMPT] + PROMPTS[:3], 6)
    assert_same(ids_2, logits_2, ids_1, logits_1)
    assert llm.stats()["blocks_used"] == 0


def test_automatic_chunks_follow_the_pipeline(four_layer_model, make_llm):
    """One stage takes the whole step budget; a chain of stages 1024-token chunks with 512-token
    edges; an interleaved ring 8192 / 2S (2048 here) without edges; a given chunk_size no edges."""
    def chunks(**options):
        stats = make_llm(four_layer_model, **options).stats()
        return stats["chunk_size"], stats["edge_chunk_size"]

    assert chunks() == (2048, 0)
    assert chunks(devices=["cpu", "cpu"]) == (1024, 512)
    assert chunks(devices=["cpu", "cpu"], interleave=2) == (2048, 0)
    assert chunks(devices=["cpu", "cpu"], chunk_size=24) == (24, 0)
    assert chunks(devices=["cpu", "cpu"], chunk_size=24, edge_chunk_size=8) == (24, 8)


def test_interleaved_three_stages_with_uneven_blocks(tiny_model, make_llm):
    """Seven layers over three stages (3, 2, 2) in two rounds: blocks of 1 1 1 | 2 1 1 layers (the
    pipeline's first block thinned to one layer, its other layer moved to the stage's next one)."""
    model = tiny_model("llama", layers=7)
    one = make_llm(model)
    ids_1, logits_1 = run(one, [LONG_PROMPT] + PROMPTS[:3], 6)
    llm = make_llm(model, devices=["cpu"] * 3, interleave=2, chunk_size=24)
    assert [s["block_layers"] for s in llm.stats()["stages"]] == [[1, 2], [1, 1], [1, 1]]
    ids_3, logits_3 = run(llm, [LONG_PROMPT] + PROMPTS[:3], 6)
    assert_same(ids_3, logits_3, ids_1, logits_1)


def test_random_weights_do_not_depend_on_the_split(make_llm):
    """A random-weight model (what the GPU benchmarks run) is one model however its layers are
    placed: its embedding and head draw from their own numbers, not the last block's."""
    model = "random:custom:vocab=512,hidden=64,layers=4,heads=4,kv_heads=2,ffn=128"
    one = make_llm(model, skip_tokenizer_init=True)
    ids_1, logits_1 = run(one, [LONG_PROMPT[:40], PROMPTS[2]], 6)
    for devices, interleave in ((["cpu", "cpu"], 1), (["cpu", "cpu"], 2), (["cpu"] * 3, 1)):
        llm = make_llm(model, devices=devices, interleave=interleave, skip_tokenizer_init=True)
        ids, logits = run(llm, [LONG_PROMPT[:40], PROMPTS[2]], 6)
        assert_same(ids, logits, ids_1, logits_1)


def test_interleave_is_validated(four_layer_model):
    import ember

    # Four layers on two stages cannot be cut into three blocks per stage.
    with pytest.raises(ValueError, match="interleave 3 needs at least 3 layers"):
        ember.LLM(str(four_layer_model), devices=["cpu", "cpu"], interleave=3)
    with pytest.raises(ValueError, match="interleave must be a positive integer"):
        ember.LLM(str(four_layer_model), devices=["cpu", "cpu"], interleave=-1)
    # The engine checks what reaches it past the Python layer too.
    for field, value, message in (
        ("interleave", -1, "interleave must be >= 1"),
        ("batches_in_flight", 65, "batches_in_flight must be in"),
    ):
        opts = ember._C.EngineOptions()
        opts.model_path = str(four_layer_model)
        opts.devices = ["cpu", "cpu"]
        setattr(opts, field, value)
        with pytest.raises(ValueError, match=message):
            ember._C.Engine(opts)
    # One stage has nothing to interleave: the option is accepted and has no effect.
    with ember.LLM(str(four_layer_model), interleave=2) as llm:
        assert llm.stats()["interleave"] == 1
    with ember.LLM(str(four_layer_model), devices=["cpu", "cpu"], batches_in_flight=5) as llm:
        outs = llm.generate(PROMPTS, greedy(3))
        assert [len(o.outputs[0].token_ids) for o in outs] == [3] * len(PROMPTS)


@pytest.mark.parametrize("edge", [3, 0, None], ids=["edge-3", "edge-off", "edge-auto"])
def test_edge_chunks_equal_one_stage(four_layer_model, baseline, make_llm, edge):
    """Small first and last chunks around large middle ones (pipeline default) change nothing."""
    kwargs = {"chunk_size": 11} if edge is not None else {}
    llm = make_llm(four_layer_model, devices=["cpu", "cpu"], edge_chunk_size=edge, **kwargs)
    ids, logits = run(llm, [LONG_PROMPT], 8)
    assert_same(ids, logits, *baseline["long"])


def test_edge_chunk_size_is_validated(four_layer_model):
    import ember

    with pytest.raises(ValueError, match="edge_chunk_size"):
        ember.LLM(str(four_layer_model), edge_chunk_size=-2)


def test_batch_equals_each_alone(four_layer_model, baseline, make_llm):
    llm = make_llm(four_layer_model)
    ids, logits = run(llm, PROMPTS, 10)
    for i, (alone_ids, alone_logits) in enumerate(baseline["alone"]):
        assert_same([ids[i]], [logits[i]], alone_ids, alone_logits)


def test_preemption_does_not_change_tokens(four_layer_model, baseline, make_llm):
    # 8 blocks of 16 tokens; 8 sequences of up to 38 + 40 tokens need ~3-5 blocks each, so the
    # pool runs dry and sequences must be preempted and recomputed.
    llm = make_llm(four_layer_model, kv_cache_tokens=128, block_size=16, max_model_len=128)
    assert_preempted_run_matches(llm, make_llm(four_layer_model))
    assert llm.stats()["num_blocks"] == 8


def assert_preempted_run_matches(llm, free_llm) -> None:
    """`llm`'s pool runs dry on PROMPTS (40 new tokens each): it preempts, gives the tokens and
    logits of `free_llm` (no memory pressure) and frees every page afterwards."""
    ids, logits = run(llm, PROMPTS, 40)
    assert llm.stats()["preemptions"] > 0
    free_ids, free_logits = run(free_llm, PROMPTS, 40)
    for i in range(len(PROMPTS)):
        assert_same([ids[i]], [logits[i]], [free_ids[i]], [free_logits[i]])
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and llm.stats()["blocks_used"] != 0:
        time.sleep(0.01)
    stats = llm.stats()
    assert (stats["blocks_used"], stats["running"], stats["waiting"]) == (0, 0, 0)


def test_preemption_on_an_interleaved_pipeline(four_layer_model, baseline, make_llm):
    """The pool of 8 pages runs dry with two interleaved CPU stages too: sequences are preempted
    and recomputed round the ring, give the tokens of a run without pressure, and every page comes
    back on every stage."""
    llm = make_llm(
        four_layer_model,
        devices=["cpu", "cpu"],
        interleave=2,
        kv_cache_tokens=128,
        block_size=16,
        max_model_len=128,
    )
    assert_preempted_run_matches(llm, make_llm(four_layer_model))


def test_seeded_sampling_is_repeatable(four_layer_model, make_llm):
    llm = make_llm(four_layer_model)

    def sample(seed: int, prompts=None):
        params = SamplingParams(
            max_tokens=16, temperature=0.8, top_p=0.95, seed=seed, ignore_eos=True
        )
        outs = llm.generate(prompts or [PROMPTS[3]], params)
        return [list(o.outputs[0].token_ids) for o in outs]

    first = sample(1234)
    assert sample(1234) == first
    assert sample(1235) != first
    # The draw of a seeded request does not depend on what else is in the batch.
    assert sample(1234, [PROMPTS[0], PROMPTS[3], PROMPTS[5]])[1] == first[0]


def test_seeded_string_prompt_text_repeats(tiny_model, make_llm):
    llm = make_llm(tiny_model("llama"))
    params = SamplingParams(max_tokens=12, temperature=0.8, top_p=0.95, seed=7, ignore_eos=True)
    a = llm.generate("The library holds", params)[0].outputs[0]
    b = llm.generate("The library holds", params)[0].outputs[0]
    assert (a.text, list(a.token_ids)) == (b.text, list(b.token_ids))
    other = SamplingParams(max_tokens=12, temperature=0.8, top_p=0.95, seed=8, ignore_eos=True)
    c = llm.generate("The library holds", other)[0].outputs[0]
    assert list(c.token_ids) != list(a.token_ids)
