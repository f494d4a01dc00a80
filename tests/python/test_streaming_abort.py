# Streaming and cancellation: a request abandoned in any way (break, close, abort from another
# thread) must give back its KV pages; streamed text must equal generated text; stop strings cut.
from __future__ import annotations

import threading
import time

import pytest

from ember import SamplingParams
from tiny_models import SAMPLE_PROMPT_IDS

PROMPT = list(SAMPLE_PROMPT_IDS)
# Long enough that a request is still running when the test walks away from it.
LONG = 4000


def long_params() -> SamplingParams:
    return SamplingParams(max_tokens=LONG, temperature=0.0, ignore_eos=True)


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def wait_idle(llm, timeout: float = 5.0) -> dict:
    """Polls until no page is used and no request is queued or running; returns the stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = llm.stats()
        idle = stats["blocks_used"] == 0 and stats["running"] == 0 and stats["waiting"] == 0
        if idle or time.monotonic() > deadline:
            return stats
        time.sleep(0.01)


def assert_idle(llm) -> dict:
    stats = wait_idle(llm)
    assert (stats["blocks_used"], stats["running"], stats["waiting"]) == (0, 0, 0), stats
    assert stats["blocks_free"] == stats["num_blocks"]
    return stats


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model("llama", max_position_embeddings=4096)


@pytest.fixture(scope="module")
def llm(model_dir):
    import ember

    engine = ember.LLM(str(model_dir), max_model_len=4096)
    yield engine
    engine.close()


def test_break_out_of_stream_aborts(llm):
    before = llm.stats()["generated_tokens"]
    events = []
    for ev in llm.stream(PROMPT, long_params()):
        events.append(ev)
        if len(events) == 3:
            break
    assert all(ev.finish_reason is None for ev in events)
    stats = assert_idle(llm)
    assert stats["generated_tokens"] - before < LONG  # it stopped early, it did not run out


def test_closing_the_generator_aborts(llm):
    before = llm.stats()["generated_tokens"]
    gen = llm.stream(PROMPT, long_params())
    first = next(gen)
    second = next(gen)
    assert first.request_id == second.request_id
    gen.close()
    stats = assert_idle(llm)
    assert stats["generated_tokens"] - before < LONG


def test_abort_from_another_thread_ends_the_stream(llm):
    stream = iter(llm.stream(PROMPT, long_params()))
    first = next(stream)
    aborter = threading.Thread(target=llm.abort, args=(first.request_id,))
    aborter.start()
    aborter.join()
    rest = list(stream)
    assert rest, "the stream must end with a final event"
    assert rest[-1].finish_reason == "abort"
    assert all(ev.finish_reason is None for ev in rest[:-1])
    assert all(ev.request_id == first.request_id for ev in rest)
    assert 1 + len(rest) < LONG
    assert_idle(llm)


def test_submit_next_event_and_abort(llm):
    req = llm.submit(PROMPT, long_params())
    ev = req.next_event(timeout=10.0)
    assert ev is not None and ev.request_id == req.request_id and ev.finish_reason is None
    req.abort()
    deadline = time.monotonic() + 10.0
    last = ev
    while last is None or last.finish_reason is None:
        assert time.monotonic() < deadline, "no final event after abort"
        last = req.next_event(timeout=1.0)
    assert last.finish_reason == "abort"
    assert_idle(llm)
    # Aborting a finished request (or again) is harmless.
    llm.abort(req.request_id)
    req.abort()
    assert llm.generate([PROMPT], greedy(3))[0].outputs[0].finish_reason == "length"


def test_next_event_times_out_quietly(llm):
    req = llm.submit(PROMPT, greedy(2))
    events = []
    deadline = time.monotonic() + 10.0
    while not events or events[-1].finish_reason is None:
        assert time.monotonic() < deadline
        ev = req.next_event(timeout=1.0)
        if ev is not None:
            events.append(ev)
    assert events[-1].finish_reason == "length"
    assert req.next_event(timeout=0.05) is None  # nothing more after the final event


def test_200_concurrent_streams_complete(llm):
    prompts = [PROMPT[: 2 + i] for i in range(10)]
    expected = {
        i: list(out.outputs[0].token_ids)
        for i, out in enumerate(llm.generate(prompts, SamplingParams(max_tokens=5, temperature=0)))
    }
    results: dict[int, tuple[list[int], str | None]] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            tokens, finish = [], None
            for ev in llm.stream(prompts[k % 10], SamplingParams(max_tokens=5, temperature=0)):
                if ev.token_id is not None and ev.token_id >= 0:
                    tokens.append(ev.token_id)
                finish = ev.finish_reason
            results[k] = (tokens, finish)
        except BaseException as exc:  # reported below, in the test's own thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    assert len(results) == 200
    for k, (tokens, finish) in results.items():
        assert finish in ("length", "stop"), (k, finish)
        assert tokens == expected[k % 10], k
    assert_idle(llm)


@pytest.mark.parametrize("prompt", ["Once upon a time there was", "Numbers like"])
def test_stream_text_equals_generate_text(llm, prompt):
    full = llm.generate(prompt, greedy(24))[0].outputs[0]
    events = list(llm.stream(prompt, greedy(24)))
    assert events[-1].finish_reason == "length"
    assert all(ev.finish_reason is None for ev in events[:-1])
    streamed_ids = [ev.token_id for ev in events if ev.token_id is not None and ev.token_id >= 0]
    assert streamed_ids == list(full.token_ids)
    assert "".join(ev.text for ev in events) == full.text
    assert_idle(llm)


def _pick_stop_string(text: str) -> tuple[str, int]:
    """A two-character piece of `text` whose first occurrence starts at k >= 3."""
    for k in range(3, len(text) - 2):
        piece = text[k : k + 2]
        if text.find(piece) == k and "\ufffd" not in piece:
            return piece, k
    raise AssertionError(f"no usable stop string in {text!r}")


def test_stop_string_is_excluded(llm):
    prompt = "The teacher explained why"
    full = llm.generate(prompt, greedy(24))[0].outputs[0].text
    stop, k = _pick_stop_string(full)
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop=[stop, "@@@"])
    out = llm.generate(prompt, params)[0].outputs[0]
    assert out.finish_reason == "stop"
    assert out.text == full[:k]
    events = list(llm.stream(prompt, params))
    assert events[-1].finish_reason == "stop"
    assert "".join(ev.text for ev in events) == full[:k]
    single = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop=stop)
    assert llm.generate(prompt, single)[0].outputs[0].text == full[:k]
    assert_idle(llm)


def test_aborts_on_an_interleaved_pipeline_free_every_stage(tiny_model):
    """Two CPU stages, two blocks each: requests abandoned mid-stream (break, abort from another
    thread, abort before the first token) leave no page in use on any stage; it keeps serving."""
    import ember

    path = tiny_model("llama", layers=4, max_position_embeddings=4096)
    with ember.LLM(str(path), devices=["cpu", "cpu"], interleave=2, max_model_len=4096) as llm:
        assert llm.stats()["interleave"] == 2
        for ev in llm.stream(PROMPT, long_params()):
            assert ev.finish_reason is None
            break
        reqs = [llm.submit(PROMPT[: 3 + i], long_params()) for i in range(4)]
        assert reqs[0].next_event(timeout=10.0) is not None
        threads = [threading.Thread(target=r.abort) for r in reqs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        llm.submit(PROMPT, long_params()).abort()
        assert_idle(llm)
        out = llm.generate([PROMPT], greedy(4))[0].outputs[0]
        assert out.finish_reason == "length" and len(out.token_ids) == 4
        assert_idle(llm)
