# Chat templates decide what the model actually sees; these pin the rendering, the sandbox and the
# errors a bad template or a malformed conversation must give.
from __future__ import annotations

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from ember.chat_template import (
    chat_stop_token_ids,
    end_of_turn_token_ids,
    prepare_chat_prompt,
    render_chat,
)

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA2_STYLE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

USER = [{"role": "user", "content": "What is the capital of France?"}]


def test_chatml_rendering_with_generation_prompt() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, *USER]
    text = render_chat(CHATML, msgs)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert not render_chat(CHATML, msgs, add_generation_prompt=False).endswith("assistant\n")


def test_bos_eos_and_extra_variables_reach_the_template() -> None:
    msgs = [*USER, {"role": "assistant", "content": "Paris."}]
    text = render_chat(LLAMA2_STYLE, msgs, bos_token="<s>", eos_token="</s>")
    assert text == "<s>[INST] What is the capital of France? [/INST] Paris. </s>"
    assert render_chat("{{ greeting }} {{ messages|length }}", USER, greeting="hi") == "hi 1"


def test_trim_and_lstrip_blocks_like_transformers() -> None:
    template = "{% for m in messages %}\n    {{ m['content'] }}\n{% endfor %}"
    assert render_chat(template, USER) == "    What is the capital of France?\n"


def test_tojson_keeps_unicode_and_html_characters() -> None:
    out = render_chat("{{ messages[0] | tojson }}", [{"role": "user", "content": "<é>&"}])
    assert out == '{"role": "user", "content": "<é>&"}'
    assert render_chat("{{ {'a': 1} | tojson(indent=2) }}", USER) == '{\n  "a": 1\n}'


def test_strftime_now_and_loop_controls() -> None:
    year = render_chat("{{ strftime_now('%Y') }}", USER)
    assert year.isdigit() and len(year) == 4
    template = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}x{% endfor %}"
    assert render_chat(template, USER * 3) == "x"


def test_template_that_raises_gives_value_error_with_its_message() -> None:
    msgs = [*USER, *USER]
    with pytest.raises(ValueError, match="roles must alternate"):
        render_chat(LLAMA2_STYLE, msgs)


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(ValueError, match="syntax error at line 2"):
        render_chat("ok\n{% for %}", USER)


def test_undefined_attribute_chain_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="failed while rendering"):
        render_chat("{{ nothing.here.at_all }}", USER)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.append({'role': 'x'}) }}",
        "{{ messages[0].update({'role': 'x'}) }}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_sandbox_blocks_unsafe_access(template: str) -> None:
    with pytest.raises(ValueError, match="unsafe|failed while rendering"):
        render_chat(template, USER)


def test_sandbox_hides_dunder_attributes() -> None:
    # A lone unsafe attribute renders as undefined (empty), never as the real object.
    assert render_chat("[{{ ''.__class__ }}]", USER) == "[]"


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ("hello", "must be a list"),
        ([["user", "hi"]], r"messages\[0\] must be a dict"),
        ([{"content": "hi"}], r"messages\[0\]\['role'\]"),
        ([{"role": 3, "content": "hi"}], r"messages\[0\]\['role'\]"),
        ([{"role": "user"}], r"messages\[0\] has no 'content'"),
        ([{"role": "user", "content": 5}], r"messages\[0\]\['content'\] must be a string"),
        ([*USER, {"role": "user", "content": None}], r"messages\[1\]\['content'\]"),
    ],
)
def test_malformed_messages(messages: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render_chat(CHATML, messages)  # type: ignore[arg-type]


# ---- with a tokenizer -------------------------------------------------------------------------


def _chatml_tokenizer(chat_template: str | None = CHATML):  # -> ember.tokenizer.Tokenizer
    from ember.tokenizer import Tokenizer as EmberTokenizer

    words = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "user", "assistant",
             "system", "\n", "What", "is", "the", "capital", "of", "France", "?", " "]  # fmt: skip
    hf = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s|\?"), behavior="isolated")
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in words[1:4]])
    return EmberTokenizer.from_tokenizer_object(
        hf, eos_token_ids=[1], bos_token_id=None, add_bos_token=False, chat_template=chat_template
    )


def test_end_of_turn_ids_include_eos_and_im_end() -> None:
    tok = _chatml_tokenizer()
    assert end_of_turn_token_ids(tok) == [1, 3]
    assert chat_stop_token_ids(tok) == [1, 3]


def test_prepare_chat_prompt_encodes_the_rendered_template_without_bos() -> None:
    tok = _chatml_tokenizer()
    ids = prepare_chat_prompt(tok, USER)
    # <|im_start|> user \n What ␠ is ␠ the ␠ capital ␠ of ␠ France ? <|im_end|> \n <|im_start|>
    # assistant \n
    assert ids == [2, 4, 7, 8, 15, 9, 15, 10, 15, 11, 15, 12, 15, 13, 14, 3, 7, 2, 5, 7]


def test_prepare_chat_prompt_without_template_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no chat template"):
        prepare_chat_prompt(_chatml_tokenizer(chat_template=None), USER)
