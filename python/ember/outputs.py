# What a finished or streaming request hands back to the user: plain dataclasses so results can
# be compared, printed and serialised without touching the engine.
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CompletionOutput:
    """One generated sequence of a request."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop", "length", "abort", "error"; None while running
    logprobs: list[dict[int, float]] | None = None  # per step: token id -> logprob
    logits: list[np.ndarray] | None = None  # per step raw logits, when return_logits=True


@dataclass
class RequestMetrics:
    """Wall-clock timestamps (time.monotonic seconds) and token counts of one request."""

    arrival_time: float
    first_token_time: float | None = None
    finish_time: float | None = None
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from arrival to the first generated token; None if none was generated."""
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first divided by the time they took; 0.0 when undefined."""
        if self.first_token_time is None or self.finish_time is None:
            return 0.0
        elapsed = self.finish_time - self.first_token_time
        after_first = self.num_generated_tokens - 1
        if elapsed <= 0.0 or after_first <= 0:
            return 0.0
        return after_first / elapsed


@dataclass
class RequestOutput:
    """The result of one request: its prompt, its completions and its timings."""

    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = field(default=None)


@dataclass
class StreamEvent:
    """One step of a streamed request; the last event carries the finish reason."""

    request_id: int
    token_id: int | None  # None for an event that only carries text (flush) or a finish
    text: str  # the new text since the previous event (may be empty)
    finish_reason: str | None = None
    logprob: float | None = None
