"""From a hardware report to a plan: which models per tier, with which engine flags, at what capacity."""

from __future__ import annotations

import functools
import time
import tomllib
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from hardware.probe import GpuInfo, HardwareReport
from hardware.sizing import GIB, CpuFit, GpuFit, size_for_cpu, size_for_gpu
from models.catalog import Catalog, load_catalog

MIB = 1024**2


@dataclass
class AssumedGpus:
    name: str
    memory: int
    count: int
    compute_capability: str = "9.0"


@functools.cache
def known_gpus() -> dict[str, dict[str, Any]]:
    return tomllib.loads(files("hardware").joinpath("gpus.toml").read_text())["gpus"]


def assume_gpu(name: str, count: int = 1) -> AssumedGpus:
    gpus = known_gpus()
    for key, spec in gpus.items():
        if key.lower() == name.lower():
            return AssumedGpus(key, int(spec["memory_mib"]) * MIB, count, spec["compute_capability"])
    raise ValueError(f"unknown GPU {name!r}; known: {', '.join(gpus)} (or give --assume-gpu-memory)")


def parse_memory(text: str) -> int:
    """``80GiB``, ``80GB``, ``81559MiB``, ``24G`` -> bytes."""
    t = text.strip().lower().replace(" ", "")
    units = [("gib", GIB), ("mib", MIB), ("gb", 10**9), ("mb", 10**6), ("g", GIB), ("m", MIB)]
    for suffix, mult in units:
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(float(t) * GIB)


@dataclass
class Plan:
    engine: str  # "vllm" or "llamacpp"
    hardware: str
    choice: GpuFit | CpuFit | None
    candidates: list[GpuFit | CpuFit] = field(default_factory=list)
    backend: dict[str, Any] = field(default_factory=dict)  # the [[backends]] entry for the local tier
    notes: list[str] = field(default_factory=list)


def _dtypes(cc: str) -> list[str]:
    major = float(cc)
    out = ["bfloat16" if major >= 8.0 else "float16"]
    if major >= 8.9:
        out.append("fp8")
    out.append("awq")
    return out


def plan_gpu(memory_per_gpu: int, count: int, cc: str, label: str, catalog: Catalog | None = None) -> Plan:
    """The largest model (best precision first) that fits with room for concurrent requests."""
    catalog = catalog or load_catalog()
    fits: list[GpuFit] = []
    for m in catalog:
        dtypes = ["mxfp4"] if m.weights_gb else _dtypes(cc)
        for dt in dtypes:
            fit = size_for_gpu(m, memory_per_gpu, count, dtype=dt)
            if fit.fits:
                fits.append(fit)
                break  # the best precision that fits
    good = [f for f in fits if f.max_concurrency >= 16 and f.max_model_len >= 16384]
    params = {m.id: m.params_b for m in catalog}
    pool = good or fits
    choice = max(pool, key=lambda f: (params[f.model], f.dtype in ("bfloat16", "float16"))) if pool else None
    plan = Plan("vllm", label, choice, sorted(fits, key=lambda f: -params[f.model]))
    if choice is not None:
        spec = catalog.get(choice.model)
        flags = [
            "--gpu-memory-utilization", "0.90",
            "--max-model-len", str(min(choice.max_model_len, spec.context)),
            "--max-num-seqs", str(max(1, min(256, choice.max_concurrency))),
            "--tensor-parallel-size", str(choice.tensor_parallel),
        ]
        if choice.dtype in ("fp8", "awq"):
            flags += ["--quantization", choice.dtype]
        plan.backend = {
            "name": "gpu", "kind": "vllm", "tier": "local", "model": spec.hf_id, "context": choice.max_model_len,
            "tensor_parallel": choice.tensor_parallel, "max_num_seqs": max(1, min(256, choice.max_concurrency)),
            "gpu_memory_utilization": 0.90, "quantization": choice.dtype if choice.dtype in ("fp8", "awq") else "",
        }
        plan.notes.append("vllm serve " + spec.hf_id + " " + " ".join(flags))
    else:
        plan.notes.append("no catalog model fits these GPUs; plan for the CPU instead")
    return plan


def measure_bandwidth(seconds: float = 0.5) -> float:
    """Memory bandwidth in bytes/s from large array copies (read + write), the figure decode speed follows."""
    import numpy as np

    src = np.ones(64 * MIB // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        np.copyto(dst, src)
        n += 1
    return 2 * src.nbytes * n / (time.perf_counter() - start)


def plan_cpu(report: HardwareReport, bandwidth: float, catalog: Catalog | None = None) -> Plan:
    """The largest GGUF that fits RAM and decodes at a usable speed (>= 8 tokens/s estimated)."""
    catalog = catalog or load_catalog()
    fits = [f for m in catalog if (f := size_for_cpu(m, report.ram_total, bandwidth)).fits]
    params = {m.id: m.params_b for m in catalog}
    usable = [f for f in fits if f.est_tokens_per_s >= 8.0]
    choice = max(usable, key=lambda f: params[f.model]) if usable else None
    plan = Plan("llamacpp", f"{report.cpu.physical_cores} cores, {report.ram_total / GIB:.0f} GiB RAM", choice,
                sorted(fits, key=lambda f: -params[f.model]))
    threads = report.cpu.physical_cores
    if choice is None or choice.model == "gemma-3-270m":
        plan.backend = {"name": "cpu", "kind": "llamacpp", "tier": "local", "model": "gemma-3-270m", "context": 8192,
                        "threads": threads}
        plan.notes.append("the bundled Gemma 3 270M serves the local tier")
    else:
        spec = catalog.get(choice.model)
        plan.backend = {"name": "cpu", "kind": "llamacpp", "tier": "local",
                        "model": f"~/.cache/hybrid/models/{choice.gguf_file}", "context": choice.context, "threads": threads}
        plan.notes.append(
            f"download {choice.gguf_file} from {spec.gguf_repo} into ~/.cache/hybrid/models/ "
            "(hybrid never downloads at run time)"
        )
    return plan


def measure_bundled_tokens_per_s(seconds: float = 3.0, threads: int | None = None) -> float:
    """A few-second real decode run of the bundled model: the check on the bandwidth-based estimate."""
    from llama_cpp import Llama

    from hybrid.backends.gguf import bundled_model_path
    from hybrid.backends.llamacpp import physical_cores

    t = threads or physical_cores()
    llm = Llama(model_path=str(bundled_model_path()), n_ctx=1024, n_threads=t, n_threads_batch=t, verbose=False)
    try:
        llm.create_completion("Once upon a time", max_tokens=4, temperature=0)  # warm-up
        tokens, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            out = llm.create_completion("Once upon a time", max_tokens=64, temperature=0.8, seed=tokens)
            assert isinstance(out, dict)  # not streamed: one answer
            tokens += out["usage"]["completion_tokens"]
        return tokens / (time.perf_counter() - start)
    finally:
        llm.close()


def make_plan(report: HardwareReport, assumed: AssumedGpus | None = None, bandwidth: float | None = None) -> Plan:
    if assumed is not None:
        return plan_gpu(assumed.memory, assumed.count, assumed.compute_capability,
                        f"{assumed.count} x {assumed.name} ({assumed.memory / GIB:.0f} GiB, assumed)")
    gpus = _usable_gpus(report.gpus)
    if gpus:
        mem = min(g[1] for g in gpus)
        cc = min((g[0].compute_capability for g in gpus), key=float)
        label = f"{len(gpus)} x {gpus[0][0].name} ({mem / GIB:.0f} GiB)"
        plan = plan_gpu(mem, len(gpus), cc, label)
        if plan.choice is not None:
            return plan
    return plan_cpu(report, bandwidth if bandwidth is not None else measure_bandwidth())


def _usable_gpus(gpus: list[GpuInfo]) -> list[tuple[GpuInfo, int]]:
    """(gpu, memory) pairs; a MIG-partitioned GPU counts as its largest instance."""
    out = []
    for g in gpus:
        if g.mig_mode:
            if g.mig_instances:
                out.append((g, max(m.memory_total for m in g.mig_instances)))
        else:
            out.append((g, g.memory_total))
    return out
