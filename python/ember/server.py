# `ember serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over one LLM. Each request's
# engine events are read on worker threads and handed to the event loop, so HTTP never blocks.
"""OpenAI-compatible server.

Endpoints: POST /v1/completions, POST /v1/chat/completions (both with `stream`), GET /v1/models,
GET /v1/models/{id}, GET /health (503 loading, 200 ready, 500 engine failed), GET /metrics.

Choices made where OpenAI leaves room:
- an unknown `model` answers 404 with code "model_not_found", as OpenAI does; a missing
  `model` means the served one;
- more sequences than `max_num_seqs` running plus `max_waiting` queued answer 503 with code
  "server_overloaded" and a Retry-After header; `n` x prompts is at most 8 per request;
- `max_tokens` defaults to the rest of the context; prompt + max_tokens beyond the context is a
  400 with code "context_length_exceeded";
- with `--api-key`, every endpoint but /health needs `Authorization: Bearer KEY` (else 401).
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ember.server_generation import RETRY_AFTER_S, Choice, EngineHolder, Generation
from ember.server_metrics import ServerMetrics
from ember.server_protocol import (
    ApiError,
    ChatRequest,
    CommonRequest,
    CompletionRequest,
    bad_request,
    param_of_value_error,
    parse_chat,
    parse_completion,
    parse_json_body,
)

DEFAULT_MAX_WAITING = 256
SEED_MODULUS = 2**64


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


@dataclass
class ServerContext:
    """Everything the handlers share; one per app (no module-level state)."""

    holder: EngineHolder
    model_name: str
    model_aliases: frozenset[str]
    api_key: str | None
    max_num_seqs: int
    max_waiting: int
    metrics: ServerMetrics
    readers: ThreadPoolExecutor
    created: int

    @property
    def capacity(self) -> int:
        return self.max_num_seqs + self.max_waiting

    # ---- admission ----------------------------------------------------------------------

    def admit(self, sequences: int) -> None:
        if self.metrics.in_flight + sequences > self.capacity:
            self.metrics.count_rejected(503)
            raise ApiError(
                503,
                f"The server is at capacity: {self.metrics.in_flight} sequences running or "
                f"queued (max_num_seqs={self.max_num_seqs} + max_waiting={self.max_waiting}); "
                f"this request needs {sequences}. Retry later.",
                type_="server_error", code="server_overloaded",
                headers={"Retry-After": str(RETRY_AFTER_S)})
        self.metrics.in_flight += sequences

    def check_model(self, model: str | None) -> None:
        if model is not None and model not in self.model_aliases:
            raise ApiError(404, f"The model `{model}` does not exist; this server serves "
                           f"`{self.model_name}`.", param="model", code="model_not_found")

    # ---- building engine requests -------------------------------------------------------

    def make_params(self, llm: Any, common: CommonRequest, prompt_len: int, seed_offset: int,
                    *, logprobs: int | None, extra_stop_ids: Iterable[int], where: str) -> Any:
        from ember import SamplingParams

        ctx = int(llm.max_model_len)
        completion = common.max_tokens if common.max_tokens is not None \
            else max(1, ctx - prompt_len)
        if prompt_len + completion > ctx:
            raise bad_request(
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{prompt_len + completion} tokens ({prompt_len} in the {where}, {completion} "
                f"in the completion). Please reduce the length of the {where} or completion.",
                param="messages" if where == "messages" else "prompt",
                code="context_length_exceeded")
        kwargs = dict(common.sampling)
        if kwargs.get("seed") is not None and seed_offset:
            if isinstance(kwargs["seed"], int) and not isinstance(kwargs["seed"], bool):
                kwargs["seed"] = (kwargs["seed"] + seed_offset) % SEED_MODULUS
        extra = list(extra_stop_ids)
        if extra:
            kwargs["stop_token_ids"] = list(kwargs.get("stop_token_ids") or []) + extra
        try:
            return SamplingParams(max_tokens=completion, logprobs=logprobs, **kwargs)
        except ValueError as exc:
            raise bad_request(str(exc), param=param_of_value_error(str(exc))) from exc

    def submit(self, llm: Any, choices: list[Choice], params: list[Any]) -> None:
        for choice, p in zip(choices, params, strict=True):
            try:
                choice.req = llm.submit(choice.prompt_ids, p)
            except ValueError as exc:
                raise bad_request(str(exc), param=param_of_value_error(str(exc))) from exc


def _encode(llm: Any, text: str) -> list[int]:
    tokenizer = llm.tokenizer
    if tokenizer is None:
        raise bad_request("This model was loaded without a tokenizer; send token ids",
                          param="prompt")
    return list(tokenizer.encode(text))


def _decode_token(llm: Any, token_id: int) -> str:
    tokenizer = llm.tokenizer
    if tokenizer is None:
        return f"token_id:{token_id}"
    return str(tokenizer.decode([token_id]))


def _usage(prompt_tokens: int, choices: list[Choice]) -> dict[str, int]:
    completion = sum(len(c.token_ids) for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}


def _sse(payload: dict[str, Any] | str) -> str:
    if isinstance(payload, str):
        return f"data: {payload}\n\n"
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


async def _drain(gen: Any, choices: list[Any]) -> None:
    """Runs a non-streamed request to its end; an engine failure becomes an HTTP error."""
    try:
        async for _ in gen.events():
            pass
    finally:
        gen.close()
    for c in choices:
        if c.finish_reason == "error":
            raise _engine_error(c)


def _engine_error(choice: Choice) -> ApiError:
    return ApiError(500, f"The engine failed on this request: {choice.error or 'unknown error'}",
                    type_="server_error", code="engine_error")


class _Handlers:
    """Route bodies; the app wires them to paths."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    # ---- start a generation -------------------------------------------------------------

    async def _start(self, request: Request, llm: Any, choices: list[Choice],
                     build_params: Callable[[Choice], Any], arrival: float) -> Generation:
        ctx = self.ctx
        ctx.admit(len(choices))
        gen = Generation(ctx, choices, arrival)
        try:
            params = [build_params(c) for c in choices]
            ctx.submit(llm, choices, params)
        except BaseException:
            gen.close()
            raise
        seen: set[int] = set()
        for c in choices:
            if id(c.prompt_ids) not in seen:
                seen.add(id(c.prompt_ids))
                ctx.metrics.prompt_tokens += len(c.prompt_ids)
        gen.start(request)
        return gen

    # ---- completions --------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        arrival = time.monotonic()
        ctx = self.ctx
        llm = ctx.holder.require_ready()
        creq = parse_completion(parse_json_body(await request.body()))
        ctx.check_model(creq.model)
        encoded: list[tuple[list[int], str | None]] = []
        for prompt in creq.prompts:
            if isinstance(prompt, str):
                encoded.append((await asyncio.to_thread(_encode, llm, prompt), prompt))
            else:
                encoded.append((prompt, None))
        choices = [Choice(index=i * creq.n + j, prompt_ids=ids, prompt_text=text,
                          top_logprobs=creq.logprobs or 0)
                   for i, (ids, text) in enumerate(encoded) for j in range(creq.n)]

        def build(c: Choice) -> Any:
            return ctx.make_params(llm, creq, len(c.prompt_ids), c.index % creq.n,
                                   logprobs=creq.logprobs, extra_stop_ids=(), where="prompt")

        gen = await self._start(request, llm, choices, build, arrival)
        prompt_tokens = sum(len(ids) for ids, _ in encoded)
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if creq.stream:
            return StreamingResponse(self._stream_completion(gen, llm, creq, rid, created,
                                                             prompt_tokens),
                                     media_type="text/event-stream")
        await _drain(gen, choices)
        body = {
            "id": rid, "object": "text_completion", "created": created, "model": ctx.model_name,
            "choices": [{
                "index": c.index,
                "text": self._echo(llm, creq, c) + "".join(c.text),
                "logprobs": self._completion_logprobs(llm, c, 0) if creq.logprobs is not None
                else None,
                "finish_reason": c.finish_reason,
            } for c in choices],
            "usage": _usage(prompt_tokens, choices),
        }
        return JSONResponse(body)

    @staticmethod
    def _echo(llm: Any, creq: CompletionRequest, c: Choice) -> str:
        if not creq.echo:
            return ""
        if c.prompt_text is not None:
            return c.prompt_text
        return str(llm.tokenizer.decode(c.prompt_ids)) if llm.tokenizer is not None else ""

    @staticmethod
    def _completion_logprobs(llm: Any, c: Choice, start: int,
                             text_offset: int = 0) -> dict[str, Any]:
        tokens: list[str] = []
        token_logprobs: list[float | None] = []
        top: list[dict[str, float]] = []
        offsets: list[int] = []
        offset = text_offset
        for token_id, logprob, top_list in c.logprobs[start:]:
            piece = _decode_token(llm, token_id)
            tokens.append(piece)
            token_logprobs.append(logprob)
            top.append({_decode_token(llm, t): float(lp) for t, lp in top_list})
            offsets.append(offset)
            offset += len(piece)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top,
                "text_offset": offsets}

    async def _stream_completion(self, gen: Generation, llm: Any, creq: CompletionRequest,
                                 rid: str, created: int, prompt_tokens: int) -> AsyncIterator[str]:
        def head() -> list[dict[str, Any]]:
            if not creq.echo:
                return []
            return [{"index": c.index, "text": self._echo(llm, creq, c), "logprobs": None,
                     "finish_reason": None} for c in gen.choices]

        offsets = {c.index: 0 for c in gen.choices}

        def choice(c: Any, ev: Any) -> dict[str, Any] | None:
            has_token = ev.token_id is not None and creq.logprobs is not None
            if not ev.text and ev.finish_reason is None and not has_token:
                return None
            logprobs = None
            if has_token:
                logprobs = self._completion_logprobs(llm, c, len(c.logprobs) - 1,
                                                     offsets[c.index])
            offsets[c.index] += len(ev.text or "")
            return {"index": c.index, "text": ev.text or "", "logprobs": logprobs,
                    "finish_reason": ev.finish_reason}

        async for line in self._sse_events(gen, rid, created, "text_completion",
                                           creq.include_usage, prompt_tokens, head, choice):
            yield line

    async def _sse_events(self, gen: Generation, rid: str, created: int, obj: str,
                          include_usage: bool, prompt_tokens: int,
                          head: Callable[[], list[dict[str, Any]]],
                          choice: Callable[[Any, Any], dict[str, Any] | None]
                          ) -> AsyncIterator[str]:
        """The stream both endpoints send: the `head()` choices first, then one chunk per engine
        event that `choice` turns into a choice (None skips it), usage when asked, and [DONE]; an
        engine error or an API error ends it early. The generation is closed however it ends."""
        model = self.ctx.model_name

        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            out: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": model,
                                   "choices": choices}
            if include_usage:
                out["usage"] = None
            return out

        try:
            for item in head():
                yield _sse(chunk([item]))
            async for c, ev in gen.events():
                if c.finish_reason == "error":
                    yield _sse(_engine_error(c).body())
                    break
                item = choice(c, ev)
                if item is not None:
                    yield _sse(chunk([item]))
            else:
                if include_usage:
                    final = chunk([])
                    final["usage"] = _usage(prompt_tokens, gen.choices)
                    yield _sse(final)
            yield _sse("[DONE]")
        except ApiError as exc:
            yield _sse(exc.body())
            yield _sse("[DONE]")
        finally:
            gen.close()

    # ---- chat ---------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        arrival = time.monotonic()
        ctx = self.ctx
        llm = ctx.holder.require_ready()
        creq = parse_chat(parse_json_body(await request.body()))
        ctx.check_model(creq.model)
        if llm.tokenizer is None:
            raise bad_request("This model was loaded without a tokenizer, so it has no chat "
                              "template; use /v1/completions with token ids", param="messages")
        from ember.chat_template import chat_stop_token_ids, prepare_chat_prompt

        def render() -> tuple[list[int], list[int]]:
            try:
                ids = list(prepare_chat_prompt(llm.tokenizer, creq.messages,
                                               add_generation_prompt=True))
            except ValueError as exc:
                raise bad_request(f"Could not apply the chat template: {exc}",
                                  param="messages") from exc
            return ids, list(chat_stop_token_ids(llm.tokenizer))

        prompt_ids, stop_ids = await asyncio.to_thread(render)
        choices = [Choice(index=j, prompt_ids=prompt_ids, prompt_text=None,
                          top_logprobs=creq.top_logprobs or 0)
                   for j in range(creq.n)]
        logprobs = (creq.top_logprobs or 0) if creq.logprobs else None

        def build(c: Choice) -> Any:
            return ctx.make_params(llm, creq, len(prompt_ids), c.index, logprobs=logprobs,
                                   extra_stop_ids=stop_ids, where="messages")

        gen = await self._start(request, llm, choices, build, arrival)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if creq.stream:
            return StreamingResponse(self._stream_chat(gen, llm, creq, rid, created,
                                                       len(prompt_ids)),
                                     media_type="text/event-stream")
        await _drain(gen, choices)
        body = {
            "id": rid, "object": "chat.completion", "created": created, "model": ctx.model_name,
            "choices": [{
                "index": c.index,
                "message": {"role": "assistant", "content": "".join(c.text)},
                "logprobs": self._chat_logprobs(llm, c, 0) if creq.logprobs else None,
                "finish_reason": c.finish_reason,
            } for c in choices],
            "usage": _usage(len(prompt_ids), choices),
        }
        return JSONResponse(body)

    @staticmethod
    def _chat_logprobs(llm: Any, c: Choice, start: int) -> dict[str, Any]:
        def entry(token_id: int, logprob: float | None) -> dict[str, Any]:
            piece = _decode_token(llm, token_id)
            return {"token": piece, "logprob": logprob, "bytes": list(piece.encode("utf-8"))}

        content = []
        for token_id, logprob, top_list in c.logprobs[start:]:
            item = entry(token_id, logprob)
            item["top_logprobs"] = [entry(t, float(lp)) for t, lp in top_list]
            content.append(item)
        return {"content": content}

    async def _stream_chat(self, gen: Generation, llm: Any, creq: ChatRequest, rid: str,
                           created: int, prompt_tokens: int) -> AsyncIterator[str]:
        def head() -> list[dict[str, Any]]:
            return [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                     "logprobs": None, "finish_reason": None} for c in gen.choices]

        def choice(c: Any, ev: Any) -> dict[str, Any] | None:
            has_token = ev.token_id is not None and creq.logprobs
            if not ev.text and ev.finish_reason is None and not has_token:
                return None
            delta = {"content": ev.text} if ev.text else {}
            logprobs = self._chat_logprobs(llm, c, len(c.logprobs) - 1) if has_token else None
            return {"index": c.index, "delta": delta, "logprobs": logprobs,
                    "finish_reason": ev.finish_reason}

        async for line in self._sse_events(gen, rid, created, "chat.completion.chunk",
                                           creq.include_usage, prompt_tokens, head, choice):
            yield line

    # ---- the rest -----------------------------------------------------------------------

    def model_card(self) -> dict[str, Any]:
        llm = self.ctx.holder.llm
        card: dict[str, Any] = {"id": self.ctx.model_name, "object": "model",
                                "created": self.ctx.created, "owned_by": "ember"}
        if llm is not None:
            card["max_model_len"] = int(llm.max_model_len)
        return card

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_card()]}

    async def model(self, model_id: str) -> dict[str, Any]:
        self.ctx.check_model(model_id)
        return self.model_card()

    async def health(self) -> Response:
        state, error = self.ctx.holder.state()
        if state == "ready":
            return JSONResponse({"status": "ok"})
        if state == "loading":
            return JSONResponse({"status": "loading"}, status_code=503,
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        return JSONResponse({"status": "error", "message": error}, status_code=500)

    async def metrics(self) -> Response:
        state, _ = self.ctx.holder.state()
        llm = self.ctx.holder.llm
        stats = llm.stats() if state == "ready" and llm is not None else None
        return PlainTextResponse(self.ctx.metrics.render(stats, state),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")


def build_app(llm: Any | None, *, model_name: str, api_key: str | None = None,
              max_waiting: int = DEFAULT_MAX_WAITING, max_num_seqs: int | None = None,
              model_aliases: Iterable[str] = (),
              loader: Callable[[], Any] | None = None) -> FastAPI:
    """The ASGI app. `llm` serves at once; or pass llm=None and a `loader` that builds the LLM
    on a thread at start-up (/health says 503 meanwhile, 500 if it raises). The app closes an
    LLM it loaded itself when it shuts down."""
    if max_waiting < 0:
        raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
    seqs = max_num_seqs if max_num_seqs is not None else int(getattr(llm, "max_num_seqs", 256))
    if seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {seqs}")
    holder = EngineHolder(llm)
    ctx = ServerContext(
        holder=holder, model_name=model_name,
        model_aliases=frozenset({model_name, *model_aliases}), api_key=api_key,
        max_num_seqs=seqs, max_waiting=max_waiting, metrics=ServerMetrics(),
        readers=ThreadPoolExecutor(max_workers=min(1024, seqs + max_waiting + 4),
                                   thread_name_prefix="ember-serve-reader"),
        created=int(time.time()))
    handlers = _Handlers(ctx)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if loader is not None and holder.llm is None:
            threading.Thread(target=_load, args=(loader, holder), name="ember-serve-loader",
                             daemon=True).start()
        try:
            yield
        finally:
            ctx.readers.shutdown(wait=False, cancel_futures=True)
            if loader is not None and holder.llm is not None:
                holder.llm.close()

    app = FastAPI(title="ember", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.ember = ctx

    async def authorize(request: Request) -> None:
        if ctx.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 ctx.api_key.encode()):
            ctx.metrics.count_rejected(401)
            raise ApiError(401, "Invalid or missing API key: send `Authorization: Bearer KEY`.",
                           code="invalid_api_key")

    auth = [Depends(authorize)]
    app.add_api_route("/v1/completions", handlers.completions, methods=["POST"],
                      dependencies=auth)
    app.add_api_route("/v1/chat/completions", handlers.chat, methods=["POST"],
                      dependencies=auth)
    app.add_api_route("/v1/models", handlers.models, methods=["GET"], dependencies=auth)
    app.add_api_route("/v1/models/{model_id:path}", handlers.model, methods=["GET"],
                      dependencies=auth)
    app.add_api_route("/metrics", handlers.metrics, methods=["GET"], dependencies=auth)
    app.add_api_route("/health", handlers.health, methods=["GET"])

    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, exc: ApiError) -> JSONResponse:
        if exc.status in (400, 404):
            ctx.metrics.count_rejected(exc.status)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = ApiError(exc.status_code, str(exc.detail), code=None).body()
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def on_error(_: Request, exc: Exception) -> JSONResponse:
        body = ApiError(500, f"Internal server error: {type(exc).__name__}: {exc}",
                        type_="server_error").body()
        return JSONResponse(body, status_code=500)

    return app


def _load(loader: Callable[[], Any], holder: EngineHolder) -> None:
    started = time.monotonic()
    try:
        llm = loader()
    except Exception as exc:  # noqa: BLE001 - reported by /health and on stderr
        holder.fail(f"{type(exc).__name__}: {exc}")
        print(f"ember serve: loading the model failed: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
        return
    holder.attach(llm)
    print(f"ember serve: model ready in {time.monotonic() - started:.1f} s", file=sys.stderr,
          flush=True)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ember serve",
                                description="Serve a model over an OpenAI-compatible HTTP API.")
    p.add_argument("model", nargs="?", default=None,
                   help="HF model directory or .gguf file (default: ember's default model)")
    p.add_argument("--devices", nargs="+", default=["cpu"],
                   help="one pipeline stage per entry, e.g. `cpu` or `cuda:0 cuda:1` or `0,1`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None,
                   help="the `model` clients send (default: the model's folder or file name)")
    p.add_argument("--api-key", default=os.environ.get("EMBER_API_KEY"),
                   help="require `Authorization: Bearer KEY` (default: $EMBER_API_KEY)")
    p.add_argument("--max-num-seqs", type=int, default=256, help="sequences running at once")
    p.add_argument("--max-waiting", type=int, default=DEFAULT_MAX_WAITING,
                   help="sequences queued beyond those running before answering 503")
    p.add_argument("--ctx", "--max-model-len", dest="ctx", type=int, default=None,
                   help="context length (default: the model's, capped by the engine)")
    p.add_argument("--kv-cache-tokens", type=int, default=None)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--layer-split", default=None, help="layers per stage, e.g. 12,12")
    p.add_argument("--transport", default="auto", choices=["auto", "peer", "host"])
    p.add_argument("--num-threads", type=int, default=0, help="CPU threads per stage; 0 = all")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    return p


def _split_devices(values: list[str]) -> list[str]:
    return [d.strip() for v in values for d in v.split(",") if d.strip()]


def main(argv: list[str] | None = None) -> None:
    """`ember serve` / `python -m ember.server`."""
    args = build_arg_parser().parse_args(argv)
    import uvicorn

    from ember import LLM

    def load() -> Any:
        return LLM(args.model, devices=_split_devices(args.devices), max_model_len=args.ctx,
                   kv_cache_tokens=args.kv_cache_tokens, max_num_seqs=args.max_num_seqs,
                   max_num_batched_tokens=args.max_num_batched_tokens,
                   chunk_size=args.chunk_size, block_size=args.block_size,
                   layer_split=[int(x) for x in args.layer_split.split(",")]
                   if args.layer_split else None,
                   transport=args.transport, num_threads=args.num_threads)

    aliases: list[str] = []
    if args.model is not None:
        path = os.path.normpath(args.model)
        aliases = [args.model, path]
        default_name = os.path.basename(path)
    else:
        default_name = "default"
    app = build_app(None, model_name=args.served_model_name or default_name,
                    api_key=args.api_key or None, max_waiting=args.max_waiting,
                    max_num_seqs=args.max_num_seqs, model_aliases=aliases, loader=load)
    print(f"ember serve: loading {args.model or 'the default model'} on "
          f"{','.join(_split_devices(args.devices))}; listening on "
          f"http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
