"""Ember: an LLM inference engine for your own GPUs.

The Python package is a thin layer: tokenization, detokenization and stop strings here; paging,
scheduling, the pipeline stages and every op in the C++ module ``ember._C``.
"""

from ember._C import EngineError, ModelFormatError
from ember.llm import LLM, Request
from ember.outputs import CompletionOutput, RequestMetrics, RequestOutput, StreamEvent
from ember.sampling_params import SamplingParams

__all__ = [
    "LLM",
    "CompletionOutput",
    "EngineError",
    "ModelFormatError",
    "Request",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "StreamEvent",
]
__version__ = "0.1.0"
