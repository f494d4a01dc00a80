# `ember serve` end to end: a real server process on 127.0.0.1 with a tiny random llama on the CPU,
# driven by the official openai client and raw httpx, checked against the in-process engine.
from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

API_KEY = "test-key-123"
CTX = 2048
MAX_NUM_SEQS = 2
MAX_WAITING = 2
SERVED_NAME = "tiny-llama"


# ---------------------------------------------------------------------------------------------
# the server process


@dataclass
class Server:
    url: str
    model_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def client(self) -> Any:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=API_KEY, max_retries=0,
                             timeout=60)

    def metrics(self) -> dict[str, float]:
        from ember.server_metrics import parse_exposition

        r = httpx.get(self.url + "/metrics", headers=self.headers(), timeout=10)
        assert r.status_code == 200, r.text
        return parse_exposition(r.text)

    def wait_idle(self, timeout: float = 20.0) -> dict[str, float]:
        """Polls /metrics until no sequence holds KV pages; returns the last sample."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if m["ember_kv_pages_used"] == 0 and m["ember_requests_running"] == 0 \
                    and m["ember_server_requests_in_flight"] == 0:
                return m
            if time.monotonic() > deadline:
                pytest.fail(f"server still busy after {timeout} s: {m}")
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(model: Path | str, log: Path, *extra: str) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    cmd = [sys.executable, "-m", "ember.server", str(model), "--port", str(port),
           "--host", "127.0.0.1", "--devices", "cpu", "--num-threads", "1",
           "--log-level", "warning", *extra]
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}", proc


def _wait_health(url: str, proc: subprocess.Popen[bytes], log: Path, want: int,
                 timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            seen = httpx.get(url + "/health", timeout=2).status_code
            if seen == want:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"/health never answered {want} (last {seen}):\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def model_dir(tiny_model: Callable[..., Path]) -> Path:
    return tiny_model("llama", max_position_embeddings=CTX)


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    url, proc = _start_server(
        model_dir, log, "--api-key", API_KEY, "--served-model-name", SERVED_NAME,
        "--max-num-seqs", str(MAX_NUM_SEQS), "--max-waiting", str(MAX_WAITING),
        "--ctx", str(CTX), "--kv-cache-tokens", str(8 * CTX), "--chunk-size", "64")
    try:
        _wait_health(url, proc, log, 200)
        yield Server(url, model_dir, proc, log)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Iterator[Any]:
    """The same model in-process: what the server must agree with."""
    import ember

    llm = ember.LLM(str(model_dir), max_model_len=CTX, num_threads=1)
    yield llm
    llm.close()


def _sse(response: httpx.Response) -> list[Any]:
    """The `data:` payloads of an event stream, JSON-decoded except the final [DONE]."""
    out: list[Any] = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


# ---------------------------------------------------------------------------------------------
# tests


def test_models_and_health(server: Server) -> None:
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    models = server.client().models.list()
    assert [m.id for m in models.data] == [SERVED_NAME]
    assert server.client().models.retrieve(SERVED_NAME).id == SERVED_NAME


def test_completion_matches_engine_and_counts_usage(server: Server, reference: Any) -> None:
    from ember import SamplingParams

    prompt = "The quick brown fox"
    out = server.client().completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=12,
                                             temperature=0.0, extra_body={"ignore_eos": True})
    ref = reference.generate(prompt, SamplingParams(max_tokens=12, temperature=0.0,
                                                    ignore_eos=True))[0]
    assert out.object == "text_completion"
    assert out.choices[0].text == ref.outputs[0].text
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert out.usage.completion_tokens == len(ref.outputs[0].token_ids) == 12
    assert out.usage.total_tokens == out.usage.prompt_tokens + 12


def test_streamed_completion_equals_unstreamed(server: Server) -> None:
    client = server.client()
    kwargs: dict[str, Any] = dict(model=SERVED_NAME, prompt="Hello, how are", max_tokens=10,
                                  temperature=0.0, extra_body={"ignore_eos": True})
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True,
                                            stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)


def test_chat_streamed_and_not(server: Server, reference: Any) -> None:
    from ember.chat_template import prepare_chat_prompt

    messages = [{"role": "system", "content": "You are brief."},
                {"role": "user", "content": "What is the capital of France?"}]
    client = server.client()
    whole = client.chat.completions.create(model=SERVED_NAME, messages=messages, max_tokens=8,
                                           temperature=0.0)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    expected_prompt = prepare_chat_prompt(reference.tokenizer, messages,
                                          add_generation_prompt=True)
    assert whole.usage.prompt_tokens == len(expected_prompt)
    assert whole.usage.completion_tokens <= 8

    chunks = list(client.chat.completions.create(model=SERVED_NAME, messages=messages,
                                                 max_tokens=8, temperature=0.0, stream=True))
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_raw_sse_framing(server: Server) -> None:
    body = {"model": SERVED_NAME, "prompt": "Numbers like", "max_tokens": 4, "stream": True,
            "temperature": 0.0, "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body,
                      headers=server.headers(), timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r)
    assert events[-1] == "[DONE]"
    assert sum(1 for e in events[:-1] if e["choices"][0]["finish_reason"] is None) >= 3
    assert "usage" not in events[0]  # only with stream_options.include_usage


def test_stop_string(server: Server) -> None:
    client = server.client()
    kwargs: dict[str, Any] = dict(model=SERVED_NAME, prompt="Every morning the", temperature=0.0,
                                  extra_body={"ignore_eos": True})
    full = client.completions.create(max_tokens=24, **kwargs).choices[0].text
    stop = next((full[i:i + 2] for i in range(3, len(full) - 2)
                 if full[i:i + 2].strip() and full.index(full[i:i + 2]) == i), None)
    assert stop is not None, f"no usable stop string in {full!r}"
    cut = client.completions.create(max_tokens=24, stop=[stop], **kwargs).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[:full.index(stop)]


def test_n_seed_and_logprobs(server: Server) -> None:
    client = server.client()
    kwargs: dict[str, Any] = dict(model=SERVED_NAME, prompt="Once upon a time", max_tokens=6,
                                  temperature=1.0, top_p=0.9, seed=1234,
                                  extra_body={"ignore_eos": True})
    a = client.completions.create(n=2, **kwargs)
    b = client.completions.create(n=2, **kwargs)
    assert sorted(c.index for c in a.choices) == [0, 1]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # seed honoured
    assert a.usage.completion_tokens == 12

    lp = client.completions.create(model=SERVED_NAME, prompt="Hello", max_tokens=5,
                                   temperature=0.0, logprobs=2,
                                   extra_body={"ignore_eos": True}).choices[0]
    assert lp.logprobs is not None and len(lp.logprobs.tokens) == 5
    assert "".join(lp.logprobs.tokens) == lp.text
    assert all(x is not None and x <= 0.0 for x in lp.logprobs.token_logprobs)
    assert all(len(top) == 2 for top in lp.logprobs.top_logprobs)

    chat = client.chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
        temperature=0.0, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = chat.choices[0].logprobs.content
    assert len(content) == 4 and all(len(t.top_logprobs) == 3 for t in content)
    # greedy: the sampled token is the most likely one
    assert all(t.logprob >= max(x.logprob for x in t.top_logprobs) - 1e-4 for t in content)


def test_disconnect_mid_stream_frees_pages(server: Server) -> None:
    server.wait_idle()
    before = server.metrics()
    aborted_key = 'ember_requests_finished_total{finish_reason="abort"}'
    body = {"model": SERVED_NAME, "prompt": "The library holds", "max_tokens": CTX - 16,
            "stream": True, "ignore_eos": True}
    with httpx.Client(timeout=30) as c, c.stream("POST", server.url + "/v1/completions",
                                                 json=body, headers=server.headers()) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # (leaving a `for` over it early would close the stream)
        for _ in range(6):
            next(lines)
        assert server.metrics()["ember_kv_pages_used"] > 0  # it is still running
    after = server.wait_idle()
    assert after[aborted_key] == before.get(aborted_key, 0) + 1
    assert after["ember_kv_pages_free"] == after["ember_kv_pages_total"]
    # it stopped early: far fewer tokens than asked for were generated
    generated = after["ember_engine_generated_tokens_total"] - \
        before["ember_engine_generated_tokens_total"]
    assert 0 < generated < CTX // 2


def test_overload_returns_503_and_keeps_serving(server: Server) -> None:
    server.wait_idle()
    body = {"model": SERVED_NAME, "prompt": "Green apples", "max_tokens": CTX - 16,
            "stream": True, "ignore_eos": True}
    with httpx.Client(timeout=30) as c:
        streams = [c.stream("POST", server.url + "/v1/completions", json=body,
                            headers=server.headers()) for _ in range(MAX_NUM_SEQS + MAX_WAITING)]
        responses = [s.__enter__() for s in streams]
        try:
            assert [r.status_code for r in responses] == [200] * len(responses)
            over = c.post(server.url + "/v1/completions", headers=server.headers(),
                          json={"model": SERVED_NAME, "prompt": "x", "max_tokens": 2})
            assert over.status_code == 503
            assert int(over.headers["retry-after"]) >= 1
            assert over.json()["error"]["code"] == "server_overloaded"
        finally:
            for s in streams:
                s.__exit__(None, None, None)
    m = server.wait_idle()
    assert m['ember_requests_rejected_total{status="503"}'] >= 1
    ok = server.client().completions.create(model=SERVED_NAME, prompt="x", max_tokens=2)
    assert len(ok.choices) == 1


def test_api_key_enforced(server: Server) -> None:
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=SERVED_NAME, prompt="x", max_tokens=2)
    for path in ("/v1/models", "/metrics"):
        r = httpx.get(server.url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": []})
    assert r.status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # no key needed


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "x", "temperature": -1.0}, "temperature"),
    ({"prompt": "x", "top_p": 0.0}, "top_p"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "many"}, "max_tokens"),
    ({"prompt": "x", "n": 100}, "n"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "logprobs": 99}, "logprobs"),
    ({"prompt": 42}, "prompt"),
    ({}, "prompt"),
    ({"prompt": [10**9]}, None),  # token id out of range: the engine's ValueError
])
def test_invalid_completion_bodies(server: Server, body: dict[str, Any],
                                   param: str | None) -> None:
    r = httpx.post(server.url + "/v1/completions", json={"model": SERVED_NAME, **body},
                   headers=server.headers(), timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param


def test_malformed_and_context_errors(server: Server) -> None:
    h = {**server.headers(), "content-type": "application/json"}
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", headers=h)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/completions", content=b"[1, 2]", headers=h)
    assert r.status_code == 400
    r = httpx.post(server.url + "/v1/chat/completions", headers=h,
                   json={"model": SERVED_NAME, "messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"

    client = server.client()
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=SERVED_NAME, prompt="Hello", max_tokens=CTX)
    error = exc.value.body
    assert error["code"] == "context_length_exceeded"
    match = re.match(rf"This model's maximum context length is {CTX} tokens\. However, you "
                     rf"requested (\d+) tokens \((\d+) in the prompt, {CTX} in the completion\)",
                     error["message"])
    assert match is not None, error["message"]
    assert int(match.group(1)) == int(match.group(2)) + CTX
    with pytest.raises(openai.NotFoundError) as nf:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    assert nf.value.body["code"] == "model_not_found"
    assert httpx.get(server.url + "/health").status_code == 200  # still serving


def test_metrics_exposition(server: Server) -> None:
    server.client().completions.create(model=SERVED_NAME, prompt="x", max_tokens=3,
                                       extra_body={"ignore_eos": True})
    r = httpx.get(server.url + "/metrics", headers=server.headers())
    assert r.headers["content-type"].startswith("text/plain")
    for family in ("ember_time_to_first_token_seconds histogram",
                   "ember_inter_token_latency_seconds histogram",
                   "ember_kv_pages_used gauge", "ember_kv_pages_free gauge",
                   "ember_requests_running gauge", "ember_requests_waiting gauge",
                   "ember_preemptions_total counter", "ember_prompt_tokens_total counter",
                   "ember_generation_tokens_total counter"):
        assert f"# TYPE {family}" in r.text
    m = server.wait_idle()
    assert m["ember_time_to_first_token_seconds_count"] >= 1
    assert m['ember_time_to_first_token_seconds_bucket{le="+Inf"}'] == \
        m["ember_time_to_first_token_seconds_count"]
    assert m["ember_inter_token_latency_seconds_count"] >= 2
    assert m["ember_generation_tokens_total"] >= 3
    assert m["ember_kv_pages_free"] == m["ember_kv_pages_total"] > 0


def test_health_reports_loading_and_failure(tmp_path: Path) -> None:
    from ember.server import build_app

    # An app without an engine yet is "loading".
    async def ask_loading_app() -> tuple[int, httpx.Response]:
        transport = httpx.ASGITransport(app=build_app(None, model_name="m", max_num_seqs=1))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            health = (await c.get("/health")).status_code
            return health, await c.post("/v1/completions", json={"prompt": "x"})

    health, r = asyncio.run(ask_loading_app())
    assert health == 503
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"

    # A model that cannot load: the process stays up and /health says 500 with the reason.
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    log = tmp_path / "server.log"
    url, proc = _start_server(tmp_path / "broken", log)
    try:
        _wait_health(url, proc, log, 500)
        assert "config.json" in httpx.get(url + "/health").json()["message"]
    finally:
        _stop(proc)


def test_python_dash_m_help() -> None:
    out = subprocess.run([sys.executable, "-m", "ember.server", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--devices", "--port", "--max-num-seqs", "--max-waiting", "--api-key"):
        assert flag in out.stdout
