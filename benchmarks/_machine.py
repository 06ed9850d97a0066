"""The machine a benchmark ran on, recorded in every results JSON, and the results files of the
benchmarks that run each task for several seeds."""

import argparse
import json
import os
import platform
from pathlib import Path

import jax
import numpy as np


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


def summarise_seeds(runs: list[dict]) -> dict:
    """Mean (and, for several seeds, standard error) of every field of every row over `runs`,
    one dict {row: {field: value}} per seed."""
    summary = {}
    for row in runs[0]:
        entry = {}
        for field in runs[0][row]:
            values = np.array([run[row][field] for run in runs], np.float64)
            entry[f"{field}_mean"] = float(values.mean())
            if len(values) > 1:
                entry[f"{field}_stderr"] = float(values.std(ddof=1) / np.sqrt(len(values)))
        summary[row] = entry
    return summary


def run_tasks_and_seeds(doc: str, tasks: list, default_out: str, run) -> None:
    """The command line of a per-task, per-seed benchmark: `run(task, seed)` for the chosen
    `--tasks` and `--seeds`, each task's runs and `summarise_seeds` written to `--out` as soon as
    it is done, keeping the tasks already in that file."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=tasks, choices=tasks)
    parser.add_argument("--out", type=Path, default=Path(default_out))
    args = parser.parse_args()
    results = json.loads(args.out.read_text())["tasks"] if args.out.exists() else {}
    for task in args.tasks:
        runs = [run(task, seed) for seed in range(args.seeds)]
        results[task] = {"seeds": args.seeds, "summary": summarise_seeds(runs), "runs": runs}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine(), "tasks": results}, indent=1) + "\n")
    print(f"wrote {args.out}")
