"""The hardware probe: GPUs through NVML, CPU, RAM and disk through psutil; a typed report and its JSON.

No GPU, no driver, or NVML failing gives a CPU-only report with a note, never a traceback.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from hardware.nvml import NvmlSource, NvmlUnavailable, PynvmlSource


@dataclass
class MigInstance:
    uuid: str
    name: str
    memory_total: int
    memory_free: int


@dataclass
class GpuInfo:
    index: int
    name: str
    uuid: str
    memory_total: int
    memory_free: int
    memory_used: int
    compute_capability: str
    mig_mode: bool = False
    mig_instances: list[MigInstance] = field(default_factory=list)
    utilization_gpu: int | None = None
    utilization_memory: int | None = None

    @property
    def supports_bf16(self) -> bool:
        return float(self.compute_capability) >= 8.0

    @property
    def supports_fp8(self) -> bool:
        return float(self.compute_capability) >= 8.9


@dataclass
class CpuInfo:
    model: str
    physical_cores: int
    logical_cores: int
    avx2: bool
    avx512: bool
    amx: bool


@dataclass
class HardwareReport:
    cpu: CpuInfo
    ram_total: int
    ram_available: int
    disk_free: int
    disk_path: str
    gpus: list[GpuInfo] = field(default_factory=list)
    driver_version: str | None = None
    cuda_version: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _cpu_flags() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def probe_cpu() -> CpuInfo:
    model, flags = _cpu_flags()
    return CpuInfo(
        model=model,
        physical_cores=psutil.cpu_count(logical=False) or psutil.cpu_count() or 1,
        logical_cores=psutil.cpu_count() or 1,
        avx2="avx2" in flags,
        avx512=any(f.startswith("avx512") for f in flags),
        amx=any(f.startswith("amx") for f in flags),
    )


def probe(nvml: NvmlSource | None = None, cache_dir: str | Path | None = None) -> HardwareReport:
    """Probe this machine. ``nvml`` replaces the driver (tests pass a :class:`~hardware.nvml.RecordedNvml`)."""
    from hybrid.paths import cache_dir as default_cache

    disk_path = Path(cache_dir) if cache_dir else default_cache()
    existing = disk_path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    vm = psutil.virtual_memory()
    report = HardwareReport(
        cpu=probe_cpu(),
        ram_total=int(vm.total),
        ram_available=int(vm.available),
        disk_free=int(psutil.disk_usage(str(existing)).free),
        disk_path=str(disk_path),
    )
    source = nvml
    owned = False
    try:
        if source is None:
            source = PynvmlSource()
            owned = True
        devices = source.devices()
        report.driver_version = source.driver_version()
        report.cuda_version = source.cuda_version()
    except NvmlUnavailable as exc:
        report.notes.append(f"no NVIDIA GPU in use: {exc}; planning for the CPU")
        return report
    except Exception as exc:  # a driver answering nonsense must not crash the probe
        report.notes.append(f"NVML failed ({type(exc).__name__}: {exc}); planning for the CPU")
        return report
    finally:
        if owned and isinstance(source, PynvmlSource):
            source.close()
    for d in devices:
        d = dict(d)
        d["mig_instances"] = [MigInstance(**m) for m in d.get("mig_instances", [])]
        report.gpus.append(GpuInfo(**d))
    if not report.gpus:
        report.notes.append("NVML answered but lists no GPU; planning for the CPU")
    for g in report.gpus:
        if g.mig_mode:
            report.notes.append(
                f"GPU {g.index} ({g.name}) is in MIG mode with {len(g.mig_instances)} instance(s): "
                "vLLM runs on one instance; the plan sizes for the largest"
            )
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        report.notes.append(f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} limits what vLLM will see")
    return report
