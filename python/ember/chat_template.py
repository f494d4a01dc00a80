# Chat models expect their conversation written in the exact format they were trained on; the
# model ships that format as a Jinja template, rendered here in a sandbox the way transformers does.
"""Render a model's chat template and turn a conversation into prompt token ids."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import jinja2
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

if TYPE_CHECKING:
    from ember.tokenizer import Tokenizer

# Token strings that end an assistant turn in common chat formats (ChatML, Llama 3, Gemma,
# Phi-3, ...). Only those present in a model's vocabulary are used.
END_OF_TURN_TOKENS: tuple[str, ...] = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|return|>",
)


class _TemplateRaised(Exception):
    """The template called raise_exception(): the conversation is not one it accepts."""


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRaised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters, which would change what the model sees.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[loopcontrols],
        undefined=jinja2.Undefined,
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def compile_template(template: str) -> jinja2.Template:
    """The compiled template; ValueError with the line number when it does not parse."""
    if not isinstance(template, str):
        raise ValueError(f"chat template must be a string, got {type(template).__name__}")
    try:
        return _environment().from_string(template)
    except TemplateSyntaxError as exc:
        raise ValueError(
            f"chat template has a syntax error at line {exc.lineno}: {exc.message}"
        ) from exc
    except TemplateError as exc:
        raise ValueError(f"chat template could not be compiled: {exc}") from exc


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Checks the conversation shape and returns plain dict copies of the messages."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(
            "messages must be a list of {'role': str, 'content': str} dicts, "
            f"got {type(messages).__name__}"
        )
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{i}] must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}]['role'] must be a non-empty string, got {role!r}")
        if "content" not in message:
            raise ValueError(f"messages[{i}] has no 'content'")
        content = message["content"]
        if not isinstance(content, str):
            raise ValueError(
                f"messages[{i}]['content'] must be a string, got {type(content).__name__}"
            )
        out.append(dict(message))
    return out


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """The prompt text `template` makes of `messages`.

    `extra` is passed to the template as further variables (e.g. `tools`, `date_string`).
    Raises ValueError when the template does not parse, rejects the conversation
    (raise_exception), fails while rendering, or when the messages are malformed.
    """
    checked = validate_messages(messages)
    compiled = compile_template(template)
    try:
        return compiled.render(
            messages=checked,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except _TemplateRaised as exc:
        raise ValueError(f"chat template rejected the conversation: {exc}") from exc
    except SecurityError as exc:
        raise ValueError(f"chat template tried an unsafe operation: {exc}") from exc
    except TemplateError as exc:
        raise ValueError(f"chat template failed while rendering: {exc}") from exc
    except (TypeError, KeyError, IndexError, AttributeError, ValueError) as exc:
        raise ValueError(
            f"chat template failed while rendering: {type(exc).__name__}: {exc}"
        ) from exc


def _token_text(tokenizer: Tokenizer, token_id: int | None) -> str:
    if token_id is None:
        return ""
    text = tokenizer.id_to_token(token_id)
    return text or ""


def end_of_turn_token_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids that end an assistant turn: the EOS ids, then known end-of-turn tokens present."""
    ids = list(tokenizer.eos_token_ids)
    for text in END_OF_TURN_TOKENS:
        token_id = tokenizer.token_to_id(text)
        if token_id is not None:
            ids.append(token_id)
    return list(dict.fromkeys(ids))


def chat_stop_token_ids(tokenizer: Tokenizer) -> list[int]:
    """What LLM.chat adds to SamplingParams.stop_token_ids."""
    return end_of_turn_token_ids(tokenizer)


def render_chat_for(
    tokenizer: Tokenizer,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """The prompt text for `messages` under the tokenizer's own chat template."""
    template = tokenizer.chat_template
    if template is None:
        raise ValueError(
            "this model has no chat template (none in tokenizer_config.json, "
            "chat_template.jinja or the GGUF metadata); use generate() with a plain prompt"
        )
    eos_ids = tokenizer.eos_token_ids
    return render_chat(
        template,
        messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=_token_text(tokenizer, tokenizer.bos_token_id),
        eos_token=_token_text(tokenizer, eos_ids[0] if eos_ids else None),
        **extra,
    )


def prepare_chat_prompt(
    tokenizer: Tokenizer,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
) -> list[int]:
    """Prompt token ids for `messages`: the rendered template, encoded without adding BOS
    (templates write BOS themselves where the model wants it)."""
    text = render_chat_for(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    return list(tokenizer.encode(text, add_special_tokens=False))
