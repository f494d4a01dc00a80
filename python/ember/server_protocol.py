# The OpenAI wire format for `ember serve`: request bodies parsed and checked into dataclasses,
# and error bodies shaped as {"error": {message, type, param, code}}, so handlers stay small.
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_CHOICES = 8  # n x number of prompts in one request
MAX_TOP_LOGPROBS = 20

# Body fields passed straight to SamplingParams (which checks types and ranges and names the
# parameter in its ValueError). OpenAI's own plus the usual extensions of local servers.
SAMPLING_FIELDS = (
    "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "seed", "stop", "stop_token_ids", "ignore_eos", "min_tokens",
    "skip_special_tokens",
)


class ApiError(Exception):
    """An error answered as an OpenAI-style JSON body with an HTTP status."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def param_of_value_error(message: str) -> str | None:
    """The parameter a SamplingParams / engine ValueError names (they start with it)."""
    match = re.match(r"\s*([a-z_]+)", message)
    if match is None:
        return None
    word = match.group(1)
    if word in SAMPLING_FIELDS or word in ("max_tokens", "logprobs", "n"):
        return word
    if word == "stop" or message.startswith("stop strings"):
        return "stop"
    return None


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise bad_request(f"The request body must be a JSON object, got {type(body).__name__}")
    return body


@dataclass
class CommonRequest:
    """Fields shared by completions and chat completions."""

    model: str | None
    n: int
    stream: bool
    include_usage: bool
    max_tokens: int | None  # None: up to the context
    sampling: dict[str, Any] = field(default_factory=dict)  # SamplingParams keyword arguments


@dataclass
class CompletionRequest(CommonRequest):
    prompts: list[str | list[int]] = field(default_factory=list)
    logprobs: int | None = None
    echo: bool = False


@dataclass
class ChatRequest(CommonRequest):
    messages: list[dict[str, str]] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int | None = None


def parse_completion(body: dict[str, Any]) -> CompletionRequest:
    common = _parse_common(body, "max_tokens")
    prompts = _parse_prompts(body.get("prompt"))
    if len(prompts) * common.n > MAX_CHOICES:
        raise bad_request(f"n x number of prompts must be <= {MAX_CHOICES}, got "
                          f"{common.n} x {len(prompts)}", param="n")
    logprobs = _opt_int(body, "logprobs")
    if logprobs is not None and not 0 <= logprobs <= MAX_TOP_LOGPROBS:
        raise bad_request(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {logprobs}",
                          param="logprobs")
    echo = _opt_bool(body, "echo") or False
    if echo and logprobs is not None:
        raise bad_request("echo together with logprobs (prompt logprobs) is not supported",
                          param="echo")
    if body.get("suffix"):
        raise bad_request("suffix is not supported", param="suffix")
    _reject_unsupported(body)
    return CompletionRequest(**vars(common), prompts=prompts, logprobs=logprobs, echo=echo)


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    limit_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
        else "max_tokens"
    common = _parse_common(body, limit_field)
    if common.n > MAX_CHOICES:
        raise bad_request(f"n must be <= {MAX_CHOICES}, got {common.n}", param="n")
    messages = _parse_messages(body.get("messages"))
    logprobs = _opt_bool(body, "logprobs") or False
    top_logprobs = _opt_int(body, "top_logprobs")
    if top_logprobs is not None:
        if not logprobs:
            raise bad_request("top_logprobs requires logprobs to be true", param="top_logprobs")
        if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise bad_request(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got "
                              f"{top_logprobs}", param="top_logprobs")
    for name in ("tools", "functions"):
        if body.get(name):
            raise bad_request(f"{name} (function calling) is not supported", param=name)
    if body.get("tool_choice") not in (None, "none"):
        raise bad_request("tool_choice is not supported", param="tool_choice")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise bad_request("only response_format {\"type\": \"text\"} is supported",
                          param="response_format")
    _reject_unsupported(body)
    return ChatRequest(**vars(common), messages=messages, logprobs=logprobs,
                       top_logprobs=top_logprobs)


def _parse_common(body: dict[str, Any], limit_field: str) -> CommonRequest:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request(f"model must be a string, got {type(model).__name__}", param="model")
    n = _opt_int(body, "n")
    if n is None:
        n = 1
    if n < 1:
        raise bad_request(f"n must be >= 1, got {n}", param="n")
    stream = _opt_bool(body, "stream") or False
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise bad_request("stream_options must be an object", param="stream_options")
        if not stream:
            raise bad_request("stream_options is only allowed when stream is true",
                              param="stream_options")
        include_usage = _opt_bool(options, "include_usage", "stream_options.include_usage") \
            or False
    max_tokens = _opt_int(body, limit_field)
    if max_tokens is not None and max_tokens < 1:
        raise bad_request(f"{limit_field} must be >= 1, got {max_tokens}", param=limit_field)
    sampling = {name: body[name] for name in SAMPLING_FIELDS if body.get(name) is not None}
    return CommonRequest(model=model, n=n, stream=stream, include_usage=include_usage,
                         max_tokens=max_tokens, sampling=sampling)


def _reject_unsupported(body: dict[str, Any]) -> None:
    if body.get("logit_bias"):
        raise bad_request("logit_bias is not supported", param="logit_bias")
    best_of = body.get("best_of")
    if best_of is not None and best_of != body.get("n", 1):
        raise bad_request("best_of other than n is not supported", param="best_of")


def _parse_prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(_is_int(t) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            return [list(p) for p in prompt]
    raise bad_request("prompt must be a non-empty string, a list of strings, a list of token "
                      "ids or a list of lists of token ids", param="prompt")


def _parse_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list of {role, content} objects",
                          param="messages")
    parsed: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object", param=where)
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise bad_request(f"{where}.role must be one of system, developer, user, "
                              f"assistant; got {role!r}", param=f"{where}.role")
        parsed.append({"role": "system" if role == "developer" else role,
                       "content": _message_text(message.get("content"), f"{where}.content")})
    return parsed


def _message_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise bad_request(f"{where}[{i}] must be a text part {{type: text, text}}; "
                                  "other content types are not supported", param=where)
            parts.append(part["text"])
        return "".join(parts)
    raise bad_request(f"{where} must be a string or a list of text parts", param=where)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise bad_request(f"{name} must be an integer, got {value!r}", param=name)
    return int(value)


def _opt_bool(body: dict[str, Any], name: str, param: str | None = None) -> bool | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise bad_request(f"{param or name} must be a boolean, got {value!r}",
                          param=param or name)
    return value
