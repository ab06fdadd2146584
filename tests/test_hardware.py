"""Probe (real on this CPU box, recorded NVML answers for GPUs), catalog numbers, sizing by hand, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hardware.nvml import NvmlUnavailable, RecordedNvml
from hardware.plan import assume_gpu, make_plan, parse_memory
from hardware.probe import probe
from hardware.sizing import GIB, size_for_cpu, size_for_gpu
from models import load_catalog, load_prices

DATA = Path(__file__).parent / "data"
H100 = 85520809984  # bytes, as NVML reports an H100 80GB HBM3


def recorded(name: str) -> RecordedNvml:
    return RecordedNvml.from_file(DATA / "nvml" / f"{name}.json")


def test_probe_on_this_machine_is_cpu_only_with_a_note() -> None:
    report = probe()  # no NVIDIA driver here: the real pynvml path fails and must not raise
    assert report.gpus == [] and not report.has_gpu
    assert any("no NVIDIA GPU" in n for n in report.notes)
    assert report.cpu.physical_cores >= 1 and report.cpu.logical_cores >= report.cpu.physical_cores
    assert report.ram_total > report.ram_available > 0 and report.disk_free > 0
    json.dumps(report.to_dict())


def test_recorded_failure_is_a_cpu_report() -> None:
    with pytest.raises(NvmlUnavailable):
        recorded("no_driver")


@pytest.mark.parametrize(
    ("name", "gpu_name", "gib", "cc"),
    [("h100_80gb", "NVIDIA H100 80GB HBM3", 79.6, "9.0"), ("h200", "NVIDIA H200", 140.4, "9.0"),
     ("rtx4090", "NVIDIA GeForce RTX 4090", 24.0, "8.9")],
)
def test_recorded_gpus(name: str, gpu_name: str, gib: float, cc: str) -> None:
    report = probe(nvml=recorded(name))
    (gpu,) = report.gpus
    assert (gpu.name, gpu.compute_capability) == (gpu_name, cc)
    assert gpu.memory_total / GIB == pytest.approx(gib, abs=0.1)
    assert gpu.memory_used + gpu.memory_free == gpu.memory_total
    assert report.driver_version and report.cuda_version
    plan = make_plan(report, bandwidth=20e9)
    assert plan.engine == "vllm" and plan.choice is not None and plan.choice.fits
    assert plan.backend["kind"] == "vllm" and plan.backend["tier"] == "local"


def test_mig_partitioned_a100_plans_for_its_largest_instance() -> None:
    report = probe(nvml=recorded("a100_mig"))
    (gpu,) = report.gpus
    assert gpu.mig_mode and len(gpu.mig_instances) == 3 and gpu.utilization_gpu is None
    assert any("MIG mode with 3 instance(s)" in n for n in report.notes)
    plan = make_plan(report, bandwidth=20e9)
    assert plan.choice is not None
    assert plan.choice.memory_per_gpu == 42089840640  # the 3g.40gb instance, not the whole card
    assert "bfloat16" == plan.choice.dtype or plan.choice.dtype in ("awq", "mxfp4")


def test_catalog_numbers_against_published_configs() -> None:
    cat = load_catalog()
    required = [
        "qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct", "qwen2.5-3b-instruct", "qwen2.5-7b-instruct",
        "qwen2.5-14b-instruct", "qwen2.5-32b-instruct", "qwen2.5-72b-instruct", "qwen3-8b", "llama-3.1-8b-instruct",
        "llama-3.1-70b-instruct", "llama-3.2-1b-instruct", "llama-3.2-3b-instruct", "mistral-7b-instruct-v0.3",
        "gemma-3-270m", "gemma-3-1b", "gemma-3-4b", "gemma-3-12b", "gemma-3-27b", "phi-3.5-mini-instruct",
        "phi-4-mini-instruct", "gpt-oss-20b", "gpt-oss-120b",
    ]
    assert all(m in cat for m in required)
    # KV bytes per token, bf16, all layers: 2 x layers x kv_heads x head_dim x 2 bytes
    llama8 = cat.get("llama-3.1-8b-instruct")
    assert llama8.layers * llama8.kv_bytes_per_token_per_layer(2) == 2 * 32 * 8 * 128 * 2 == 131072
    qwen7 = cat.get("qwen2.5-7b-instruct")
    assert qwen7.layers * qwen7.kv_bytes_per_token_per_layer(2) == 2 * 28 * 4 * 128 * 2 == 57344
    # Gemma 3 27B: 62 layers, every sixth global -> 10 global, 52 sliding (window 1024)
    g27 = cat.get("gemma-3-27b")
    assert (g27.full_layers, g27.sliding_layers, g27.sliding_window) == (10, 52, 1024)
    # gpt-oss-20b: sliding window on every other layer of 24
    assert cat.get("gpt-oss-20b").sliding_layers == 12
    # the bundled model matches its own GGUF metadata (gemma3.block_count 18, head_count_kv 1, key_length 256)
    g270 = cat.get("gemma-3-270m")
    assert (g270.layers, g270.kv_heads, g270.head_dim, g270.hidden, g270.context) == (18, 1, 256, 640, 32768)
    assert load_prices()["gpt-4o-mini"].cost(1_000_000, 1_000_000) == pytest.approx(0.75)


def test_llama_8b_bf16_on_one_h100_by_hand() -> None:
    fit = size_for_gpu(load_catalog().get("llama-3.1-8b-instruct"), H100)
    # usable 0.9 x 85520809984 = 76968728985.6; weights 8.03e9 x 2 = 16.06e9; activation 8192 x 4096 x 2 x 16
    # = 1073741824; CUDA graphs + non-torch 1 GiB -> KV budget 58761245337.6 bytes at 131072 bytes/token
    assert fit.fits and fit.tensor_parallel == 1
    assert fit.kv_budget_per_gpu == pytest.approx(58761245337.6)
    assert fit.kv_tokens == 448312
    assert fit.max_model_len == 131072  # the native context fits (one 131072-token request: 17.2 GB)
    assert fit.max_concurrency == 109  # 4096-token requests: 58761245337.6 / (4096 x 131072)


def test_qwen_32b_bf16_on_two_80gb_gpus_by_hand() -> None:
    fit = size_for_gpu(load_catalog().get("qwen2.5-32b-instruct"), H100, gpus=2, tensor_parallel=2)
    # per GPU: weights 32.5e9 x 2 / 2 = 32.5e9; activation 8192 x 5120 x 32 / 2 = 671088640; graphs 0.5 GiB;
    # non-torch 0.5 GiB; NCCL 0.5 GiB -> 42187027609.6; KV 64 layers x 2 x (8 / 2) heads x 128 x 2 = 131072 B/token
    assert fit.kv_bytes_per_token == 131072
    assert fit.kv_budget_per_gpu == pytest.approx(42187027609.6)
    assert (fit.kv_tokens, fit.max_model_len, fit.max_concurrency) == (321861, 32768, 78)
    auto = size_for_gpu(load_catalog().get("qwen2.5-32b-instruct"), H100, gpus=2)
    assert auto.tensor_parallel == 2  # on one GPU only 8 requests would fit; two hold 78


def test_a_model_that_does_not_fit() -> None:
    fit = size_for_gpu(load_catalog().get("llama-3.1-70b-instruct"), H100)
    assert not fit.fits and "weights need 131.5 GiB per GPU" in fit.why_not
    assert size_for_gpu(load_catalog().get("llama-3.1-70b-instruct"), H100, gpus=2).fits  # 70.6 GB per GPU


def test_gguf_on_16_gib_ram_by_hand() -> None:
    fit = size_for_cpu(load_catalog().get("llama-3.1-8b-instruct"), 16 * GIB, bandwidth_bytes_per_s=40e9)
    # Q4_K_M at 4.89 bits: 8.03e9 x 4.89 / 8 = 4908337500 bytes; f16 KV at 8192: 2 x 32 x 8 x 128 x 2 x 8192
    # = 1073741824; + 0.5 GiB -> 6518950236 of a 12884901888 budget (75% of 16 GiB)
    assert fit.weights_bytes == pytest.approx(4908337500)
    assert fit.kv_bytes == 1073741824
    assert fit.total_bytes == pytest.approx(6518950236)
    assert fit.fits and fit.ram_budget == 12884901888
    assert fit.est_tokens_per_s == pytest.approx(40e9 * 0.6 / 4908337500)  # ~4.9 tokens/s
    assert not size_for_cpu(load_catalog().get("llama-3.1-70b-instruct"), 16 * GIB, 40e9).fits


def test_assumed_hardware() -> None:
    assert assume_gpu("h100-80gb").memory == 81559 * 1024**2
    assert parse_memory("80GiB") == 80 * GIB and parse_memory("24GB") == 24 * 10**9
    with pytest.raises(ValueError, match="unknown GPU"):
        assume_gpu("Voodoo2")


def _probe_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hybrid", "probe", *args], capture_output=True, text=True, timeout=120)


def test_probe_cli_json_for_assumed_gpus() -> None:
    res = _probe_cli("--json", "--assume-gpu-memory", "80GiB", "--count", "2")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["hardware"]["gpus"] == [] and out["plan"]["engine"] == "vllm"
    assert out["plan"]["backend"]["kind"] == "vllm"


def test_probe_cli_table_with_real_check() -> None:
    res = _probe_cli()
    assert res.returncode == 0, res.stderr
    assert "Plan for" in res.stdout and "local tier on llamacpp" in res.stdout
    assert "measured" in res.stdout  # the few-second run of the bundled model


def test_probe_write_keeps_the_rest_of_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "hybrid.toml"
    cfg.write_text("""# my settings
[server]
port = 9001  # keep me

[[backends]]
name = "old-local"
kind = "llamacpp"
tier = "local"
model = "gemma-3-270m"

[[backends]]
name = "openai"
kind = "openai"
tier = "cloud"
base_url = "https://api.openai.com/v1"
models = ["gpt-4o-mini"]

[routing]
overflow_wait_s = 1.5
""")
    for _ in range(2):  # idempotent: one local tier, however often it runs
        res = _probe_cli("--write", str(cfg), "--assume-gpu", "H100-80GB", "--no-check")
        assert res.returncode == 0, res.stderr
    text = cfg.read_text()
    data = tomllib.loads(text)
    assert "# my settings" in text and "port = 9001  # keep me" in text
    assert data["routing"]["overflow_wait_s"] == 1.5
    assert [(b["name"], b["tier"]) for b in data["backends"]] == [("gpu", "local"), ("openai", "cloud")]
    assert data["backends"][0]["kind"] == "vllm"
    from hybrid.config import load_config

    assert load_config(cfg).backend("gpu").tensor_parallel == 1  # the result is a valid hybrid config
