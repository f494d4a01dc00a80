"""The user-facing engine object: ``LLM(model).generate(...)`` and ``.stream(...)``.

It turns prompts into token ids, hands them to the C++ engine thread, and turns the token events
that come back into text (incremental detokenization, stop strings) and vLLM-shaped outputs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ember import _C
from ember.detokenizer import IncrementalDetokenizer
from ember.outputs import CompletionOutput, RequestMetrics, RequestOutput, StreamEvent
from ember.sampling_params import SamplingParams
from ember.stop_strings import StopStringMatcher
from ember.tokenizer import Tokenizer

PromptType = str | Sequence[int]


class Request:
    """One submitted request: iterate it for ``StreamEvent``s; ``abort()`` stops it."""

    def __init__(
        self,
        llm: LLM,
        stream: Any,
        prompt: str | None,
        prompt_ids: list[int],
        params: SamplingParams,
        return_logits: bool,
    ) -> None:
        self._llm = llm
        self._stream = stream
        self.request_id: int = stream.id
        self.prompt = prompt
        self.prompt_token_ids = prompt_ids
        self.params = params
        self.token_ids: list[int] = []
        self.text = ""
        self.logprobs: list[dict[int, float]] | None = [] if params.logprobs is not None else None
        self.logits: list[Any] | None = [] if return_logits else None
        self.finish_reason: str | None = None
        self.error: str | None = None
        tok = llm.tokenizer
        self._detok = (
            IncrementalDetokenizer(tok, prompt_ids, params.skip_special_tokens)
            if tok is not None
            else None
        )
        self._stops = (
            StopStringMatcher(list(params.stop)) if params.stop and tok is not None else None
        )
        self.metrics = RequestMetrics(
            arrival_time=time.monotonic(),
            first_token_time=None,
            finish_time=None,
            num_prompt_tokens=len(prompt_ids),
            num_generated_tokens=0,
        )

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def abort(self) -> None:
        """Stops the request; the engine frees its KV pages."""
        if not self.finished:
            self._llm.abort(self.request_id)

    def next_event(self, timeout: float = 1.0) -> StreamEvent | None:
        """The next event, or None when nothing arrived within ``timeout`` seconds."""
        if self.finished:
            return None
        ev = self._stream.next(timeout)
        if ev is None:
            return None
        return self._on_event(ev)

    def __iter__(self) -> Iterator[StreamEvent]:
        try:
            while not self.finished:
                out = self.next_event(1.0)
                if out is not None:
                    yield out
        finally:
            if not self.finished:
                self.abort()

    def _on_event(self, ev: Any) -> StreamEvent:
        now = time.monotonic()
        delta = ""
        token: int | None = None
        finish: str | None = ev.finish_reason
        if ev.token >= 0:
            token = ev.token
            if self.metrics.first_token_time is None:
                self.metrics.first_token_time = now
            self.token_ids.append(token)
            self.metrics.num_generated_tokens += 1
            if self.logprobs is not None:
                entry = {int(t): float(lp) for t, lp in ev.top_logprobs}
                entry[token] = float(ev.logprob)
                self.logprobs.append(entry)
            if self.logits is not None and ev.logits is not None:
                self.logits.append(ev.logits)
            if self._detok is not None:
                delta = self._detok.push(token)
        if finish is not None and self._detok is not None:
            delta += self._detok.flush()
        if self._stops is not None:
            delta, hit = self._stops.push(delta)
            if hit and finish is None:
                finish = "stop"
                self._llm.abort(self.request_id)
            elif finish is not None and not hit:
                delta += self._stops.flush()
        if ev.error:
            self.error = ev.error
        self.text += delta
        if finish is not None:
            self.finish_reason = finish
            self.metrics.finish_time = now
        return StreamEvent(
            request_id=self.request_id,
            token_id=token,
            text=delta,
            finish_reason=finish,
            logprob=float(ev.logprob) if token is not None else None,
        )

    def result(self) -> RequestOutput:
        """Waits for the request to finish and returns its output."""
        for _ in self:
            pass
        return self.output()

    def output(self) -> RequestOutput:
        out = CompletionOutput(
            index=0,
            text=self.text,
            token_ids=list(self.token_ids),
            finish_reason=self.finish_reason,
            logprobs=self.logprobs,
            logits=self.logits,
        )
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=[out],
            finished=self.finished,
            metrics=self.metrics,
        )


class LLM:
    """An engine on one model and one or more devices (one pipeline stage per device)."""

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        devices: Sequence[str | int] | str | int = ("cpu",),
        *,
        max_model_len: int | None = None,
        kv_cache_tokens: int | None = None,
        kv_memory_fraction: float | None = None,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int | None = None,
        chunk_size: int | None = None,
        edge_chunk_size: int | None = None,
        block_size: int = 16,
        layer_split: Sequence[int] | None = None,
        transport: str = "auto",
        interleave: int | None = None,
        batches_in_flight: int | None = None,
        num_threads: int = 0,
        max_memory: int | None = None,
        gpu_memory_utilization: float | None = None,
        use_cuda_graphs: bool = True,
        profile_stages: bool = False,
        quantized: bool = True,
        tokenizer: str | os.PathLike[str] | None = None,
        skip_tokenizer_init: bool = False,
    ) -> None:
        if model is None:
            from ember.default_model import default_model_path

            model = default_model_path()
        path = os.fspath(model)
        random_model = path.startswith("random:")
        if random_model:
            skip_tokenizer_init = True
        elif not os.path.exists(path):
            raise _C.ModelFormatError(f"model path {path!r} does not exist")
        opts = _C.EngineOptions()
        opts.model_path = path
        opts.devices = _device_list(devices)
        if layer_split is not None:
            opts.layer_split = [int(x) for x in layer_split]
        opts.transport = transport
        # None = automatic; n = blocks of layers per stage, placed round-robin over the stages.
        opts.interleave = _non_negative("interleave", interleave)
        opts.batches_in_flight = _non_negative("batches_in_flight", batches_in_flight)
        opts.max_model_len = _non_negative("max_model_len", max_model_len)
        opts.kv_cache_tokens = _non_negative("kv_cache_tokens", kv_cache_tokens)
        opts.kv_memory_fraction = float(kv_memory_fraction or 0.0)
        opts.max_num_seqs = int(max_num_seqs)
        opts.max_num_batched_tokens = int(max_num_batched_tokens or 0)
        opts.chunk_size = 0 if chunk_size is None else int(chunk_size)
        # None = automatic; 0 = off (every chunk chunk_size); n = first and last chunks of n tokens.
        if edge_chunk_size is not None and (
            isinstance(edge_chunk_size, bool) or int(edge_chunk_size) < 0
        ):
            raise ValueError(f"edge_chunk_size must be >= 0, got {edge_chunk_size!r}")
        opts.edge_chunk_size = (
            0 if edge_chunk_size is None else (int(edge_chunk_size) if edge_chunk_size else -1)
        )
        opts.block_size = int(block_size)
        opts.num_threads = int(num_threads)
        opts.max_memory = _non_negative("max_memory", max_memory)
        opts.gpu_memory_utilization = float(gpu_memory_utilization or 0.0)
        opts.use_cuda_graphs = bool(use_cuda_graphs)
        opts.profile_stages = bool(profile_stages)
        opts.keep_quantized = bool(quantized)
        self.model_path = path
        self.tokenizer: Tokenizer | None = None
        if not skip_tokenizer_init:
            self.tokenizer = _load_tokenizer(path, tokenizer)
        self._engine: Any = _C.Engine(opts)
        self.config: dict[str, Any] = dict(self._engine.config)
        self.max_model_len: int = int(self._engine.max_model_len)
        self._lock = threading.Lock()

    # ---- requests ----
    def submit(
        self,
        prompt: PromptType,
        params: SamplingParams | None = None,
        *,
        return_logits: bool = False,
    ) -> Request:
        """Queues one request and returns it without waiting."""
        params = params or SamplingParams()
        text, ids = self._prompt_ids(prompt)
        opts = _C.SamplingOptions()
        for key, value in params.to_engine_dict().items():
            setattr(opts, key, value)
        if self.tokenizer is None and params.stop:
            raise ValueError("stop strings need a tokenizer; this model was loaded without one")
        opts.return_logits = bool(return_logits)
        stream = self._engine.add_request(ids, opts)
        return Request(self, stream, text, ids, params, return_logits)

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        return_logits: bool = False,
    ) -> list[RequestOutput]:
        """Runs every prompt to completion (batched together) and returns their outputs in order."""
        batch = _as_prompt_list(prompts)
        if isinstance(params, Sequence):
            if len(params) != len(batch):
                raise ValueError(f"params has {len(params)} entries for {len(batch)} prompts")
            plist = list(params)
        else:
            plist = [params or SamplingParams()] * len(batch)
        reqs: list[Request] = []
        try:
            for p, sp in zip(batch, plist, strict=True):
                reqs.append(self.submit(p, sp, return_logits=return_logits))
            return [r.result() for r in reqs]
        finally:
            for r in reqs:
                r.abort()

    def stream(
        self, prompt: PromptType, params: SamplingParams | None = None
    ) -> Iterator[StreamEvent]:
        """Yields events as tokens arrive; leaving the loop early aborts the request."""
        req = self.submit(prompt, params)
        return iter(req)

    def chat(
        self, messages: list[dict[str, Any]], params: SamplingParams | None = None
    ) -> RequestOutput:
        """Renders the model's chat template and generates the assistant's reply."""
        return self.submit_chat(messages, params).result()

    def submit_chat(
        self, messages: list[dict[str, Any]], params: SamplingParams | None = None
    ) -> Request:
        from ember.chat_template import chat_stop_token_ids, prepare_chat_prompt

        if self.tokenizer is None:
            raise ValueError("chat needs a tokenizer with a chat template; this model has none")
        ids = prepare_chat_prompt(self.tokenizer, messages, add_generation_prompt=True)
        params = params or SamplingParams(max_tokens=256)
        extra = [
            t for t in chat_stop_token_ids(self.tokenizer) if t not in (params.stop_token_ids or [])
        ]
        params = _with_stop_ids(params, list(params.stop_token_ids or []) + extra)
        return self.submit(ids, params)

    def abort(self, request_id: int) -> None:
        self._engine.abort(int(request_id))

    def stats(self) -> dict[str, Any]:
        return dict(self._engine.stats())

    @property
    def healthy(self) -> bool:
        return self._engine is not None and bool(self._engine.healthy)

    @property
    def fatal_error(self) -> str | None:
        """Why the engine stopped, or None while it is healthy."""
        if self._engine is None:
            return "the engine is closed"
        return None if self._engine.healthy else str(self._engine.fatal_error)

    def close(self) -> None:
        """Stops the engine threads and frees the model's memory."""
        self._engine = None

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- helpers ----
    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError(
                "this model was loaded without a tokenizer; pass token ids instead of text"
            )
        return self.tokenizer.encode(text)

    def _prompt_ids(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.encode(prompt)
        ids = list(prompt)
        for i, t in enumerate(ids):
            if isinstance(t, bool) or not isinstance(t, int):
                raise ValueError(f"prompt token at position {i} is {t!r}, expected an int token id")
        return None, ids


def _with_stop_ids(params: SamplingParams, stop_ids: list[int]) -> SamplingParams:
    import dataclasses

    return dataclasses.replace(params, stop_token_ids=stop_ids)


def _as_prompt_list(prompts: PromptType | Sequence[PromptType]) -> list[PromptType]:
    if isinstance(prompts, str):
        return [prompts]
    seq = list(prompts)
    if seq and all(isinstance(x, int) and not isinstance(x, bool) for x in seq):
        return [seq]  # one prompt of token ids
    return seq


def _device_list(devices: Sequence[str | int] | str | int) -> list[str]:
    if isinstance(devices, int | str):
        devices = [devices]
    out: list[str] = []
    for d in devices:
        if isinstance(d, bool):
            raise ValueError(f"devices: {d!r} is not a device")
        out.append(str(d))
    if not out:
        raise ValueError("devices: at least one device is needed")
    return out


def _non_negative(name: str, value: int | None) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _load_tokenizer(path: str, override: str | os.PathLike[str] | None) -> Tokenizer | None:
    src = os.fspath(override) if override is not None else path
    if src.endswith(".gguf") and os.path.isfile(src):
        from ember.gguf_tokenizer import tokenizer_from_gguf_metadata

        return tokenizer_from_gguf_metadata(_C.gguf_metadata(src), src)
    if os.path.isdir(src):
        return Tokenizer.from_dir(src)
    return None
