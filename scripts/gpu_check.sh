#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: run the probe, print the plan, and compare the probe's memory figures with
# what PyTorch reports for the same card. Paste the output, with the date and card, into docs/gpu-checks.md.
#
#   bash scripts/gpu_check.sh            (needs: pip install . ; torch with CUDA for the comparison)
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "== nvidia-smi"
nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,memory.free,compute_cap,driver_version,mig.mode.current --format=csv || true
echo "== hybrid probe (table)"
python -m hybrid probe --no-check
echo "== recording of this card's NVML answers (tests/data/nvml format)"
python - <<'PY'
import json
from hardware.nvml import PynvmlSource, record
src = PynvmlSource()
print(json.dumps(record(src), indent=1))
src.close()
PY
echo "== probe vs PyTorch"
python - <<'PY'
from hardware.probe import probe
report = probe()
try:
    import torch
except ImportError:
    raise SystemExit("torch is not installed: no comparison")
if not torch.cuda.is_available():
    raise SystemExit("torch sees no CUDA device")
GiB = 1024**3
worst = 0.0
for g in report.gpus:
    free, total = torch.cuda.mem_get_info(g.index)
    props = torch.cuda.get_device_properties(g.index)
    cc = f"{props.major}.{props.minor}"
    d_total, d_free = g.memory_total - total, g.memory_free - free
    worst = max(worst, abs(d_total) / total)
    print(f"GPU {g.index} {g.name}: total probe {g.memory_total / GiB:.3f} GiB vs torch {total / GiB:.3f} GiB "
          f"(diff {d_total / 2**20:+.0f} MiB); free probe {g.memory_free / GiB:.3f} vs torch {free / GiB:.3f} GiB "
          f"(diff {d_free / 2**20:+.0f} MiB, torch's own context included); cc probe {g.compute_capability} vs torch {cc}")
    assert cc == g.compute_capability, "compute capability differs"
print(f"largest total-memory difference: {worst:.2%}")
PY
