# Checks of the numpy oracle itself (no engine needed): if the reference were wrong, every parity
# test would compare the engine against a wrong answer. On machines with transformers, also HF.
from __future__ import annotations

import json

import numpy as np
import pytest
from numpy_reference import (
    RefConfig,
    ReferenceModel,
    apply_rope,
    causal_attention,
    load_weights,
    read_safetensors_header,
    rel_error,
    rope_inv_freq,
    softmax,
)
from tiny_models import (
    BOS,
    FAMILIES,
    SAMPLE_NEW_TOKENS,
    SAMPLE_PROMPT_IDS,
    SPECIAL_TOKENS,
    bf16_bits_to_fp32,
    fp32_to_bf16_bits,
    make_config,
    random_weights,
)

PROMPT = list(SAMPLE_PROMPT_IDS)


@pytest.mark.parametrize("family", FAMILIES)
def test_causality(tiny_model, family):
    ref = ReferenceModel.from_dir(tiny_model(family))
    full = ref.forward(PROMPT)
    changed = ref.forward(PROMPT[:6] + [1, 2, 3, 4, 400, 401])
    np.testing.assert_array_equal(full[:6], changed[:6])
    assert rel_error(full[6:], changed[6:]) > 1e-3  # later positions do see the change


def test_rope_is_relative():
    rng = np.random.default_rng(1)
    d = 16
    q = rng.standard_normal((1, 1, d))
    k = rng.standard_normal((1, 1, d))
    for scaling in (None, make_config("llama", rope_scaling="llama3")["rope_scaling"]):
        inv_freq = rope_inv_freq(d, 10000.0, scaling)

        def score(m: int, n: int, inv_freq=inv_freq) -> float:
            qm = apply_rope(q, np.array([m]), inv_freq)
            kn = apply_rope(k, np.array([n]), inv_freq)
            return float(np.sum(qm * kn))

        for m, n, shift in [(5, 2, 10), (40, 0, 123), (7, 7, 300)]:
            assert score(m, n) == pytest.approx(score(m + shift, n + shift), rel=1e-9, abs=1e-9)
        assert score(9, 2) != pytest.approx(score(9, 5), rel=1e-3)
    np.testing.assert_allclose(apply_rope(q, np.array([0]), rope_inv_freq(d, 1e4)), q)


def test_rope_uses_rotate_half_pairs():
    # Element i pairs with i + d/2 and the pair turns as a complex number by position * inv_freq[i].
    rng = np.random.default_rng(2)
    d, pos = 8, 13
    x = rng.standard_normal((1, 1, d))
    inv_freq = rope_inv_freq(d, 500.0)
    z = (x[0, 0, : d // 2] + 1j * x[0, 0, d // 2 :]) * np.exp(1j * pos * inv_freq)
    expected = np.concatenate([z.real, z.imag])
    np.testing.assert_allclose(apply_rope(x, np.array([pos]), inv_freq)[0, 0], expected, atol=1e-12)


def test_llama3_inv_freq_bands():
    # theta 1e4, d 16: wavelengths 6.3, 20, 63, 199, 628, 1987, 6283, 19869. With original context
    # 64: < 16 keeps its frequency, > 64 is divided by the factor, 16..64 is blended.
    scaling = make_config("llama", rope_scaling="llama3")["rope_scaling"]
    plain = rope_inv_freq(16, 10000.0)
    scaled = rope_inv_freq(16, 10000.0, scaling)
    assert scaled[0] == plain[0]
    np.testing.assert_allclose(scaled[3:], plain[3:] / 8.0)
    # 2*pi/inv_freq[1] ~ 19.9 and [2] ~ 62.8 lie between 16 and 64: strictly between the two.
    for i in (1, 2):
        assert plain[i] / 8.0 < scaled[i] < plain[i]
        wavelen = 2 * np.pi / plain[i]
        smooth = (64.0 / wavelen - 1.0) / 3.0
        assert scaled[i] == pytest.approx((1 - smooth) * plain[i] / 8.0 + smooth * plain[i])
    assert np.all(np.diff(scaled) < 0)
    linear = rope_inv_freq(16, 10000.0, {"rope_type": "linear", "factor": 2.0})
    np.testing.assert_allclose(linear, plain / 2.0)


def test_causal_attention_matches_per_position_loop():
    rng = np.random.default_rng(3)
    t, h, kv, d = 6, 4, 2, 8
    q = rng.standard_normal((t, h, d))
    k = rng.standard_normal((t, kv, d))
    v = rng.standard_normal((t, kv, d))
    out = causal_attention(q, k, v)
    for pos in range(t):
        for head in range(h):
            g = head // (h // kv)
            w = softmax(np.array([q[pos, head] @ k[j, g] / np.sqrt(d) for j in range(pos + 1)]))
            expected = sum(w[j] * v[j, g] for j in range(pos + 1))
            np.testing.assert_allclose(out[pos, head], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_gqa_equals_mha_with_repeated_kv_heads(family):
    cfg = make_config(family, heads=4, kv_heads=2)
    weights = random_weights(cfg, seed=4)
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    mha_cfg = dict(cfg, num_key_value_heads=4)
    mha = dict(weights)
    for name, w in weights.items():
        if any(p in name for p in ("k_proj", "v_proj")):
            heads = w.reshape(2, hd, *w.shape[1:])
            mha[name] = np.repeat(heads, 2, axis=0).reshape(4 * hd, *w.shape[1:])
    gqa_logits = ReferenceModel(RefConfig.from_hf(cfg), weights, np.float64).forward(PROMPT)
    mha_logits = ReferenceModel(RefConfig.from_hf(mha_cfg), mha, np.float64).forward(PROMPT)
    np.testing.assert_allclose(gqa_logits, mha_logits, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_float32_close_to_float64(tiny_model, family):
    d = tiny_model(family)
    f32 = ReferenceModel.from_dir(d, np.float32).forward(PROMPT)
    f64 = ReferenceModel.from_dir(d, np.float64).forward(PROMPT)
    assert f32.dtype == np.float32
    assert rel_error(f32, f64) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tied", [False, True])
def test_logits_are_spread_and_greedy_is_decisive(tiny_model, family, tied):
    # Parity tests demand identical greedy tokens at fp32 (logits within 1e-4 relative): a gap
    # between the two best logits below twice that would make the choice depend on rounding.
    ref = ReferenceModel.from_dir(tiny_model(family, tied=tied))
    tokens = PROMPT + ref.greedy(PROMPT, SAMPLE_NEW_TOKENS)
    logits = ref.forward(tokens)[len(PROMPT) - 1 :]
    assert np.all(logits.std(axis=-1) > 0.5)
    top2 = np.sort(logits, axis=-1)[:, -2:]
    assert np.min(top2[:, 1] - top2[:, 0]) > 2e-4 * np.max(np.abs(logits))


def test_tied_checkpoint_has_no_lm_head(tiny_model):
    tied = load_weights(tiny_model("llama", tied=True))
    untied = load_weights(tiny_model("llama", tied=False))
    assert "lm_head.weight" not in tied
    assert untied["lm_head.weight"].shape == (512, 64)


def test_qwen3_head_dim_differs_from_hidden_over_heads(tiny_model):
    d = tiny_model("qwen3", head_dim=32)
    w = load_weights(d)
    assert w["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 32, 64)
    assert w["model.layers.0.self_attn.k_norm.weight"].shape == (32,)
    assert w["model.layers.0.self_attn.o_proj.weight"].shape == (64, 128)
    assert ReferenceModel.from_dir(d).forward(PROMPT).shape == (len(PROMPT), 512)


def test_qwen2_has_qkv_bias_only(tiny_model):
    names = set(load_weights(tiny_model("qwen2")))
    assert "model.layers.1.self_attn.v_proj.bias" in names
    assert "model.layers.1.self_attn.o_proj.bias" not in names
    assert not any(n.endswith(".bias") for n in load_weights(tiny_model("llama")))


def test_bf16_rounds_to_nearest_even():
    one = 1.0
    values = np.array([one, one + 2**-8, one + 3 * 2**-8, -2.5, 3.0e-3], dtype=np.float32)
    back = bf16_bits_to_fp32(fp32_to_bf16_bits(values))
    np.testing.assert_array_equal(back[:4], [1.0, 1.0, 1.0 + 2**-6, -2.5])
    assert back[4] == pytest.approx(3.0e-3, rel=2**-8)


@pytest.mark.parametrize(
    "dtype,code", [("bfloat16", "BF16"), ("float16", "F16"), ("float32", "F32")]
)
def test_checkpoint_dtype_and_values(tiny_model, dtype, code):
    d = tiny_model("qwen3", dtype=dtype)
    header = read_safetensors_header(d / "model.safetensors")
    assert {info["dtype"] for name, info in header.items() if name != "__metadata__"} == {code}
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["torch_dtype"] == dtype
    original = random_weights(cfg, seed=0)
    loaded = load_weights(d)
    assert set(loaded) == set(original)
    tol = {"bfloat16": 2**-8, "float16": 2**-11, "float32": 0.0}[dtype]
    for name, w in original.items():
        np.testing.assert_allclose(loaded[name], w, rtol=tol, atol=1e-7 if tol else 0)


def test_sharded_checkpoint_holds_the_same_weights(tiny_model):
    single = load_weights(tiny_model("llama"))
    sharded_dir = tiny_model("llama", shards=3)
    assert not (sharded_dir / "model.safetensors").exists()
    index = json.loads((sharded_dir / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    sharded = load_weights(sharded_dir)
    assert set(sharded) == set(single)
    for name in single:
        np.testing.assert_array_equal(sharded[name], single[name])


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_matches_config(tiny_model, family):
    from tokenizers import Tokenizer

    d = tiny_model(family)
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    cfg = json.loads((d / "config.json").read_text())
    assert tok.get_vocab_size() == cfg["vocab_size"]
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i
    ids = tok.encode("Hello, how are you today?").ids
    assert (ids[0] == BOS) == family.startswith(("llama", "mistral"))
    assert tok.decode(ids) == "Hello, how are you today?"
    assert len(ids) < 12  # the merges were learned, not just bytes
    tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
    gen = json.loads((d / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert tok.token_to_id(tok_cfg["eos_token"]) in eos


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers, where installed (the GPU machine; not CI)

HF_CASES = [
    ("llama", {}),
    ("llama", {"tied": True}),
    ("llama", {"rope_scaling": "llama3"}),
    ("llama", {"heads": 4, "kv_heads": 4}),
    ("mistral", {}),
    ("mistral", {"tied": True}),
    ("qwen2", {}),
    ("qwen2", {"tied": True}),
    ("qwen3", {}),
    ("qwen3", {"tied": True}),
    ("qwen3", {"head_dim": 32}),
    ("qwen3", {"dtype": "bfloat16"}),
]


@pytest.mark.parametrize("family,options", HF_CASES, ids=lambda c: str(c))
def test_reference_matches_transformers(tiny_model, family, options):
    try:
        import torch
        import transformers
    except ImportError as exc:
        pytest.skip(f"torch and transformers are not installed ({exc})")
    d = tiny_model(family, **options)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(d), torch_dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    tokens = PROMPT * 3  # 36 positions: past the 16-token wavelength band of the llama3 case
    with torch.no_grad():
        hf = model(torch.tensor([tokens])).logits[0].double().numpy()
    ours = ReferenceModel.from_dir(d).forward(tokens)
    assert rel_error(ours, hf) <= 1e-4
