# The CUDA engine end to end: logits and greedy tokens against the CPU oracle and Hugging Face
# transformers, the equivalences (chunking, batching, stages, transports, graphs) on GPUs.
# Without a GPU every test here skips with the reason; CI has none, the GPU machine runs them.
from __future__ import annotations

import time

import numpy as np
import pytest

import ember
from ember import SamplingParams
from numpy_reference import ReferenceModel, rel_error
from tiny_models import SAMPLE_PROMPT_IDS

NUM_GPUS = ember._C.cuda_device_count()
needs_gpu = pytest.mark.skipif(
    NUM_GPUS < 1, reason="no CUDA device (or a build without the CUDA backend)"
)
needs_2_gpus = pytest.mark.skipif(NUM_GPUS < 2, reason="needs 2 CUDA devices")
needs_3_gpus = pytest.mark.skipif(NUM_GPUS < 3, reason="needs 3 CUDA devices")
needs_4_gpus = pytest.mark.skipif(NUM_GPUS < 4, reason="needs 4 CUDA devices")

TOLERANCE = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 6e-2}
# Every engine reserves this fraction of the card, so that a test can hold several at once.
GPU_SHARE = 0.15
LONG_PROMPT = [(i * 31 + 7) % 500 + 5 for i in range(150)]
# A long prompt and two shorter ones, batched: the pipeline tests' workload.
PIPELINE_PROMPTS = [LONG_PROMPT, LONG_PROMPT[:30], LONG_PROMPT[5:90]]


def greedy(max_tokens: int = 12) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)


def greedy_ids(llm: ember.LLM, prompts: list[list[int]], max_tokens: int = 12) -> list[list[int]]:
    """Each prompt's greedy tokens, the prompts generated in one batch."""
    return [o.outputs[0].token_ids for o in llm.generate(prompts, greedy(max_tokens))]


@needs_gpu
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gpu_logits_match_numpy_reference(tiny_model, make_llm, family, dtype):
    path = tiny_model(family, dtype=dtype)
    llm = make_llm(path, devices=[0], gpu_memory_utilization=GPU_SHARE)
    out = llm.generate([list(SAMPLE_PROMPT_IDS)], greedy(6), return_logits=True)[0].outputs[0]
    ids = list(SAMPLE_PROMPT_IDS)
    ref = ReferenceModel.from_dir(path).forward(ids + out.token_ids[:-1])
    for step, logits in enumerate(out.logits):
        expected = ref[len(ids) - 1 + step]
        got = np.asarray(logits, dtype=np.float32)
        assert rel_error(got, expected) <= TOLERANCE[dtype], f"step {step}"


@needs_gpu
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_gpu_greedy_equals_cpu_fp32(tiny_model, make_llm, family):
    path = tiny_model(family)
    cpu = make_llm(path).generate([LONG_PROMPT], greedy(16))[0].outputs[0].token_ids
    gpu = (
        make_llm(path, devices=[0], gpu_memory_utilization=GPU_SHARE)
        .generate([LONG_PROMPT], greedy(16))[0]
        .outputs[0]
        .token_ids
    )
    assert gpu == cpu


@needs_gpu
def test_gpu_chunked_prefill_batching_and_graphs_agree(tiny_model, make_llm):
    path = tiny_model("llama")
    prompts = [LONG_PROMPT[i:] for i in range(0, 64, 8)]
    base = make_llm(path, devices=[0], gpu_memory_utilization=GPU_SHARE, use_cuda_graphs=False)
    expected = greedy_ids(base, prompts)
    alone = [base.generate([p], greedy())[0].outputs[0].token_ids for p in prompts]
    assert alone == expected
    for chunk in (1, 7, 64):
        llm = make_llm(path, devices=[0], gpu_memory_utilization=GPU_SHARE, chunk_size=chunk)
        got = greedy_ids(llm, prompts)
        assert got == expected, f"chunk_size={chunk}"


@needs_gpu
def test_gpu_preemption_frees_everything(tiny_model, make_llm):
    path = tiny_model("llama")
    # 8 requests of 20 + 40 tokens (4 pages each) over 6 pages: the running ones must preempt.
    prompts = [LONG_PROMPT[i : i + 20] for i in range(8)]
    free = make_llm(path, devices=[0], gpu_memory_utilization=GPU_SHARE)
    expected = greedy_ids(free, prompts, 40)
    tight = make_llm(
        path, devices=[0], gpu_memory_utilization=GPU_SHARE, kv_cache_tokens=96, block_size=16
    )
    got = greedy_ids(tight, prompts, 40)
    assert got == expected
    stats = tight.stats()
    assert stats["preemptions"] > 0
    assert stats["blocks_used"] == 0


@needs_gpu
def test_gpu_seeded_sampling_is_reproducible(tiny_model, make_llm):
    llm = make_llm(tiny_model("qwen2"), devices=[0], gpu_memory_utilization=GPU_SHARE)
    p = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.9, top_k=50, seed=7, ignore_eos=True)
    a = llm.generate([LONG_PROMPT[:20]], p)[0].outputs[0].token_ids
    b = llm.generate([LONG_PROMPT[:20]], p)[0].outputs[0].token_ids
    assert a == b


@needs_gpu
def test_gpu_random_model_of_real_shape_runs(make_llm):
    llm = make_llm(
        "random:custom:vocab=32000,hidden=1024,layers=4,heads=16,kv_heads=4,ffn=2816",
        devices=[0],
        gpu_memory_utilization=GPU_SHARE,
    )
    out = llm.generate([[1, 2, 3] * 100], greedy(8))[0].outputs[0]
    assert len(out.token_ids) == 8 and out.finish_reason == "length"


@needs_2_gpus
@pytest.mark.parametrize("transport", ["peer", "host"])
def test_two_gpu_stages_equal_one(tiny_model, make_llm, transport):
    path = tiny_model("llama", layers=4)
    prompts = PIPELINE_PROMPTS
    one = greedy_ids(make_llm(path, devices=[0], gpu_memory_utilization=GPU_SHARE), prompts)
    llm = make_llm(
        path,
        devices=[0, 1],
        transport=transport,
        interleave=1,  # a chain of two stages (the interleaved ring is tested below)
        gpu_memory_utilization=GPU_SHARE,
        chunk_size=32,
    )
    two = greedy_ids(llm, prompts)
    assert two == one
    stages = llm.stats()["stages"]
    assert [s["transport"] for s in stages] == [transport, "-"]
    assert llm.stats()["blocks_used"] == 0


@needs_2_gpus
@pytest.mark.parametrize("transport", ["peer", "host"])
@pytest.mark.parametrize("interleave", [2, 4])
def test_two_gpu_interleaved_stages_equal_one(tiny_model, make_llm, transport, interleave):
    """Eight layers in blocks placed round-robin on two GPUs: prefill chunks and decode steps
    (graphs replayed per block) go round the ring and give the same greedy tokens."""
    path = tiny_model("llama", layers=8)
    prompts = PIPELINE_PROMPTS
    one = greedy_ids(make_llm(path, devices=[0], gpu_memory_utilization=GPU_SHARE), prompts, 20)
    llm = make_llm(
        path,
        devices=[0, 1],
        transport=transport,
        interleave=interleave,
        gpu_memory_utilization=GPU_SHARE,
        chunk_size=32,
    )
    assert greedy_ids(llm, prompts, 20) == one
    alone = [llm.generate([p], greedy(20))[0].outputs[0].token_ids for p in prompts]
    assert alone == one
    stats = llm.stats()
    assert stats["interleave"] == interleave
    assert [s["transport"] for s in stats["stages"]] == [transport, transport]
    assert all(s["graphs"] > 0 for s in stats["stages"])
    assert stats["blocks_used"] == 0


@needs_2_gpus
@pytest.mark.parametrize("transport", ["peer", "host"])
def test_two_gpu_large_and_small_handoffs_equal_one(make_llm, transport):
    """Hidden 1024 in bf16: a 256-token chunk hands 512 KiB to the next stage (copy engines and
    events), a decode step 2 KiB (the flag kernels, inside the decode graphs); both, round an
    interleaved ring, give the tokens one GPU gives with the same chunks, one prompt at a time
    (random weights leave the logits so close that any other batching or chunking, which changes
    the GEMMs' shapes and so cuBLAS's summation order, may flip a token)."""
    model = "random:custom:vocab=32000,hidden=1024,layers=4,heads=16,kv_heads=4,ffn=2816"
    prompts = [[(i * 37) % 31000 + 7 for i in range(600)], [5, 6, 7] * 50]
    one_gpu = make_llm(model, devices=[0], chunk_size=256, gpu_memory_utilization=GPU_SHARE)
    one = [one_gpu.generate([p], greedy(24))[0].outputs[0].token_ids for p in prompts]
    llm = make_llm(
        model,
        devices=[0, 1],
        transport=transport,
        interleave=2,
        chunk_size=256,
        gpu_memory_utilization=GPU_SHARE,
    )
    assert [llm.generate([p], greedy(24))[0].outputs[0].token_ids for p in prompts] == one
    assert all(len(o.outputs[0].token_ids) == 24 for o in llm.generate(prompts, greedy(24)))
    stats = llm.stats()
    assert stats["blocks_used"] == 0 and all(s["graphs"] > 0 for s in stats["stages"])


@needs_4_gpus
def test_four_gpu_stages_equal_one(tiny_model, make_llm):
    path = tiny_model("qwen3", layers=4)
    one = (
        make_llm(path, devices=[0], gpu_memory_utilization=GPU_SHARE)
        .generate([LONG_PROMPT], greedy())[0]
        .outputs[0]
        .token_ids
    )
    four = make_llm(
        path, devices=[0, 1, 2, 3], chunk_size=16, gpu_memory_utilization=GPU_SHARE
    ).generate([LONG_PROMPT], greedy())
    assert four[0].outputs[0].token_ids == one
    ring = make_llm(
        tiny_model("qwen3", layers=8),
        devices=[0, 1, 2, 3],
        interleave=2,
        chunk_size=16,
        gpu_memory_utilization=GPU_SHARE,
    )
    one_8 = make_llm(tiny_model("qwen3", layers=8), devices=[0], gpu_memory_utilization=GPU_SHARE)
    assert (
        ring.generate([LONG_PROMPT], greedy())[0].outputs[0].token_ids
        == one_8.generate([LONG_PROMPT], greedy())[0].outputs[0].token_ids
    )


@needs_3_gpus
@pytest.mark.parametrize("transport", ["peer", "host"])
@pytest.mark.parametrize("graphs", [True, False])
def test_three_gpu_stages_equal_one(tiny_model, make_llm, transport, graphs):
    """Six layers on three GPUs, as a chain and as a ring of two rounds, chunked and in one chunk,
    with and without decode graphs: the greedy tokens of one GPU."""
    path = tiny_model("llama", layers=6)
    prompts = PIPELINE_PROMPTS
    one = greedy_ids(make_llm(path, devices=[0], gpu_memory_utilization=GPU_SHARE), prompts, 32)
    for interleave, chunk in ((1, 16), (2, 16), (2, 4096)):
        llm = make_llm(
            path,
            devices=[0, 1, 2],
            transport=transport,
            interleave=interleave,
            chunk_size=chunk,
            use_cuda_graphs=graphs,
            gpu_memory_utilization=GPU_SHARE,
        )
        got = greedy_ids(llm, prompts, 32)
        assert got == one, f"interleave={interleave} chunk_size={chunk}"
        stats = llm.stats()
        assert stats["interleave"] == interleave and stats["blocks_used"] == 0
        assert [s["layers"] for s in stats["stages"]] == [2, 2, 2]
        assert all((s["graphs"] > 0) == graphs for s in stats["stages"])
        llm.close()


@needs_2_gpus
def test_gpu_pipeline_preemption_and_aborts_free_every_stage(tiny_model, make_llm):
    """Two GPUs, an interleaved ring: a pool that runs dry preempts and still gives the tokens of
    a run without pressure; requests aborted mid-stream or before their first token leave no page
    in use; the engine keeps serving."""
    path = tiny_model("llama", layers=4)
    prompts = [LONG_PROMPT[i : i + 20] for i in range(8)]
    free = make_llm(path, devices=[0], gpu_memory_utilization=GPU_SHARE)
    expected = greedy_ids(free, prompts, 40)
    tight = make_llm(
        path,
        devices=[0, 1],
        interleave=2,
        kv_cache_tokens=96,
        block_size=16,
        gpu_memory_utilization=GPU_SHARE,
    )
    assert greedy_ids(tight, prompts, 40) == expected
    stats = tight.stats()
    assert stats["preemptions"] > 0 and stats["blocks_used"] == 0

    long = SamplingParams(max_tokens=320, temperature=0, ignore_eos=True)  # within 512 positions
    llm = make_llm(path, devices=[0, 1], interleave=2, gpu_memory_utilization=GPU_SHARE)
    for ev in llm.stream(LONG_PROMPT, long):
        assert ev.finish_reason is None
        break
    reqs = [llm.submit(LONG_PROMPT[: 3 + i], long) for i in range(4)]
    assert reqs[0].next_event(timeout=30.0) is not None
    for r in reqs:
        r.abort()
    before_first_token = llm.submit(LONG_PROMPT, long)
    before_first_token.abort()
    deadline = time.monotonic() + 30.0
    for r in [*reqs, before_first_token]:  # each ends with an abort (320 tokens never finish here)
        last = None
        while last is None or last.finish_reason is None:
            assert time.monotonic() < deadline, "no final event after abort"
            last = r.next_event(timeout=1.0)
        assert last.finish_reason == "abort"
    while time.monotonic() < deadline and llm.stats()["blocks_used"]:
        time.sleep(0.01)
    stats = llm.stats()
    assert (stats["blocks_used"], stats["running"], stats["waiting"]) == (0, 0, 0)
    out = llm.generate([LONG_PROMPT], greedy(4))[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 4
    assert llm.healthy


@needs_gpu
def test_gpu_bad_device_and_oversized_model_are_clear(tiny_model):
    with pytest.raises(Exception, match="cuda:99"):
        ember.LLM(str(tiny_model("llama")), devices=["cuda:99"])
    with pytest.raises(Exception, match="MiB"):
        ember.LLM("random:qwen3-32b", devices=[0], max_memory=2 << 30)
