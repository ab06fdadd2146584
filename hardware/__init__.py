"""What the box can serve: probing (NVML, psutil) and sizing (vLLM on GPUs, GGUF on the CPU)."""

from hardware.probe import CpuInfo, GpuInfo, HardwareReport, probe

__all__ = ["CpuInfo", "GpuInfo", "HardwareReport", "probe"]
