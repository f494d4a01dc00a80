# SamplingParams must reject every out-of-range value with the parameter's name, and hand the
# C++ binding exactly the keys it reads.
from __future__ import annotations

import math
from typing import Any

import pytest
from ember.sampling_params import SamplingParams

REJECTED: list[tuple[str, Any]] = [
    ("temperature", -0.1),
    ("temperature", math.nan),
    ("temperature", math.inf),
    ("temperature", "0.5"),
    ("temperature", True),
    ("top_p", 0.0),
    ("top_p", -0.5),
    ("top_p", 1.01),
    ("top_p", math.nan),
    ("top_k", -2),
    ("top_k", 2.0),
    ("min_p", -0.01),
    ("min_p", 1.5),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
    ("repetition_penalty", math.inf),
    ("presence_penalty", 2.5),
    ("presence_penalty", -2.01),
    ("frequency_penalty", 3.0),
    ("frequency_penalty", -3.0),
    ("max_tokens", 0),
    ("max_tokens", -5),
    ("max_tokens", 4.0),
    ("min_tokens", -1),
    ("min_tokens", 17),  # more than the default max_tokens=16
    ("seed", -1),
    ("seed", 2**64),
    ("seed", 1.5),
    ("seed", True),
    ("seed", "7"),
    ("logprobs", -1),
    ("logprobs", 21),
    ("logprobs", 2.0),
    ("stop", ""),
    ("stop", ["ok", ""]),
    ("stop", ["ok", 3]),
    ("stop", 5),
    ("stop_token_ids", [1, "2"]),
    ("stop_token_ids", [1.0]),
    ("stop_token_ids", [True]),
    ("stop_token_ids", [-1]),
    ("stop_token_ids", [2**31]),
    ("stop_token_ids", 7),
    ("ignore_eos", 1),
    ("skip_special_tokens", "yes"),
]


@pytest.mark.parametrize(("name", "value"), REJECTED)
def test_rejects_invalid_value_naming_the_parameter(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        SamplingParams(**{name: value})


def test_min_tokens_is_checked_against_max_tokens() -> None:
    SamplingParams(max_tokens=4, min_tokens=4)
    with pytest.raises(ValueError, match=r"min_tokens.*max_tokens=4"):
        SamplingParams(max_tokens=4, min_tokens=5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 0.0},
        {"temperature": 0},
        {"top_p": 1.0, "top_k": 0},
        {"top_k": -1},
        {"min_p": 1.0},
        {"presence_penalty": -2.0, "frequency_penalty": 2.0},
        {"seed": 0},
        {"seed": 2**64 - 1},
        {"logprobs": 0},
        {"logprobs": 20},
        {"max_tokens": 1},
    ],
)
def test_accepts_boundary_values(kwargs: dict[str, Any]) -> None:
    SamplingParams(**kwargs)


def test_error_message_states_the_accepted_range() -> None:
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 0.0"):
        SamplingParams(top_p=0.0)


def test_stop_is_normalised_to_a_list() -> None:
    assert SamplingParams().stop == []
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=["a", "b"]).stop == ["a", "b"]
    assert SamplingParams(stop=("a",)).stop == ["a"]  # type: ignore[arg-type]
    assert SamplingParams(stop_token_ids=None).stop_token_ids == []


def test_defaults_to_engine_dict() -> None:
    d = SamplingParams().to_engine_dict()
    assert d == {
        "temperature": 1.0,
        "top_k": -1,
        "top_p": 1.0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "has_seed": False,
        "seed": 0,
        "stop_token_ids": [],
        "ignore_eos": False,
        "max_tokens": 16,
        "min_tokens": 0,
        "logprobs": -1,
    }


def test_to_engine_dict_carries_every_value() -> None:
    params = SamplingParams(
        max_tokens=64,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        repetition_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        seed=2**63 + 5,
        stop=["\n\n"],
        stop_token_ids=[7, 9],
        ignore_eos=True,
        min_tokens=3,
        logprobs=5,
    )
    d = params.to_engine_dict()
    assert d["temperature"] == pytest.approx(0.7)
    assert d["top_p"] == pytest.approx(0.9)
    assert d["top_k"] == 40
    assert d["min_p"] == pytest.approx(0.05)
    assert d["repetition_penalty"] == pytest.approx(1.1)
    assert d["presence_penalty"] == 0.5
    assert d["frequency_penalty"] == -0.5
    assert d["has_seed"] is True
    assert d["seed"] == 2**63 + 5
    assert d["stop_token_ids"] == [7, 9]
    assert d["ignore_eos"] is True
    assert d["max_tokens"] == 64
    assert d["min_tokens"] == 3
    assert d["logprobs"] == 5
    assert "stop" not in d  # stop strings are matched in Python, not by the engine
    # The dict must not alias the params' own list.
    d["stop_token_ids"].append(1)
    assert params.stop_token_ids == [7, 9]


def test_greedy_sets_temperature_zero() -> None:
    params = SamplingParams.greedy(max_tokens=8, seed=3)
    assert params.temperature == 0.0
    assert params.max_tokens == 8
    assert params.to_engine_dict()["has_seed"] is True
