# Turns a stream of generated token ids into text deltas. Byte-level tokenizers can split one
# character over several tokens, so a delta is only released once its characters are complete.
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

_REPLACEMENT = "\ufffd"
# A UTF-8 character has at most 4 bytes and a token carries at least one, so at most 3 trailing
# tokens can hold an unfinished character; more than this many unsettled tokens means the ids
# really are invalid UTF-8 and the text before the last 3 tokens can be released.
_MAX_PENDING = 4
_CONTEXT_TOKENS = 4  # tokens kept in front of the window when it slides (leading-space rules)
_MAX_WINDOW = 16  # window length that triggers a slide


class _Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    @property
    def special_token_ids(self) -> frozenset[int]: ...


class IncrementalDetokenizer:
    """Decodes one request's output tokens a token at a time, never splitting a character.

    By default the deltas concatenate to `tokenizer.decode(output_ids)`. With in_context=True
    the last prompt tokens are decoded in front of the output, so the deltas are the text that
    continues the prompt (a SentencePiece "▁word" first token then keeps its leading space).
    Each push decodes a bounded window of recent tokens, not the whole sequence.
    """

    def __init__(
        self,
        tokenizer: _Decoder,
        prompt_ids: Sequence[int] | None = None,
        skip_special_tokens: bool = True,
        *,
        in_context: bool = False,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._skipped_ids: frozenset[int] = (
            tokenizer.special_token_ids if skip_special_tokens else frozenset()
        )
        context: list[int] = []
        if in_context and prompt_ids:
            context = [int(i) for i in prompt_ids if i not in self._skipped_ids][-_CONTEXT_TOKENS:]
        # The decode window: a few tokens of context, then the output tokens not yet slid out.
        self._ids: list[int] = context
        self._num_output = 0
        self._settled = len(context)  # tokens whose text is final and fully released
        # Characters of decode(window) already released (the context counts as released; an
        # unfinished character at its end is left for the output to complete).
        self._emitted = len(self._decode(0).rstrip(_REPLACEMENT)) if context else 0

    @property
    def num_tokens(self) -> int:
        """Output tokens pushed so far."""
        return self._num_output

    def push(self, token_id: int) -> str:
        """Adds one generated token; returns the newly completed text (possibly empty)."""
        self._num_output += 1
        if token_id in self._skipped_ids:
            return ""  # renders as nothing; keeping it out of the window keeps the window short
        self._ids.append(int(token_id))
        text = self._decode(0)
        if not text.endswith(_REPLACEMENT):
            delta = text[self._emitted :]
            self._emitted = len(text)
            self._settled = len(self._ids)
            self._maybe_slide()
            return delta
        if len(self._ids) - self._settled <= _MAX_PENDING:
            return ""  # probably a character cut between tokens: wait for its other bytes
        return self._release_invalid(text)

    def flush(self) -> str:
        """At the end of the request: releases whatever was held back, as decoded."""
        text = self._decode(0)
        delta = text[self._emitted :]
        self._emitted = len(text)
        self._settled = len(self._ids)
        return delta

    def _decode(self, start: int, end: int | None = None) -> str:
        return self._tokenizer.decode(self._ids[start:end], skip_special_tokens=self._skip_special)

    def _maybe_slide(self) -> None:
        """Keeps the window short once everything in it has been released."""
        if len(self._ids) <= _MAX_WINDOW:
            return
        # Keep a few tokens as context: decoders such as SentencePiece's treat the first token of
        # a sequence specially (no leading space), and skipped special tokens never enter.
        new_start = len(self._ids) - _CONTEXT_TOKENS
        del self._ids[:new_start]
        self._settled -= new_start
        self._emitted = len(self._decode(0))

    def _release_invalid(self, text: str) -> str:
        """Too many tokens end in U+FFFD: release what the last 3 tokens can no longer change."""
        cut = len(self._ids) - (_MAX_PENDING - 1)
        head = self._decode(0, cut)
        fixed = len(os.path.commonprefix([head, text]))
        delta = text[self._emitted : fixed] if fixed > self._emitted else ""
        self._emitted = max(self._emitted, fixed)
        if fixed == len(head) and head + self._decode(cut) == text:
            # The head is final and decodes on its own: restart the window at the cut.
            del self._ids[:cut]
            self._emitted = max(0, self._emitted - len(head))
            self._settled = 0
        return delta
