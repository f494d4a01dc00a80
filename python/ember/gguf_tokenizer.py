# A GGUF file carries its tokenizer as metadata (tokens, merges, token types, a pre-tokenizer
# name) rather than as tokenizer.json; this rebuilds it as a Hugging Face `tokenizers` Tokenizer.
"""Build an ember Tokenizer from GGUF `tokenizer.*` metadata.

Two vocabulary kinds are supported, named by `tokenizer.ggml.model`:

- ``gpt2``: byte-level BPE (Llama 3, Qwen2/3, SmolLM, Mistral-Nemo, ...). Text is first cut into
  pieces by the regular expressions that `tokenizer.ggml.pre` names (the same splits llama.cpp
  uses for that name), then each piece is byte-level encoded and merged.
- ``llama``: SentencePiece-style BPE (Llama 2, Mistral 7B, ...): spaces become U+2581, a space is
  put in front of the text, pieces merge by score, and characters missing from the vocabulary
  fall back to their ``<0xNN>`` byte tokens.

Control (type 3) and user-defined (type 4) tokens are added so that they are matched whole in
the text; control tokens are special (dropped by ``skip_special_tokens``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE

if TYPE_CHECKING:
    from ember.tokenizer import Tokenizer

# llama.cpp's token types (llama_token_type in its public header)
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# ---- pre-tokenizer splits, by tokenizer.ggml.pre --------------------------------------------
# Each entry is a list of regular expressions applied one after the other: every piece the
# previous one produced is cut again, and the text between matches is kept as its own piece.

_CONTRACTIONS_CI = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    _CONTRACTIONS_CI + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    _CONTRACTIONS_CI + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_TEKKEN = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS_CI}?"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTIONS_CI}?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SEED_CODER = (
    _CONTRACTIONS_CI + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BAILING = (
    r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"
)
_DEEPSEEK3 = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
]
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"


@dataclass(frozen=True)
class PreTokenizerSpec:
    """How one `tokenizer.ggml.pre` name cuts text before BPE."""

    splits: list[str]
    ignore_merges: bool = False  # a piece that is itself a token is taken whole


_DIGITS_THEN_GPT2 = PreTokenizerSpec([r"\p{N}", _GPT2])
_LLAMA3_SPEC = PreTokenizerSpec([_LLAMA3], ignore_merges=True)

PRE_TOKENIZERS: Mapping[str, PreTokenizerSpec] = {
    "default": PreTokenizerSpec([r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]),
    **dict.fromkeys(
        ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"],
        _LLAMA3_SPEC,
    ),
    "dbrx": PreTokenizerSpec([_LLAMA3]),
    "smaug-bpe": PreTokenizerSpec([_LLAMA3]),
    "chatglm-bpe": PreTokenizerSpec([_LLAMA3]),
    "glm4": PreTokenizerSpec([_LLAMA3]),
    "falcon": PreTokenizerSpec([r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"]),
    **dict.fromkeys(
        ["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"],
        _DIGITS_THEN_GPT2,
    ),
    **dict.fromkeys(
        [
            "gpt2",
            "gpt-2",
            "phi-2",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
            "exaone4",
            "gigachat",
            "jina-es",
            "jina-de",
            "jina-v1-en",
            "jina-v2-es",
            "jina-v2-de",
            "jina-v2-code",
            "roberta-bpe",
        ],
        PreTokenizerSpec([_GPT2]),
    ),
    **dict.fromkeys(
        ["qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan", "kormo", "f2llmv2"],
        PreTokenizerSpec([_QWEN2]),
    ),
    "deepseek-coder": PreTokenizerSpec(
        [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"]
    ),
    "deepseek-v3": PreTokenizerSpec(_DEEPSEEK3),
    "hunyuan-dense": PreTokenizerSpec(_DEEPSEEK3),
    "tekken": PreTokenizerSpec([_TEKKEN], ignore_merges=True),
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "minimax-m2"], PreTokenizerSpec([_GPT4O])),
    "seed-coder": PreTokenizerSpec([_SEED_CODER]),
    "grok-2": PreTokenizerSpec([_QWEN2]),
    **dict.fromkeys(["bailingmoe", "bailingmoe2", "llada-moe"], PreTokenizerSpec([_BAILING])),
    **dict.fromkeys(["poro-chat", "bloom", "gpt3-finnish"], PreTokenizerSpec([_BLOOM])),
    "viking": PreTokenizerSpec([_BLOOM, r"\p{N}"]),
}

# ---- reading the metadata ---------------------------------------------------------------------


@dataclass
class GgufVocab:
    """The `tokenizer.*` facts of one GGUF file, checked and typed."""

    where: str
    model: str
    pre: str | None
    tokens: list[str]
    token_types: list[int]
    merges: list[str] | None
    scores: list[float] | None
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    eom_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool | None
    add_eos: bool | None
    add_space_prefix: bool
    chat_template: str | None


def _get(meta: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and kind is int:
        raise ValueError(f"{where}: GGUF metadata {key} must be an integer, got a bool")
    if not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join(k.__name__ for k in kinds)
        raise ValueError(
            f"{where}: GGUF metadata {key} has the wrong type: expected {expected}, "
            f"got {type(value).__name__}"
        )
    return value


def _str_list(meta: Mapping[str, Any], key: str, where: str) -> list[str] | None:
    value = _get(meta, key, (list, tuple), where)
    if value is None:
        return None
    out: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, bytes):
            item = item.decode("utf-8", errors="replace")
        if not isinstance(item, str):
            raise ValueError(f"{where}: GGUF metadata {key}[{i}] must be a string")
        out.append(item)
    return out


def _token_id(meta: Mapping[str, Any], key: str, n_tokens: int, where: str) -> int | None:
    value = _get(meta, key, int, where)
    if value is None:
        return None
    if not 0 <= value < n_tokens:
        # Some converters write -1 / 0xFFFFFFFF for "none".
        if value in (-1, 0xFFFFFFFF):
            return None
        raise ValueError(
            f"{where}: GGUF metadata {key} = {value} is outside the vocabulary (0..{n_tokens - 1})"
        )
    return value


def read_gguf_vocab(meta: Mapping[str, Any], where: str) -> GgufVocab:
    """The tokenizer facts of a GGUF metadata dict; ValueError naming `where` when malformed."""
    model = _get(meta, "tokenizer.ggml.model", str, where)
    if model is None:
        raise ValueError(f"{where}: GGUF metadata has no tokenizer.ggml.model, so no tokenizer")
    tokens = _str_list(meta, "tokenizer.ggml.tokens", where)
    if not tokens:
        raise ValueError(f"{where}: GGUF metadata tokenizer.ggml.tokens is missing or empty")
    n = len(tokens)
    types_raw = _get(meta, "tokenizer.ggml.token_type", (list, tuple), where)
    if types_raw is None:
        token_types = [TOKEN_NORMAL] * n
    else:
        if len(types_raw) != n:
            raise ValueError(
                f"{where}: tokenizer.ggml.token_type has {len(types_raw)} entries, "
                f"expected one per token ({n})"
            )
        token_types = [int(t) for t in types_raw]
    scores_raw = _get(meta, "tokenizer.ggml.scores", (list, tuple), where)
    scores = None
    if scores_raw is not None:
        if len(scores_raw) != n:
            raise ValueError(
                f"{where}: tokenizer.ggml.scores has {len(scores_raw)} entries, "
                f"expected one per token ({n})"
            )
        scores = [float(s) for s in scores_raw]
    add_space_prefix = _get(meta, "tokenizer.ggml.add_space_prefix", bool, where)
    return GgufVocab(
        where=where,
        model=model,
        pre=_get(meta, "tokenizer.ggml.pre", str, where),
        tokens=tokens,
        token_types=token_types,
        merges=_str_list(meta, "tokenizer.ggml.merges", where),
        scores=scores,
        bos_id=_token_id(meta, "tokenizer.ggml.bos_token_id", n, where),
        eos_id=_token_id(meta, "tokenizer.ggml.eos_token_id", n, where),
        eot_id=_token_id(meta, "tokenizer.ggml.eot_token_id", n, where),
        eom_id=_token_id(meta, "tokenizer.ggml.eom_token_id", n, where),
        unk_id=_token_id(meta, "tokenizer.ggml.unknown_token_id", n, where),
        pad_id=_token_id(meta, "tokenizer.ggml.padding_token_id", n, where),
        add_bos=_get(meta, "tokenizer.ggml.add_bos_token", bool, where),
        add_eos=_get(meta, "tokenizer.ggml.add_eos_token", bool, where),
        add_space_prefix=True if add_space_prefix is None else add_space_prefix,
        chat_template=_get(meta, "tokenizer.chat_template", str, where),
    )


# ---- building ---------------------------------------------------------------------------------


def _vocab_dict(tokens: Sequence[str]) -> dict[str, int]:
    # A string listed twice keeps its first id; the later id can only be produced by its
    # added-token entry (if it is a control token), never by BPE.
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    return vocab


def _split_merges(merges: Sequence[str], where: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for i, merge in enumerate(merges):
        left, sep, right = merge.partition(" ")
        if not sep or not left or not right:
            raise ValueError(
                f"{where}: tokenizer.ggml.merges[{i}] = {merge!r} is not two tokens "
                "separated by a space"
            )
        pairs.append((left, right))
    return pairs


def _byte_level_bpe(vocab: GgufVocab) -> HFTokenizer:
    if vocab.merges is None:
        raise ValueError(f"{vocab.where}: a 'gpt2' GGUF vocabulary needs tokenizer.ggml.merges")
    pre_name = vocab.pre
    if pre_name is None:
        # Files converted before the key existed; llama.cpp uses its default splits for them.
        warnings.warn(
            f"{vocab.where}: GGUF metadata has no tokenizer.ggml.pre; using the 'default' "
            "pre-tokenizer, which may tokenize differently from the original model",
            stacklevel=3,
        )
        pre_name = "default"
    spec = PRE_TOKENIZERS.get(pre_name)
    if spec is None:
        raise ValueError(
            f"{vocab.where}: unknown GGUF pre-tokenizer tokenizer.ggml.pre = {pre_name!r}; "
            f"ember knows {', '.join(sorted(PRE_TOKENIZERS))}"
        )
    merges = _split_merges(vocab.merges, vocab.where)
    try:
        model = BPE(
            vocab=_vocab_dict(vocab.tokens), merges=merges, ignore_merges=spec.ignore_merges
        )
    except Exception as exc:  # tokenizers raises a bare Exception on bad merges
        raise ValueError(f"{vocab.where}: cannot build the BPE vocabulary: {exc}") from exc
    tok = HFTokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in spec.splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _score_merges(vocab: GgufVocab, ids: Mapping[str, int]) -> list[tuple[str, str]]:
    """Merges for a SentencePiece vocabulary: every split of a normal token into two tokens,
    ranked by the merged token's score (higher first), as the SentencePiece BPE merges."""
    scores = vocab.scores
    assert scores is not None
    ranked: list[tuple[float, int, int, tuple[str, str]]] = []
    for tok, tid in ids.items():
        if vocab.token_types[tid] not in (TOKEN_NORMAL, TOKEN_USER_DEFINED) or len(tok) < 2:
            continue
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[tid], tid, cut, (left, right)))
    ranked.sort()
    return [pair for *_, pair in ranked]


def _sentencepiece_bpe(vocab: GgufVocab) -> HFTokenizer:
    if vocab.scores is None and vocab.merges is None:
        raise ValueError(
            f"{vocab.where}: a 'llama' GGUF vocabulary needs tokenizer.ggml.scores or merges"
        )
    ids = _vocab_dict(vocab.tokens)
    if vocab.merges is not None:
        merges = _split_merges(vocab.merges, vocab.where)
    else:
        merges = _score_merges(vocab, ids)
    has_bytes = any(t == TOKEN_BYTE for t in vocab.token_types)
    unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None
    try:
        model = BPE(vocab=ids, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=has_bytes)
    except Exception as exc:  # tokenizers raises a bare Exception on bad merges
        raise ValueError(f"{vocab.where}: cannot build the BPE vocabulary: {exc}") from exc
    tok = HFTokenizer(model)
    steps: list[normalizers.Normalizer] = []
    if vocab.add_space_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    decode_steps: list[decoders.Decoder] = [decoders.Replace("▁", " ")]
    if has_bytes:
        decode_steps.append(decoders.ByteFallback())
    decode_steps.append(decoders.Fuse())
    if vocab.add_space_prefix:
        decode_steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(decode_steps)
    return tok


def _add_special_tokens(tok: HFTokenizer, vocab: GgufVocab) -> list[int]:
    """Adds control and user-defined tokens so they are matched whole; returns control ids."""
    control: list[AddedToken] = []
    user: list[AddedToken] = []
    control_ids: list[int] = []
    for tid, (text, kind) in enumerate(zip(vocab.tokens, vocab.token_types, strict=True)):
        if not text:
            continue
        if kind == TOKEN_CONTROL:
            control.append(AddedToken(text, special=True, normalized=False))
            control_ids.append(tid)
        elif kind == TOKEN_USER_DEFINED:
            user.append(AddedToken(text, special=False, normalized=False))
    if control:
        tok.add_special_tokens(control)
    if user:
        tok.add_tokens(user)
    return control_ids


def _eos_post_processor(tok: HFTokenizer, vocab: GgufVocab) -> None:
    # BOS is the ember Tokenizer's job (add_bos_token); EOS, rarely asked for, is appended here.
    if vocab.add_eos and vocab.eos_id is not None:
        eos = vocab.tokens[vocab.eos_id]
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, vocab.eos_id)]
        )


def build_hf_tokenizer(vocab: GgufVocab) -> HFTokenizer:
    """The `tokenizers.Tokenizer` that a GGUF vocabulary describes."""
    if vocab.model == "gpt2":
        tok = _byte_level_bpe(vocab)
    elif vocab.model == "llama":
        tok = _sentencepiece_bpe(vocab)
    else:
        raise ValueError(
            f"{vocab.where}: GGUF tokenizer.ggml.model = {vocab.model!r} is not supported; "
            "ember reads 'gpt2' (byte-level BPE) and 'llama' (SentencePiece BPE) vocabularies"
        )
    _add_special_tokens(tok, vocab)
    _eos_post_processor(tok, vocab)
    # Every added token must keep the id the file gives it, or the model would see wrong ids.
    first_ids = _vocab_dict(vocab.tokens)
    for tid, kind in enumerate(vocab.token_types):
        text = vocab.tokens[tid]
        if kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED) and text and first_ids[text] == tid:
            got = tok.token_to_id(text)
            if got != tid:
                raise ValueError(
                    f"{vocab.where}: special token {text!r} maps to id {got}, expected {tid}"
                )
    return tok


def eos_token_ids(vocab: GgufVocab) -> list[int]:
    """EOS first, then the end-of-turn / end-of-message ids the file names."""
    ids = [i for i in (vocab.eos_id, vocab.eot_id, vocab.eom_id) if i is not None]
    return list(dict.fromkeys(ids))


def default_add_bos(vocab: GgufVocab) -> bool:
    """Whether encode() puts BOS in front: the file's flag, else llama.cpp's default."""
    if vocab.add_bos is not None:
        return vocab.add_bos
    # SentencePiece vocabularies and Llama-3-style splits add BOS unless told otherwise.
    return vocab.model == "llama" or (vocab.pre in ("llama3", "llama-v3", "llama-bpe", "tekken"))


def tokenizer_from_gguf_metadata(meta: Mapping[str, Any], where: str) -> Tokenizer:
    """An ember Tokenizer from a GGUF metadata dict (`ember._C.gguf_metadata(path)`).

    `where` names the file in error messages. Raises ValueError for a missing or malformed
    vocabulary, an unsupported tokenizer.ggml.model, or an unknown tokenizer.ggml.pre.
    """
    from ember.tokenizer import Tokenizer

    vocab = read_gguf_vocab(meta, where)
    hf = build_hf_tokenizer(vocab)
    return Tokenizer.from_tokenizer_object(
        hf,
        eos_token_ids=eos_token_ids(vocab),
        bos_token_id=vocab.bos_id,
        add_bos_token=default_add_bos(vocab) and vocab.bos_id is not None,
        chat_template=vocab.chat_template,
        source=where,
    )
