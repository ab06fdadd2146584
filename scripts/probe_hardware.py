#!/usr/bin/env python3
"""What this box can serve (GPUs via NVML, CPU/RAM/disk via psutil), and a plan for the local tier.

    python scripts/probe_hardware.py [--json] [--write hybrid.toml] [--assume-gpu H100-80GB | --assume-gpu-memory 80GiB --count 2]

Same as `hybrid probe`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hardware.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
