# Loading a tokenizer from a model folder: EOS/BOS ids gathered from every side file, the chat
# template in each of its forms, BOS added exactly once, and clear errors for broken files.
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ember.tokenizer import Tokenizer
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

SPECIALS = ["<s>", "</s>", "<|eot|>", "<|im_end|>"]  # ids 0..3


def _hf_tokenizer(bos_post_processor: bool) -> HFTokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["hello world, héllo wörld 你好"] * 20, trainer)
    if bos_post_processor:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
        )
    return tok


def _write(folder: Path, name: str, data: Any) -> None:
    (folder / name).write_text(json.dumps(data), encoding="utf-8")


def make_model_dir(
    folder: Path,
    *,
    bos_post_processor: bool = False,
    tokenizer_config: dict[str, Any] | None = None,
    generation_config: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _hf_tokenizer(bos_post_processor).save(str(folder / "tokenizer.json"))
    if tokenizer_config is not None:
        _write(folder, "tokenizer_config.json", tokenizer_config)
    if generation_config is not None:
        _write(folder, "generation_config.json", generation_config)
    if config is not None:
        _write(folder, "config.json", config)
    return folder


def load(folder: Path) -> Tokenizer:
    tok = Tokenizer.from_dir(folder)
    assert tok is not None
    return tok


def test_missing_tokenizer_json_gives_none(tmp_path: Path) -> None:
    _write(tmp_path, "config.json", {"eos_token_id": 2})
    assert Tokenizer.from_dir(tmp_path) is None


def test_malformed_tokenizer_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ', encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_tokenizer_json_of_the_wrong_shape_names_the_file(tmp_path: Path) -> None:
    _write(tmp_path, "tokenizer.json", {"model": {"type": "NoSuchModel"}})
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_malformed_side_file_names_the_file(tmp_path: Path) -> None:
    make_model_dir(tmp_path)
    (tmp_path / "generation_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="generation_config.json"):
        Tokenizer.from_dir(tmp_path)


def test_eos_ids_are_the_union_of_all_sources(tmp_path: Path) -> None:
    tok = load(
        make_model_dir(
            tmp_path,
            tokenizer_config={"eos_token": "<|im_end|>"},
            generation_config={"eos_token_id": [1, 2]},
            config={"eos_token_id": 1},
        )
    )
    assert tok.eos_token_ids == [1, 2, 3]  # no duplicates, generation_config first
    assert tok.eos_token_id == 1


def test_eos_from_int_and_added_token_dict(tmp_path: Path) -> None:
    tok = load(
        make_model_dir(
            tmp_path,
            tokenizer_config={"eos_token": {"content": "</s>", "special": True}},
            generation_config={"eos_token_id": 2},
        )
    )
    assert tok.eos_token_ids == [2, 1]


def test_no_eos_anywhere(tmp_path: Path) -> None:
    tok = load(make_model_dir(tmp_path))
    assert tok.eos_token_ids == []
    assert tok.eos_token_id is None
    assert tok.bos_token_id is None


def test_llama_style_add_bos_without_post_processor(tmp_path: Path) -> None:
    tok = load(
        make_model_dir(tmp_path, tokenizer_config={"bos_token": "<s>", "add_bos_token": True})
    )
    assert tok.bos_token_id == 0
    plain = tok.encode("hello world", add_special_tokens=False)
    assert plain and plain[0] != 0
    assert tok.encode("hello world") == [0, *plain]
    assert tok.encode("<s>hello world") == [0, *plain]  # already there: not doubled
    assert tok.encode("") == [0]


def test_post_processor_bos_is_not_doubled(tmp_path: Path) -> None:
    tok = load(
        make_model_dir(
            tmp_path,
            bos_post_processor=True,
            tokenizer_config={"bos_token": "<s>", "add_bos_token": True},
        )
    )
    plain = tok.encode("hello", add_special_tokens=False)
    assert tok.encode("hello") == [0, *plain]


def test_add_bos_false_removes_post_processor_bos(tmp_path: Path) -> None:
    tok = load(
        make_model_dir(
            tmp_path,
            bos_post_processor=True,
            tokenizer_config={"bos_token": "<s>", "add_bos_token": False},
        )
    )
    plain = tok.encode("hello", add_special_tokens=False)
    assert tok.encode("hello") == plain


def test_post_processor_bos_kept_when_config_is_silent(tmp_path: Path) -> None:
    tok = load(make_model_dir(tmp_path, bos_post_processor=True, config={"bos_token_id": 0}))
    assert tok.bos_token_id == 0
    plain = tok.encode("hello", add_special_tokens=False)
    assert tok.encode("hello") == [0, *plain]


def test_no_bos_when_not_asked(tmp_path: Path) -> None:
    tok = load(make_model_dir(tmp_path, tokenizer_config={"bos_token": None}))
    assert tok.encode("hello") == tok.encode("hello", add_special_tokens=False)


def test_chat_template_string(tmp_path: Path) -> None:
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok = load(make_model_dir(tmp_path, tokenizer_config={"chat_template": template}))
    assert tok.chat_template == template


def test_chat_template_list_picks_default(tmp_path: Path) -> None:
    tok = load(
        make_model_dir(
            tmp_path,
            tokenizer_config={
                "chat_template": [
                    {"name": "tool_use", "template": "TOOLS"},
                    {"name": "default", "template": "DEFAULT"},
                ]
            },
        )
    )
    assert tok.chat_template == "DEFAULT"


def test_chat_template_list_must_hold_name_template_pairs(tmp_path: Path) -> None:
    make_model_dir(tmp_path, tokenizer_config={"chat_template": [{"name": "default"}]})
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        Tokenizer.from_dir(tmp_path)


def test_chat_template_jinja_file_wins(tmp_path: Path) -> None:
    make_model_dir(tmp_path, tokenizer_config={"chat_template": "FROM CONFIG"})
    (tmp_path / "chat_template.jinja").write_text("FROM FILE", encoding="utf-8")
    assert load(tmp_path).chat_template == "FROM FILE"


def test_no_chat_template(tmp_path: Path) -> None:
    assert load(make_model_dir(tmp_path, tokenizer_config={})).chat_template is None


def test_decode_vocab_and_special_tokens(tmp_path: Path) -> None:
    tok = load(make_model_dir(tmp_path))
    on_disk = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.vocab_size == on_disk.get_vocab_size(with_added_tokens=True) > 256
    assert tok.special_token_ids == frozenset({0, 1, 2, 3})
    assert tok.token_to_id("<|eot|>") == 2
    assert tok.id_to_token(2) == "<|eot|>"
    assert tok.id_to_token(10**6) is None
    ids = tok.encode("héllo 你好", add_special_tokens=False) + [3]
    assert tok.decode(ids) == "héllo 你好"
    assert tok.decode(ids, skip_special_tokens=False) == "héllo 你好<|im_end|>"


def test_from_tokenizer_object_extra_special_ids() -> None:
    hf = _hf_tokenizer(bos_post_processor=False)
    hello = hf.encode("hello").ids
    extra = hello[-1]  # a normal token that a GGUF file marks as a control token
    tok = Tokenizer.from_tokenizer_object(
        hf,
        eos_token_ids=[1],
        bos_token_id=0,
        add_bos_token=True,
        special_token_ids=[extra],
        chat_template="T",
        source="model.gguf",
    )
    assert extra in tok.special_token_ids
    assert tok.encode("hello") == [0, *hello]
    assert tok.decode([*hello, 1]) == hf.decode(hello[:-1])
    assert tok.eos_token_ids == [1]
    assert tok.chat_template == "T"
    assert "model.gguf" in repr(tok)
