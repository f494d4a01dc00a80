# The timing figures users read off RequestMetrics, including the cases where they are undefined.
from __future__ import annotations

import pytest
from ember.outputs import CompletionOutput, RequestMetrics, RequestOutput, StreamEvent


def test_metrics_rates() -> None:
    m = RequestMetrics(
        arrival_time=10.0,
        first_token_time=10.5,
        finish_time=12.5,
        num_prompt_tokens=7,
        num_generated_tokens=9,
    )
    assert m.time_to_first_token == pytest.approx(0.5)
    assert m.decode_tokens_per_s == pytest.approx(8 / 2.0)


@pytest.mark.parametrize(
    ("first", "finish", "generated"),
    [(None, None, 0), (10.5, None, 3), (10.5, 10.5, 3), (10.5, 11.0, 1)],
)
def test_metrics_undefined_rate_is_zero(
    first: float | None, finish: float | None, generated: int
) -> None:
    m = RequestMetrics(10.0, first, finish, 4, generated)
    assert m.decode_tokens_per_s == 0.0
    assert (m.time_to_first_token is None) == (first is None)


def test_request_output_holds_its_parts() -> None:
    completion = CompletionOutput(0, "hi", [5, 6], "length", logprobs=[{5: -0.1}, {6: -0.2}])
    out = RequestOutput("req-1", "p", [1, 2], [completion], True, RequestMetrics(0.0))
    assert out.outputs[0].logits is None
    assert out.outputs[0].finish_reason == "length"
    ev = StreamEvent("req-1", 6, "i", "length", -0.2)
    assert (ev.token_id, ev.text, ev.finish_reason) == (6, "i", "length")
