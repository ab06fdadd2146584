"""Readable text for a probe report and a plan."""

from __future__ import annotations

from hardware.plan import Plan
from hardware.probe import HardwareReport
from hardware.sizing import GIB, CpuFit, GpuFit


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def format_report(r: HardwareReport) -> str:
    c = r.cpu
    flags = ", ".join(f for f, on in (("AVX2", c.avx2), ("AVX-512", c.avx512), ("AMX", c.amx)) if on) or "none"
    out = [
        "Hardware",
        f"  CPU     {c.model}: {c.physical_cores} physical / {c.logical_cores} logical cores; {flags}",
        f"  RAM     {_gib(r.ram_total)} total, {_gib(r.ram_available)} available",
        f"  disk    {_gib(r.disk_free)} free at {r.disk_path}",
    ]
    if r.gpus:
        out.append(f"  driver  {r.driver_version}, CUDA {r.cuda_version}")
    for g in r.gpus:
        util = f", {g.utilization_gpu}% busy" if g.utilization_gpu is not None else ""
        mig = f", MIG: {len(g.mig_instances)} instance(s)" if g.mig_mode else ""
        out.append(f"  GPU {g.index}   {g.name} (cc {g.compute_capability}): {_gib(g.memory_total)}, "
                   f"{_gib(g.memory_free)} free{util}{mig}  {g.uuid}")
        for m in g.mig_instances:
            out.append(f"          {m.name}: {_gib(m.memory_total)}  {m.uuid}")
    out += [f"  note    {n}" for n in r.notes]
    return "\n".join(out)


def _rows(p: Plan, limit: int) -> list[GpuFit | CpuFit | None]:
    """The largest candidates, and always the chosen one (None marks a gap)."""
    rows: list[GpuFit | CpuFit | None] = list(p.candidates[:limit])
    if p.choice is not None and p.choice not in rows:
        rows += [None, p.choice]
    return rows


def _gpu_row(f: GpuFit) -> str:
    return (f"{f.model:27s} {f.dtype:9s} {f.tensor_parallel:2d}  {_gib(f.weights_per_gpu):>11s}  "
            f"{_gib(f.kv_budget_per_gpu):>13s}  {f.kv_tokens:9d}  {f.max_model_len:7d}  {f.max_concurrency:14d}")


def _cpu_row(f: CpuFit) -> str:
    return (f"{f.model:27s} {f.quant:7s} {_gib(f.weights_bytes):>10s}  {_gib(f.total_bytes):>10s}  "
            f"{f.est_tokens_per_s:13.1f}")


def format_plan(p: Plan, limit: int = 10) -> str:
    out = [f"Plan for {p.hardware}: local tier on {p.engine} (* = chosen)"]
    if p.engine == "vllm":
        out.append("  model                       dtype     TP  weights/GPU  KV budget/GPU  KV tokens  max len  concurrency@4k")
    else:
        out.append("  model                       quant    file size  RAM needed  est. tokens/s")
    for f in _rows(p, limit):
        if f is None:
            out.append("  ...")
            continue
        row = _gpu_row(f) if isinstance(f, GpuFit) else _cpu_row(f)
        out.append(f" {'*' if f is p.choice else ' '}{row}")
    out.append(f"  {len(p.candidates)} catalog models fit in all")
    out += [f"  {n}" for n in p.notes]
    return "\n".join(out)
