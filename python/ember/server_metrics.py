# Prometheus text exposition for `ember serve`: the server's own counters and latency histograms
# plus the engine's pool and queue gauges, written by hand so the server needs no extra package.
from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)
ITL_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
    0.75, 1.0, 2.5,
)
E2E_BUCKETS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0,
)


@dataclass
class Histogram:
    """A cumulative-bucket histogram in the Prometheus sense (upper bounds, +Inf implied)."""

    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(self.bounds):
            raise ValueError(f"histogram bounds must be sorted, got {list(self.bounds)}")
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le = "<=").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            lines.append(f'{name}_bucket{{le="{_fmt(bound)}"}} {cumulative}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {_fmt(self.total)}")
        lines.append(f"{name}_count {self.count}")
        return lines


@dataclass
class ServerMetrics:
    """Counters the HTTP side keeps; only touched from the server's event loop thread."""

    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests_finished: dict[str, int] = field(default_factory=dict)  # by finish reason
    requests_rejected: dict[str, int] = field(default_factory=dict)  # by HTTP status
    in_flight: int = 0  # sequences admitted and not finished (running + queued)

    def count_finished(self, reason: str) -> None:
        self.requests_finished[reason] = self.requests_finished.get(reason, 0) + 1

    def count_rejected(self, status: int) -> None:
        key = str(status)
        self.requests_rejected[key] = self.requests_rejected.get(key, 0) + 1

    def render(self, stats: Mapping[str, int] | None, state: str) -> str:
        """The exposition text; `stats` is llm.stats() or None while no engine is loaded."""
        out: list[str] = []
        _gauge(out, "ember_server_ready", "1 when the engine is loaded and healthy.",
               1 if state == "ready" else 0)
        _gauge(out, "ember_server_requests_in_flight",
               "Sequences admitted by the HTTP server and not finished (running or queued).",
               self.in_flight)
        if stats is not None:
            _gauge(out, "ember_requests_running", "Sequences the engine is running.",
                   stats["running"])
            _gauge(out, "ember_requests_waiting", "Sequences waiting in the engine's queue.",
                   stats["waiting"])
            _gauge(out, "ember_kv_pages_total", "KV cache pages per stage.", stats["num_blocks"])
            _gauge(out, "ember_kv_pages_used", "KV cache pages in use.", stats["blocks_used"])
            _gauge(out, "ember_kv_pages_free", "KV cache pages free.", stats["blocks_free"])
            _gauge(out, "ember_kv_page_size_tokens", "Tokens per KV cache page.",
                   stats["block_size"])
            _counter(out, "ember_preemptions_total",
                     "Sequences preempted (pages freed, recomputed later).",
                     stats["preemptions"])
            _counter(out, "ember_engine_steps_total", "Engine scheduling steps.", stats["steps"])
            _counter(out, "ember_engine_prompt_tokens_total",
                     "Prompt tokens the engine computed, recomputation included.",
                     stats["prompt_tokens"])
            _counter(out, "ember_engine_generated_tokens_total",
                     "Tokens the engine generated.", stats["generated_tokens"])
        _counter(out, "ember_prompt_tokens_total",
                 "Prompt tokens of requests admitted by the server.", self.prompt_tokens)
        _counter(out, "ember_generation_tokens_total",
                 "Tokens streamed back to clients by the server.", self.generation_tokens)
        _labelled_counter(out, "ember_requests_finished_total",
                          "Sequences finished, by finish reason.", "finish_reason",
                          self.requests_finished)
        _labelled_counter(out, "ember_requests_rejected_total",
                          "Requests rejected before reaching the engine, by HTTP status.",
                          "status", self.requests_rejected)
        out += self.ttft.render("ember_time_to_first_token_seconds",
                                "Seconds from request arrival to its first token.")
        out += self.itl.render("ember_inter_token_latency_seconds",
                               "Seconds between consecutive tokens of one sequence.")
        out += self.e2e.render("ember_e2e_request_latency_seconds",
                               "Seconds from request arrival to its last token.")
        return "\n".join(out) + "\n"


def parse_exposition(text: str) -> dict[str, float]:
    """Sample name (with labels, as written) -> value; for tests and the load benchmark."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        values[name] = float(value)
    return values


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _gauge(out: list[str], name: str, help_text: str, value: float) -> None:
    out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]


def _counter(out: list[str], name: str, help_text: str, value: float) -> None:
    out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]


def _labelled_counter(out: list[str], name: str, help_text: str, label: str,
                      values: Mapping[str, int]) -> None:
    out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    for key in sorted(values):
        out.append(f'{name}{{{label}="{key}"}} {values[key]}')
