# Per-request sampling parameters as users write them, checked once here so a bad value fails
# in Python with the parameter's name before anything reaches the C++ engine.
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

_MAX_LOGPROBS = 20
_SEED_LIMIT = 2**64
_TOKEN_ID_LIMIT = 2**31  # the engine stores token ids as int32


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_number(name: str, value: object) -> float:
    if not _is_number(value):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    as_float = float(value)  # type: ignore[arg-type]
    if math.isnan(as_float):
        raise ValueError(f"{name} must not be NaN")
    return as_float


def _require_int(name: str, value: object) -> int:
    if not _is_int(value):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    return value  # type: ignore[return-value]


@dataclass
class SamplingParams:
    """How to sample one request. Invalid values raise ValueError naming the parameter."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        temperature = _require_number("temperature", self.temperature)
        if temperature < 0.0 or math.isinf(temperature):
            raise ValueError(
                f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}"
            )
        top_p = _require_number("top_p", self.top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        top_k = _require_int("top_k", self.top_k)
        if top_k < -1:
            raise ValueError(f"top_k must be -1 (off), 0 (off) or a positive int, got {top_k}")
        min_p = _require_number("min_p", self.min_p)
        if not 0.0 <= min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        repetition_penalty = _require_number("repetition_penalty", self.repetition_penalty)
        if repetition_penalty <= 0.0 or math.isinf(repetition_penalty):
            raise ValueError(
                f"repetition_penalty must be a finite number > 0 (1 = off), "
                f"got {self.repetition_penalty}"
            )
        for name in ("presence_penalty", "frequency_penalty"):
            penalty = _require_number(name, getattr(self, name))
            if not -2.0 <= penalty <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        max_tokens = _require_int("max_tokens", self.max_tokens)
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        min_tokens = _require_int("min_tokens", self.min_tokens)
        if min_tokens < 0 or min_tokens > max_tokens:
            raise ValueError(
                f"min_tokens must be in [0, max_tokens={max_tokens}], got {min_tokens}"
            )
        if self.seed is not None:
            seed = _require_int("seed", self.seed)
            if not 0 <= seed < _SEED_LIMIT:
                raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        if self.logprobs is not None:
            logprobs = _require_int("logprobs", self.logprobs)
            if not 0 <= logprobs <= _MAX_LOGPROBS:
                raise ValueError(
                    f"logprobs must be None or in [0, {_MAX_LOGPROBS}], got {logprobs}"
                )
        for name in ("ignore_eos", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        self.stop = self._normalise_stop(self.stop)
        self.stop_token_ids = self._normalise_stop_ids(self.stop_token_ids)

    @staticmethod
    def _normalise_stop(stop: object) -> list[str]:
        if stop is None:
            return []
        items: list[object] = [stop] if isinstance(stop, str) else _as_list("stop", stop)
        for item in items:
            if not isinstance(item, str):
                raise ValueError(
                    f"stop must be a string or a list of strings, got an item {item!r}"
                )
            if item == "":
                raise ValueError("stop strings must be non-empty, got ''")
        return list(items)  # type: ignore[arg-type]

    @staticmethod
    def _normalise_stop_ids(stop_ids: object) -> list[int]:
        if stop_ids is None:
            return []
        items = _as_list("stop_token_ids", stop_ids)
        for item in items:
            if not _is_int(item):
                raise ValueError(f"stop_token_ids must be a list of ints, got an item {item!r}")
            if not 0 <= item < _TOKEN_ID_LIMIT:  # type: ignore[operator]
                raise ValueError(f"stop_token_ids entries must be in [0, 2**31), got {item}")
        return list(items)  # type: ignore[arg-type]

    @classmethod
    def greedy(cls, max_tokens: int = 16, **kwargs: Any) -> SamplingParams:
        """Deterministic argmax decoding."""
        return cls(max_tokens=max_tokens, temperature=0.0, **kwargs)

    @property
    def stop_strings(self) -> list[str]:
        """The stop strings as a list (after __post_init__, `stop` already is one)."""
        return list(self.stop or [])

    def to_engine_dict(self) -> dict[str, Any]:
        """The keys the C++ binding reads into ember::SamplingOptions."""
        return {
            "temperature": float(self.temperature),
            "top_k": int(self.top_k),
            "top_p": float(self.top_p),
            "min_p": float(self.min_p),
            "repetition_penalty": float(self.repetition_penalty),
            "presence_penalty": float(self.presence_penalty),
            "frequency_penalty": float(self.frequency_penalty),
            "has_seed": self.seed is not None,
            "seed": int(self.seed) if self.seed is not None else 0,
            "stop_token_ids": list(self.stop_token_ids or []),
            "ignore_eos": bool(self.ignore_eos),
            "max_tokens": int(self.max_tokens),
            "min_tokens": int(self.min_tokens),
            "logprobs": -1 if self.logprobs is None else int(self.logprobs),
        }


def _as_list(name: str, value: object) -> list[object]:
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"{name} must be a list, got {type(value).__name__} ({value!r})")
