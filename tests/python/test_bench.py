# `ember bench` and bench/scaling.py on the CPU: the table, the JSON and the ceilings must be real
# numbers from a real run, so that the GPU runs (which CI never sees) only change the device.
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ember import _C
from ember.bench import ModelCost, format_table, int_list, main, make_result

TINY = "custom:vocab=256,hidden=64,layers=4,heads=4,kv_heads=2,ffn=128"
ROOT = Path(__file__).resolve().parents[2]


def test_cpu_ceilings_are_positive() -> None:
    c = _C.measure_ceilings("cpu")
    assert c["device"] == "cpu"
    assert c["device_name"]
    assert c["threads"] >= 1
    assert c["copy_buffer_bytes"] >= 1 << 20
    assert math.isfinite(c["copy_bytes_per_s"]) and c["copy_bytes_per_s"] > 1e8


def test_ceilings_reject_a_device_that_is_not_one() -> None:
    with pytest.raises(ValueError, match="tpu:0"):
        _C.measure_ceilings("tpu:0")


def test_cuda_ceilings_or_a_clear_error() -> None:
    if _C.cuda_device_count() == 0:
        # A CPU-only build says it lacks CUDA; a CUDA build without a GPU says the device is absent.
        with pytest.raises((ValueError, RuntimeError), match="CUDA|cuda"):
            _C.measure_ceilings("cuda:0")
        return
    c = _C.measure_ceilings("cuda:0")
    assert c["device"] == "cuda:0"
    for key in ("copy_bytes_per_s", "matmul_flops_per_s", "h2d_bytes_per_s", "d2h_bytes_per_s"):
        assert c[key] > 0, key
    assert c["copy_buffer_bytes"] >= 1 << 30 and c["matmul_size"] == 8192
    assert len(c["peer"]) == (1 if c["device_count"] >= 2 else 0)


def test_bound_arithmetic_for_llama3_8b_shape() -> None:
    cfg = {
        "hidden_size": 4096,
        "num_heads": 32,
        "num_kv_heads": 8,
        "head_dim": 128,
        "intermediate_size": 14336,
        "num_layers": 32,
        "vocab_size": 128256,
        "num_parameters": 8_030_261_248,
        "dtype": "BF16",
    }
    cost = ModelCost.from_config(cfg, on_gpu=True)
    layer = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336
    assert cost.layer_matmul_params == 32 * layer
    assert cost.weight_bytes_per_token == (32 * layer + 128256 * 4096) * 2
    assert cost.kv_bytes_per_token(4096) == 2 * 32 * 8 * 128 * 2 * 4096
    assert cost.decode_bound(3e12, 0) == pytest.approx(3e12 / cost.weight_bytes_per_token)
    assert cost.decode_bound(3e12, 4096) < cost.decode_bound(3e12, 0)
    flop = 2 * 32 * layer + 2 * 128256 * 4096 / 2048
    assert cost.prefill_bound(7e14, 2048) == pytest.approx(7e14 / flop)
    # The CPU keeps its KV cache in f32.
    assert ModelCost.from_config(cfg, on_gpu=False).kv_bytes_per_token(1) == 2 * 32 * 8 * 128 * 4


def test_int_list_and_table() -> None:
    assert int_list("512,2048") == [512, 2048]
    assert int_list("0") == []
    rows = [make_result("tg8", "tg", [10.0, 12.0], n_prompt=1, n_gen=8, bound=22.0)]
    assert rows[0].pct_of_bound == pytest.approx(50.0)
    table = format_table(
        rows, {"model": "m", "size": "0.01", "params": "1.0 M", "backend": "CPU", "devices": "cpu"}
    )
    lines = table.splitlines()
    assert lines[0].startswith("| model") and "% of bound" in lines[0]
    assert "11.00 ± 1.41" in lines[2] and "22.00" in lines[2] and "50.0" in lines[2]


def _run_bench(tmp_path: Path, extra: list[str]) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    main(
        [
            "--random-weights",
            TINY,
            "--devices",
            "cpu",
            "--threads",
            "2",
            "-p",
            "32,48",
            "-n",
            "8",
            "-d",
            "16",
            "-r",
            "2",
            "--concurrency",
            "3",
            "--json",
            str(out),
            *extra,
        ]
    )
    return json.loads(out.read_text())


def test_bench_cpu_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _run_bench(tmp_path, [])
    printed = capsys.readouterr().out
    assert "ceilings on cpu" in printed
    for name in ("pp32", "pp48", "tg8", "tg8 @ d16", "c3 gen", "c3 total"):
        assert f"| {name} " in printed, name

    for key in (
        "model",
        "devices",
        "backend",
        "engine_options",
        "config",
        "cost",
        "ceilings",
        "bounds",
        "results",
        "date",
    ):
        assert key in doc, key
    assert doc["devices"] == ["cpu"] and doc["backend"] == "CPU"
    assert doc["ceilings"]["copy_bytes_per_s"] > 0
    assert doc["config"]["num_layers"] == 4
    by_name = {r["test"]: r for r in doc["results"]}
    assert set(by_name) == {"pp32", "pp48", "tg8", "tg8 @ d16", "c3 gen", "c3 total"}
    for r in doc["results"]:
        assert len(r["values"]) == 2 and all(v > 0 for v in r["values"]), r
        assert r["mean"] == pytest.approx(sum(r["values"]) / 2)
    # Decode is judged against the copy ceiling; the CPU measures no matmul rate, so pp has none.
    tg, tgd = by_name["tg8"], by_name["tg8 @ d16"]
    assert tg["bound"] > tgd["bound"] > 0
    assert tg["pct_of_bound"] == pytest.approx(100 * tg["mean"] / tg["bound"])
    assert by_name["pp32"]["bound"] is None and len(by_name["pp32"]["extra"]["ttft_s"]) == 2
    assert by_name["c3 total"]["mean"] > by_name["c3 gen"]["mean"]  # prompts count in the total


def test_bench_without_ceilings(tmp_path: Path) -> None:
    doc = _run_bench(tmp_path, ["--no-ceilings", "-d", "0", "--concurrency", "0"])
    assert doc["ceilings"] is None
    assert [r["test"] for r in doc["results"]] == ["pp32", "pp48", "tg8"]
    assert all(r["bound"] is None for r in doc["results"])


def _scaling_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ember_scaling", ROOT / "bench" / "scaling.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_scaling_script_on_cpu_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scaling.json"
    _scaling_module().main(
        [
            "--cpu",
            "--shape",
            TINY,
            "--counts",
            "1,2",
            "--transports",
            "host",
            "--prompt",
            "40",
            "--decode",
            "8",
            "--concurrency",
            "2",
            "--reps",
            "1",
            "--max-num-seqs",
            "4",
            "--interleave",
            "2",
            "--no-ceilings",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert [(r["config"]["gpus"], r["config"]["transport"]) for r in doc["results"]] == [
        (1, "-"),
        (2, "host"),
    ]
    for r in doc["results"]:
        assert r["error"] is None
        assert r["max_concurrency"] == 4 <= r["kv_holds"]
        for name in ("pp40", "ttft", "tg8", "c2", "cmax"):
            assert r["measures"][name]["mean"] > 0, name
    assert "| pp40 tok/s |" in doc["markdown"] and doc["markdown"] in printed
    assert [r["interleave"] for r in doc["results"]] == [1, 2]
    two = doc["markdown"].splitlines()[5]
    assert two.startswith("| " + TINY + " | 2 | host | 2 |") and "×" in two
