# The engine side of one HTTP request for `ember serve`: its sequences, the worker-thread reads of
# their events into an asyncio queue, latency metrics, and abort on close (disconnect or error).
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from ember.server_protocol import ApiError

if TYPE_CHECKING:
    from ember.server import ServerContext

POLL_S = 0.1  # how long a reader thread waits for an event before checking engine health
MAX_BATCH_EVENTS = 64  # events taken in one thread hop when a client has fallen behind
YIELD_EVERY = 8  # events handled back to back before giving other tasks a turn
RETRY_AFTER_S = 1


# --------------------------------------------------------------------------------------------
# Engine holder: loading -> ready | failed
# --------------------------------------------------------------------------------------------


class EngineHolder:
    """The LLM once it is loaded, or why it is not; what /health reports."""

    def __init__(self, llm: Any | None) -> None:
        self._lock = threading.Lock()  # the loader thread sets, the event loop reads
        self._llm = llm
        self._error: str | None = None

    def attach(self, llm: Any) -> None:
        with self._lock:
            self._llm = llm

    def fail(self, message: str) -> None:
        with self._lock:
            self._error = message

    @property
    def llm(self) -> Any | None:
        with self._lock:
            return self._llm

    def state(self) -> tuple[str, str | None]:
        """("loading" | "ready" | "failed", error message)."""
        with self._lock:
            llm, error = self._llm, self._error
        if error is not None:
            return "failed", error
        if llm is None:
            return "loading", None
        dead = engine_failure(llm)
        if dead is not None:
            return "failed", dead
        return "ready", None

    def require_ready(self) -> Any:
        state, error = self.state()
        if state == "loading":
            raise ApiError(503, "The model is still loading; retry shortly.", type_="server_error",
                           code="model_loading", headers={"Retry-After": str(RETRY_AFTER_S)})
        if state == "failed":
            raise ApiError(500, f"The engine is not running: {error}", type_="server_error",
                           code="engine_failed")
        return self.llm


def engine_failure(llm: Any) -> str | None:
    """Why the engine has died, or None while it is healthy."""
    healthy = getattr(llm, "healthy", None)
    if callable(healthy):
        healthy = healthy()
    if healthy is False:
        reason = getattr(llm, "fatal_error", None)
        reason = reason() if callable(reason) else reason
        return str(reason or "the engine thread stopped")
    return None


# --------------------------------------------------------------------------------------------
# One HTTP request's sequences and their events
# --------------------------------------------------------------------------------------------


@dataclass
class Choice:
    """One sequence of a request (index = prompt number x n + j)."""

    index: int
    prompt_ids: list[int]
    prompt_text: str | None
    req: Any = None
    token_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    logprobs: list[tuple[int, float | None, list[tuple[int, float]]]] = field(
        default_factory=list)
    top_logprobs: int = 0  # how many alternatives to report per token when logprobs are on
    finish_reason: str | None = None
    error: str | None = None
    last_token_time: float | None = None


Read = tuple[Any, float, dict[int, float] | None]  # event, arrival time, its logprob table
Queued = tuple["Choice", Any, float, dict[int, float] | None]


def _read_batch(req: Any, timeout: float) -> list[Read]:
    """Worker thread: wait for one event, then take those already queued, each timestamped.
    The request's per-token logprob table (sampled token + top k) is taken with its event."""
    out: list[Read] = []
    ev = req.next_event(timeout)
    while ev is not None:
        table = None
        if ev.token_id is not None and req.logprobs:
            table = req.logprobs[-1]
        out.append((ev, time.monotonic(), table))
        if ev.finish_reason is not None or len(out) >= MAX_BATCH_EVENTS:
            break
        ev = req.next_event(0.0)
    return out


class Generation:
    """The engine requests behind one HTTP request: pumps their events into one asyncio queue,
    keeps the metrics, and aborts what is unfinished on close (client gone, error, done)."""

    def __init__(self, server: ServerContext, choices: list[Choice], arrival: float) -> None:
        self._server = server
        self.choices = choices
        self._arrival = arrival
        # (choice, event, time, logprob table), a pump's exception, or None: closed, stop.
        self._queue: asyncio.Queue[Queued | BaseException | None] = \
            asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def start(self, request: Request) -> None:
        for choice in self.choices:
            self._tasks.append(asyncio.create_task(self._pump(choice)))
        self._tasks.append(asyncio.create_task(self._watch_disconnect(request)))

    async def _pump(self, choice: Choice) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = await loop.run_in_executor(self._server.readers, _read_batch,
                                                   choice.req, POLL_S)
                if not batch:
                    holder_state, error = self._server.holder.state()
                    if holder_state == "failed":
                        raise RuntimeError(f"engine failed: {error}")
                    continue
                for item in batch:
                    self._queue.put_nowait((choice, *item))
                if batch[-1][0].finish_reason is not None:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which answers 500
            self._queue.put_nowait(exc)

    async def _watch_disconnect(self, request: Request) -> None:
        # After the body is read, receive() returns only when the client goes away (or the
        # response is complete, when close() has already run and this is a no-op).
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                self.close()
                return

    async def events(self) -> AsyncIterator[tuple[Choice, Any]]:
        """Yields (choice, event) in arrival order until every choice has finished."""
        metrics = self._server.metrics
        remaining = sum(1 for c in self.choices if c.finish_reason is None)
        handled = 0
        while remaining:
            handled += 1
            if handled % YIELD_EVERY == 0:
                # A full queue never suspends get(), and a socket write rarely does: let the
                # disconnect watcher and other requests run between bursts.
                await asyncio.sleep(0)
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            choice, ev, t, table = item
            if choice.finish_reason is not None:
                continue  # closed already
            if ev.token_id is not None:
                metrics.generation_tokens += 1
                if choice.last_token_time is None:
                    metrics.ttft.observe(t - self._arrival)
                else:
                    metrics.itl.observe(t - choice.last_token_time)
                choice.last_token_time = t
                choice.token_ids.append(int(ev.token_id))
                top = sorted((table or {}).items(), key=lambda kv: -kv[1])
                choice.logprobs.append((int(ev.token_id), ev.logprob,
                                        top[:choice.top_logprobs]))
            if ev.text:
                choice.text.append(ev.text)
            if ev.finish_reason is not None:
                choice.finish_reason = str(ev.finish_reason)
                choice.error = getattr(choice.req, "error", None)
                self._finish(choice, t)
                remaining -= 1
            yield choice, ev

    def _finish(self, choice: Choice, t: float) -> None:
        metrics = self._server.metrics
        metrics.count_finished(choice.finish_reason or "abort")
        metrics.e2e.observe(t - self._arrival)
        metrics.in_flight -= 1

    def close(self) -> None:
        """Idempotent: aborts unfinished sequences (the engine frees their pages) and stops."""
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        now = time.monotonic()
        for choice in self.choices:
            if choice.finish_reason is None:
                choice.finish_reason = "abort"
                if choice.req is None:  # never reached the engine
                    self._server.metrics.in_flight -= 1
                    continue
                choice.req.abort()
                self._finish(choice, now)
        self._queue.put_nowait(None)
