"""Run every benchmark and experiment and collect their results with a description of the machine.

Each script of bench/micro/ and bench/experiments/ (a module, or a package with a __main__.py)
runs as its own process, ``python -m bench.<folder>.<name>`` from the repository root, with
--quick unless --full is given, and writes <folder>/results/<name>.json; this script gathers
those into bench/results.json together with the machine (CPU model and flags, cores, memory,
library versions, load average) so that numbers from different machines are never compared blind.

    python bench/run_all.py [--full] [--only embed,mixing]      # or: make bench
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from dgamix.pipeline.precision import cpu_info

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
FOLDERS = ("micro", "experiments")  # experiments run with --quick too: a short run of each
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "fma", "f16c")


def machine() -> dict:
    info: dict = {"platform": platform.platform(), "python": platform.python_version(),
                  "cpu_count": os.cpu_count()}
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    model, flags = cpu_info()
    info["cpu_model"] = model or platform.processor()
    info["cpu_flags"] = [f for f in FLAGS if f in flags]
    try:
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        info["memory_gib"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    versions = {}
    for dist in ("numpy", "torch", "faiss-cpu", "faiss-gpu", "onnxruntime", "onnx", "sentence-transformers",
                 "transformers", "polars", "pyarrow", "ray"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    info["versions"] = versions
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return info


def scripts() -> list[tuple[str, Path]]:
    """(module name, folder) of every runnable script: bench/<folder>/<name>.py, or a package
    bench/<folder>/<name>/ with a __main__.py; names starting with "_" are not scripts."""
    found = []
    for folder in FOLDERS:
        for p in sorted((BENCH / folder).iterdir()):
            name = p.stem if p.suffix == ".py" else p.name
            if name.startswith("_") or not (p.suffix == ".py" or (p / "__main__.py").exists()):
                continue
            found.append((name, BENCH / folder))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="full-size runs (default: each script's --quick)")
    ap.add_argument("--only", default=None, help="comma-separated script names (without .py)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per script")
    ap.add_argument("--out", type=Path, default=BENCH / "results.json")
    args = ap.parse_args()

    todo = scripts()
    if args.only:
        want = set(args.only.split(","))
        todo = [(name, folder) for name, folder in todo if name in want]
    mode = [] if args.full else ["--quick"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.time()
    runs, results = {}, {}
    for name, folder in todo:
        cmd = [sys.executable, "-m", f"bench.{folder.name}.{name}", *mode]
        print(f"$ {' '.join(['python', *cmd[1:]])}", flush=True)
        t = time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        runs[name] = {"command": " ".join(["python", *cmd[1:]]), "returncode": rc,
                             "seconds": round(time.perf_counter() - t, 1)}
        # only what this run wrote; some scripts keep quick results apart from full ones
        fresh = [r for r in (folder / "results" / f"{name}{s}.json" for s in ("", "-quick", "-process"))
                 if r.exists() and r.stat().st_mtime >= start]
        res = fresh[-1] if fresh else folder / "results" / f"{name}.json"
        if fresh:
            results[name] = json.loads(res.read_text())
        else:
            runs[name]["note"] = f"no fresh {res.relative_to(ROOT)}"
        print(flush=True)
    out = {"machine": machine(), "mode": "full" if args.full else "quick",
           "command": "python bench/run_all.py" + (" --full" if args.full else ""),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": runs, "results": results}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    failed = [k for k, v in runs.items() if v["returncode"] != 0]
    shown = args.out.resolve().relative_to(ROOT) if args.out.resolve().is_relative_to(ROOT) else args.out
    print(f"wrote {shown}: {len(results)} result file(s)"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
