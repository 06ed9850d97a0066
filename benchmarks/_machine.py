"""The machine a benchmark ran on, recorded in every results JSON."""

import json
import os
import platform
from pathlib import Path

import jax


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax_devices": jax.local_device_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
    }


def write_rows(args, rows: list, default_name: str) -> Path:
    """Write the machine, the command's arguments and `rows` as JSON to `args.output`, or to
    results/`default_name` beside the benchmarks."""
    out = Path(args.output) if args.output else Path(__file__).parent / "results" / default_name
    out.write_text(json.dumps({"machine": machine(), **vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return out
