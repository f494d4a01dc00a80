# Text <-> token ids for a model: a Hugging Face `tokenizers.Tokenizer` plus what the model's
# side files say about BOS/EOS, special tokens and the chat template, gathered in one place.
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

_TOKENIZER_FILE = "tokenizer.json"
_TOKENIZER_CONFIG = "tokenizer_config.json"
_GENERATION_CONFIG = "generation_config.json"
_MODEL_CONFIG = "config.json"
_CHAT_TEMPLATE_FILE = "chat_template.jinja"
_CHAT_TEMPLATE_JSON = "chat_template.json"


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, {} when the file is absent; ValueError naming it if malformed."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: expected a JSON object, could not parse it: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_content(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _int_list(value: object) -> list[int]:
    """An `eos_token_id`-style field: an int, a list of ints, or absent."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _pick_chat_template(value: object, source: Path) -> str | None:
    """tokenizer_config.json's chat_template: a string, or a list of {name, template}."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named: dict[str, str] = {}
        for entry in value:
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("name"), str)
                and isinstance(entry.get("template"), str)
            ):
                raise ValueError(
                    f"{source}: chat_template list entries must be {{'name': str, "
                    f"'template': str}}, got {entry!r}"
                )
            named[entry["name"]] = entry["template"]
        return named.get("default")
    raise ValueError(
        f"{source}: chat_template must be a string or a list of {{name, template}}, "
        f"got {type(value).__name__}"
    )


class Tokenizer:
    """A model's tokenizer: encode/decode plus BOS/EOS ids and the chat template."""

    def __init__(
        self,
        tokenizer: HFTokenizer,
        *,
        eos_token_ids: Iterable[int] = (),
        bos_token_id: int | None = None,
        add_bos_token: bool | None = None,
        special_token_ids: Iterable[int] | None = None,
        chat_template: str | None = None,
        source: str = "<tokenizer object>",
    ) -> None:
        self._tok = tokenizer
        self._source = source
        self._eos_token_ids: list[int] = list(dict.fromkeys(int(i) for i in eos_token_ids))
        self._bos_token_id = bos_token_id
        self._add_bos_token = add_bos_token
        self._chat_template = chat_template
        specials = {
            token_id
            for token_id, added in tokenizer.get_added_tokens_decoder().items()
            if added.special
        }
        if special_token_ids is not None:
            specials.update(int(i) for i in special_token_ids)
        self._special_token_ids = frozenset(specials)
        self._post_processor_adds_bos = self._detect_post_processor_bos()

    # ----- construction -----

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer | None:
        """Loads tokenizer.json and its side files from a Hugging Face model folder.

        Returns None when the folder has no tokenizer.json. Raises ValueError naming the file
        when one of them is malformed.
        """
        folder = Path(path)
        tokenizer_file = folder / _TOKENIZER_FILE
        if not tokenizer_file.is_file():
            return None
        try:
            hf = HFTokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception for every parse error
            raise ValueError(
                f"{tokenizer_file}: expected a Hugging Face tokenizers JSON file, "
                f"could not load it: {exc}"
            ) from exc

        tok_config = _read_json(folder / _TOKENIZER_CONFIG)
        gen_config = _read_json(folder / _GENERATION_CONFIG)
        model_config = _read_json(folder / _MODEL_CONFIG)

        eos_ids: list[int] = _int_list(gen_config.get("eos_token_id"))
        eos_text = _token_content(tok_config.get("eos_token"))
        if eos_text is not None:
            eos_id = hf.token_to_id(eos_text)
            if eos_id is not None:
                eos_ids.append(eos_id)
        eos_ids += _int_list(model_config.get("eos_token_id"))

        bos_id: int | None = None
        bos_text = _token_content(tok_config.get("bos_token"))
        if bos_text is not None:
            bos_id = hf.token_to_id(bos_text)
        if bos_id is None:
            for config in (model_config, gen_config):
                candidates = _int_list(config.get("bos_token_id"))
                if candidates:
                    bos_id = candidates[0]
                    break

        add_bos = tok_config.get("add_bos_token")
        return cls(
            hf,
            eos_token_ids=eos_ids,
            bos_token_id=bos_id,
            add_bos_token=add_bos if isinstance(add_bos, bool) else None,
            chat_template=cls._load_chat_template(folder, tok_config),
            source=str(tokenizer_file),
        )

    @classmethod
    def from_tokenizer_object(
        cls,
        tokenizer: HFTokenizer,
        *,
        eos_token_ids: Iterable[int] = (),
        bos_token_id: int | None = None,
        add_bos_token: bool | None = None,
        special_token_ids: Iterable[int] | None = None,
        chat_template: str | None = None,
        source: str = "<tokenizer object>",
    ) -> Tokenizer:
        """Wraps a tokenizer built elsewhere (e.g. from GGUF metadata)."""
        return cls(
            tokenizer,
            eos_token_ids=eos_token_ids,
            bos_token_id=bos_token_id,
            add_bos_token=add_bos_token,
            special_token_ids=special_token_ids,
            chat_template=chat_template,
            source=source,
        )

    @staticmethod
    def _load_chat_template(folder: Path, tok_config: dict[str, Any]) -> str | None:
        # Newer transformers save the template beside tokenizer_config.json; it takes precedence.
        jinja_file = folder / _CHAT_TEMPLATE_FILE
        if jinja_file.is_file():
            return jinja_file.read_text(encoding="utf-8")
        json_file = folder / _CHAT_TEMPLATE_JSON
        from_json = _read_json(json_file).get("chat_template")
        if from_json is not None:
            return _pick_chat_template(from_json, json_file)
        return _pick_chat_template(tok_config.get("chat_template"), folder / _TOKENIZER_CONFIG)

    def _detect_post_processor_bos(self) -> bool:
        """Whether tokenizer.json's post-processor itself puts BOS in front of a sequence."""
        if self._bos_token_id is None:
            return False
        with_specials = self._tok.encode("a", add_special_tokens=True).ids
        without = self._tok.encode("a", add_special_tokens=False).ids
        return (
            bool(with_specials)
            and with_specials[0] == self._bos_token_id
            and (not without or without[0] != self._bos_token_id)
        )

    # ----- encode / decode -----

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with add_special_tokens, BOS exactly once where the model wants it.

        tokenizer_config.json's add_bos_token wins over tokenizer.json's post-processor, as in
        transformers: True adds a missing BOS (Llama-style files), False removes the one the
        post-processor adds.
        """
        ids = list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)
        if not add_special_tokens or self._bos_token_id is None:
            return ids
        bos = self._bos_token_id
        if self._add_bos_token is True and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        elif self._add_bos_token is False and self._post_processor_adds_bos and ids[:1] == [bos]:
            ids.pop(0)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; ids outside the vocabulary decode to nothing."""
        token_ids = [int(i) for i in ids]
        if skip_special_tokens:
            token_ids = [i for i in token_ids if i not in self._special_token_ids]
        return self._tok.decode(token_ids, skip_special_tokens=skip_special_tokens)

    # ----- vocabulary facts -----

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends generation (generation_config, tokenizer_config, config.json)."""
        return list(self._eos_token_ids)

    @property
    def eos_token_id(self) -> int | None:
        """The first EOS id, or None."""
        return self._eos_token_ids[0] if self._eos_token_ids else None

    @property
    def bos_token_id(self) -> int | None:
        return self._bos_token_id

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    @property
    def special_token_ids(self) -> frozenset[int]:
        return self._special_token_ids

    @property
    def hf_tokenizer(self) -> HFTokenizer:
        """The wrapped `tokenizers.Tokenizer`."""
        return self._tok

    @property
    def source(self) -> str:
        """Where the tokenizer came from (a file path or a description)."""
        return self._source

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(source={self._source!r}, vocab_size={self.vocab_size}, "
            f"bos_token_id={self._bos_token_id}, eos_token_ids={self._eos_token_ids})"
        )
