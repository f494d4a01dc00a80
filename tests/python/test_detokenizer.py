# Incremental detokenization must never release half a character, must add up to the full
# decode, and must decode a bounded window per token rather than the whole sequence.
from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from ember.detokenizer import IncrementalDetokenizer
from ember.tokenizer import Tokenizer
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

CORPUS = [
    "Hello wörld, naïve café — déjà vu.",
    "你好，世界！今天天气很好。我们去公园散步吧。",
    "Emoji time 😀🎉🚀👍🏽 and flags 🇫🇷🇯🇵 mixed with text.",
    "Ελληνικά κείμενα και русский текст, עברית, العربية.",
    "Numbers 12345 and symbols ∑∫√∞ ≠ ≤ ≥ ← → ✓.",
    "日本語のテキストも少し入れます。カタカナとひらがな。",
]

SAMPLES = [
    "héllo 你好 😀",
    "Привет мир 🎉🎉 世界",
    "naïve café 👍🏽 déjà",
    "∑∫√ 🇯🇵 テキスト",
    "plain ascii text only",
    "🚀" * 5 + "é" * 3 + "中文" * 4,
]


def _train(pre_tokenizer: object, decoder: object, vocab_size: int) -> HFTokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer  # type: ignore[assignment]
    tok.decoder = decoder  # type: ignore[assignment]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    return tok


@pytest.fixture(scope="module")
def byte_tok() -> Tokenizer:
    hf = _train(
        pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(), vocab_size=420
    )
    return Tokenizer.from_tokenizer_object(hf, eos_token_ids=[1], bos_token_id=0)


class CountingTokenizer:
    """Forwards to a Tokenizer and records the longest id list it was asked to decode."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner = inner
        self.longest = 0
        self.calls = 0

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        self.longest = max(self.longest, len(ids))
        self.calls += 1
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)

    @property
    def special_token_ids(self) -> frozenset[int]:
        return self.inner.special_token_ids


def stream(tok: Tokenizer | CountingTokenizer, ids: Sequence[int], skip: bool = True) -> list[str]:
    detok = IncrementalDetokenizer(tok, [], skip)
    deltas = [detok.push(i) for i in ids]
    deltas.append(detok.flush())
    return deltas


def test_tokenizer_really_splits_characters(byte_tok: Tokenizer) -> None:
    # The other tests are only meaningful if some tokens hold part of a character.
    ids = byte_tok.encode("🚀👍🏽🇫🇷∞", add_special_tokens=False)
    assert any("\ufffd" in byte_tok.decode([i]) for i in ids)


@pytest.mark.parametrize("text", SAMPLES)
def test_deltas_are_whole_characters_and_add_up(byte_tok: Tokenizer, text: str) -> None:
    ids = byte_tok.encode(text, add_special_tokens=False)
    deltas = stream(byte_tok, ids)
    assert all("\ufffd" not in d for d in deltas), deltas
    assert "".join(deltas) == byte_tok.decode(ids) == text


def test_held_back_until_the_character_completes(byte_tok: Tokenizer) -> None:
    ids = byte_tok.encode("a🚀", add_special_tokens=False)
    assert len(ids) >= 3  # "a" plus the emoji's 4 bytes over at least two tokens
    detok = IncrementalDetokenizer(byte_tok, [], True)
    deltas = [detok.push(i) for i in ids]
    assert deltas[0] == "a"
    assert all(d == "" for d in deltas[1:-1])
    assert deltas[-1] == "🚀"
    assert detok.flush() == ""


def test_random_unicode_sequences(byte_tok: Tokenizer) -> None:
    rng = random.Random(7)
    pool = "".join(CORPUS) + "🐍🦀🧪📦ñøå"
    for _ in range(200):
        text = "".join(rng.choices(pool, k=rng.randint(1, 60)))
        ids = byte_tok.encode(text, add_special_tokens=False)
        deltas = stream(byte_tok, ids)
        assert all("\ufffd" not in d for d in deltas), (text, deltas)
        assert "".join(deltas) == text


def test_slices_cut_inside_characters_still_add_up(byte_tok: Tokenizer) -> None:
    # A slice may start or end inside a character: those bytes are genuinely invalid and
    # decode to U+FFFD, but the deltas must still equal the full decode.
    rng = random.Random(11)
    ids = byte_tok.encode(" ".join(SAMPLES * 3), add_special_tokens=False)
    for _ in range(300):
        a = rng.randrange(len(ids))
        b = rng.randrange(a, len(ids) + 1)
        part = ids[a:b]
        deltas = stream(byte_tok, part)
        full = byte_tok.decode(part)
        assert "".join(deltas) == full, part
        if "\ufffd" not in full:
            assert all("\ufffd" not in d for d in deltas)


def test_arbitrary_ids_add_up_to_full_decode(byte_tok: Tokenizer) -> None:
    rng = random.Random(3)
    normal_ids = [i for i in range(byte_tok.vocab_size) if i not in byte_tok.special_token_ids]
    for _ in range(200):
        ids = rng.choices(normal_ids, k=rng.randint(1, 80))
        assert "".join(stream(byte_tok, ids)) == byte_tok.decode(ids), ids


def test_garbage_bytes_are_released_without_waiting_for_flush(byte_tok: Tokenizer) -> None:
    # Lone UTF-8 continuation bytes can never complete a character; they must not be held
    # until the end of the request.
    lone = byte_tok.encode("🚀", add_special_tokens=False)[-1]  # the emoji's last bytes
    assert byte_tok.decode([lone]).endswith("\ufffd")
    detok = IncrementalDetokenizer(byte_tok, [], True)
    released = "".join(detok.push(lone) for _ in range(12))
    assert released.count("\ufffd") >= 1
    released += detok.flush()
    assert released == byte_tok.decode([lone] * 12)


def test_long_sequence_uses_a_bounded_window(byte_tok: Tokenizer) -> None:
    text = " ".join(SAMPLES * 40)
    ids = byte_tok.encode(text, add_special_tokens=False)
    assert len(ids) > 1000
    counting = CountingTokenizer(byte_tok)
    assert "".join(stream(counting, ids)) == text
    assert counting.longest <= 24
    assert counting.calls <= 2 * len(ids) + 1


def test_special_tokens_skipped_or_kept(byte_tok: Tokenizer) -> None:
    im_end = byte_tok.token_to_id("<|im_end|>")
    assert im_end is not None
    ids = [*byte_tok.encode("你好", add_special_tokens=False), im_end]
    ids += byte_tok.encode(" 🎉ok", add_special_tokens=False)
    assert "".join(stream(byte_tok, ids, skip=True)) == "你好 🎉ok"
    assert "".join(stream(byte_tok, ids, skip=False)) == "你好<|im_end|> 🎉ok"


def test_many_special_tokens_keep_the_window_bounded(byte_tok: Tokenizer) -> None:
    counting = CountingTokenizer(byte_tok)
    im_end = byte_tok.token_to_id("<|im_end|>")
    assert im_end is not None
    ids = [im_end] * 100 + byte_tok.encode(" end", add_special_tokens=False)
    assert "".join(stream(counting, ids)) == " end"
    assert counting.longest <= 24
    # Kept specials render, so they take part in the window like any other token.
    assert "".join(stream(counting, ids, skip=False)) == "<|im_end|>" * 100 + " end"
    assert counting.longest <= 24


@pytest.fixture(scope="module")
def metaspace_tok() -> Tokenizer:
    hf = _train(pre_tokenizers.Metaspace(), decoders.Metaspace(), vocab_size=600)
    return Tokenizer.from_tokenizer_object(hf, eos_token_ids=[1], bos_token_id=0)


def test_metaspace_standalone_matches_decode(metaspace_tok: Tokenizer) -> None:
    ids = metaspace_tok.encode("Hello wörld café day", add_special_tokens=False)
    deltas = stream(metaspace_tok, ids)
    assert "".join(deltas) == metaspace_tok.decode(ids)
    assert not deltas[0].startswith(" ")


def test_metaspace_in_context_keeps_the_leading_space(metaspace_tok: Tokenizer) -> None:
    prompt = metaspace_tok.encode("Hello", add_special_tokens=False)
    output = metaspace_tok.encode(" wörld café", add_special_tokens=False)
    detok = IncrementalDetokenizer(metaspace_tok, prompt, True, in_context=True)
    text = "".join(detok.push(i) for i in output) + detok.flush()
    full = metaspace_tok.decode(prompt + output)
    assert full.startswith(metaspace_tok.decode(prompt))
    assert text == full[len(metaspace_tok.decode(prompt)) :]
    assert text.startswith(" ")
