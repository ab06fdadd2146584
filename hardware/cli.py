"""``hybrid probe`` / ``scripts/probe_hardware.py``: what this box can serve, and the config to serve it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from hardware.configfile import write_local_tier
from hardware.nvml import RecordedNvml
from hardware.plan import (
    AssumedGpus,
    assume_gpu,
    make_plan,
    measure_bandwidth,
    measure_bundled_tokens_per_s,
    parse_memory,
)
from hardware.probe import probe
from hardware.report import format_plan, format_report
from hardware.sizing import size_for_cpu
from models.catalog import load_catalog


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--json", action="store_true", help="print the report and plan as JSON")
    ap.add_argument("--write", metavar="FILE", help="write or update the local tier in this config file")
    ap.add_argument("--assume-gpu", metavar="NAME", help="plan for GPUs you do not have yet, e.g. H100-80GB")
    ap.add_argument("--assume-gpu-memory", metavar="SIZE", help="plan for GPUs of this memory, e.g. 80GiB")
    ap.add_argument("--count", type=int, default=1, help="how many assumed GPUs (default 1)")
    ap.add_argument("--nvml-recording", metavar="FILE", help=argparse.SUPPRESS)  # replay recorded NVML answers
    ap.add_argument("--no-check", action="store_true", help="skip the few-second real run of the bundled model")


def run(args: argparse.Namespace) -> int:
    try:
        nvml: RecordedNvml | _Failing | None = (
            RecordedNvml.from_file(args.nvml_recording) if args.nvml_recording else None
        )
    except Exception as exc:  # noqa: BLE001 - a recording that says "error" is a CPU-only box
        from hardware.nvml import NvmlUnavailable

        if not isinstance(exc, NvmlUnavailable):
            raise
        nvml = _Failing(str(exc))
    report = probe(nvml=nvml)
    assumed: AssumedGpus | None = None
    if args.assume_gpu:
        assumed = assume_gpu(args.assume_gpu, args.count)
    elif args.assume_gpu_memory:
        assumed = AssumedGpus(args.assume_gpu_memory, parse_memory(args.assume_gpu_memory), args.count)
    bandwidth = measure_bandwidth()
    plan = make_plan(report, assumed, bandwidth)
    check: dict[str, float] | None = None
    if plan.engine == "llamacpp" and not args.no_check:
        bundled = size_for_cpu(load_catalog().get("gemma-3-270m"), report.ram_total, bandwidth)
        measured = measure_bundled_tokens_per_s()
        check = {"bundled_estimated_tokens_per_s": round(bundled.est_tokens_per_s, 1),
                 "bundled_measured_tokens_per_s": round(measured, 1), "memory_bandwidth_gb_s": round(bandwidth / 1e9, 1)}
        plan.notes.append(
            f"check: memory bandwidth {bandwidth / 1e9:.1f} GB/s; the bundled model is estimated at "
            f"{bundled.est_tokens_per_s:.0f} tokens/s and measured {measured:.0f} tokens/s on this machine "
            "(a model that small is bound by compute, not memory: the estimates for larger models hold better)"
        )
    if args.write:
        write_local_tier(args.write, plan.backend, f"local tier planned by `hybrid probe` for {plan.hardware}")
        plan.notes.append(f"wrote the local tier into {args.write}")
    if args.json:
        print(json.dumps({
            "hardware": report.to_dict(),
            "plan": {"engine": plan.engine, "hardware": plan.hardware, "backend": plan.backend, "notes": plan.notes,
                     "choice": dataclasses.asdict(plan.choice) if plan.choice else None,
                     "candidates": [dataclasses.asdict(c) for c in plan.candidates], "check": check},
        }, indent=2))
    else:
        print(format_report(report))
        print()
        print(format_plan(plan))
    return 0


class _Failing:
    """A recorded NVML that failed: the probe sees the same error as from a real driver."""

    def __init__(self, message: str) -> None:
        self.message = message

    def devices(self):
        from hardware.nvml import NvmlUnavailable

        raise NvmlUnavailable(self.message)

    driver_version = cuda_version = devices


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="probe_hardware", description=__doc__)
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
