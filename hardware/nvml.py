"""The one small adapter in front of NVML, so GPU paths can be tested with recorded answers.

:class:`NvmlSource` is what the probe reads; :class:`PynvmlSource` asks the driver through ``nvidia-ml-py``
(imported as ``pynvml``); :class:`RecordedNvml` replays a JSON recording of the same answers (see
``tests/data/nvml/``), which :func:`record` writes on a real machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol


class NvmlUnavailable(Exception):
    """No NVIDIA driver, no GPU, or NVML failing: the probe reports a CPU-only box."""


class NvmlSource(Protocol):
    def driver_version(self) -> str: ...
    def cuda_version(self) -> str: ...
    def devices(self) -> list[dict[str, Any]]:
        """One dict per GPU: name, uuid, memory_total/free/used (bytes), compute_capability "9.0",
        mig_mode (bool), mig_instances [{uuid, memory_total, name}], utilization_gpu/memory (%)."""
        ...


class PynvmlSource:
    """The real thing. Every call is guarded: a failing NVML becomes :class:`NvmlUnavailable`."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlUnavailable(f"nvidia-ml-py is not installed ({exc})") from None
        self.nv = pynvml
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise NvmlUnavailable(f"NVML could not start: {exc}") from None

    def close(self) -> None:
        try:
            self.nv.nvmlShutdown()
        except Exception:
            pass

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    def driver_version(self) -> str:
        return self._text(self.nv.nvmlSystemGetDriverVersion())

    def cuda_version(self) -> str:
        v = int(self.nv.nvmlSystemGetCudaDriverVersion_v2())
        return f"{v // 1000}.{(v % 1000) // 10}"

    def devices(self) -> list[dict[str, Any]]:
        nv = self.nv
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            major, minor = nv.nvmlDeviceGetCudaComputeCapability(h)
            dev: dict[str, Any] = {
                "index": i,
                "name": self._text(nv.nvmlDeviceGetName(h)),
                "uuid": self._text(nv.nvmlDeviceGetUUID(h)),
                "memory_total": int(mem.total),
                "memory_free": int(mem.free),
                "memory_used": int(mem.used),
                "compute_capability": f"{major}.{minor}",
                "mig_mode": False,
                "mig_instances": [],
                "utilization_gpu": None,
                "utilization_memory": None,
            }
            try:
                util = nv.nvmlDeviceGetUtilizationRates(h)
                dev["utilization_gpu"], dev["utilization_memory"] = int(util.gpu), int(util.memory)
            except Exception:  # not supported on MIG-enabled GPUs and some others
                pass
            try:
                current, _pending = nv.nvmlDeviceGetMigMode(h)
                dev["mig_mode"] = bool(current)
            except Exception:  # GPUs without MIG
                pass
            if dev["mig_mode"]:
                for j in range(nv.nvmlDeviceGetMaxMigDeviceCount(h)):
                    try:
                        mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
                    except Exception:
                        continue
                    mmem = nv.nvmlDeviceGetMemoryInfo(mh)
                    dev["mig_instances"].append({
                        "uuid": self._text(nv.nvmlDeviceGetUUID(mh)),
                        "name": self._text(nv.nvmlDeviceGetName(mh)),
                        "memory_total": int(mmem.total),
                        "memory_free": int(mmem.free),
                    })
            out.append(dev)
        return out


class RecordedNvml:
    """Replays a recording: ``{"driver_version", "cuda_version", "devices": [...]}`` or ``{"error": "..."}``."""

    def __init__(self, recording: dict[str, Any]) -> None:
        if "error" in recording:
            raise NvmlUnavailable(recording["error"])
        self.rec = recording

    @classmethod
    def from_file(cls, path: str | Path) -> "RecordedNvml":
        return cls(json.loads(Path(path).read_text()))

    def driver_version(self) -> str:
        return str(self.rec["driver_version"])

    def cuda_version(self) -> str:
        return str(self.rec["cuda_version"])

    def devices(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self.rec["devices"]]


def record(source: NvmlSource) -> dict[str, Any]:
    """What a source answers, as a recording :class:`RecordedNvml` can replay."""
    return {"driver_version": source.driver_version(), "cuda_version": source.cuda_version(), "devices": source.devices()}
