"""Run every benchmark in bench/ and collect their results with a description of the machine.

Each bench/*.py script (except this one) runs as its own process, with --quick unless --full is
given, and writes bench/results/<name>.json; this script gathers those into bench/results.json
together with the machine (CPU model and flags, cores, memory, library versions, load average)
so that numbers from different machines are never compared blind.

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

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "fma", "f16c")


def machine() -> dict:
    info: dict = {"platform": platform.platform(), "python": platform.python_version(),
                  "cpu_count": os.cpu_count()}
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        for line in cpuinfo.splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), [])
        info["cpu_flags"] = [f for f in FLAGS if f in flags]
    except OSError:
        info["cpu_model"] = platform.processor()
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="full-size runs (default: each script's --quick)")
    ap.add_argument("--only", default=None, help="comma-separated script names (without .py)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per script")
    ap.add_argument("--out", type=Path, default=BENCH / "results.json")
    args = ap.parse_args()

    scripts = sorted(p for p in BENCH.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))
    if args.only:
        want = set(args.only.split(","))
        scripts = [p for p in scripts if p.stem in want]
    mode = [] if args.full else ["--quick"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.time()
    runs, results = {}, {}
    for script in scripts:
        cmd = [sys.executable, str(script.relative_to(ROOT)), *mode]
        print(f"$ {' '.join(['python', *cmd[1:]])}", flush=True)
        t = time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        runs[script.stem] = {"command": " ".join(["python", *cmd[1:]]), "returncode": rc,
                             "seconds": round(time.perf_counter() - t, 1)}
        # only what this run wrote; some scripts keep quick results apart from full ones
        fresh = [r for r in (BENCH / "results" / f"{script.stem}{s}.json" for s in ("", "-quick", "-process"))
                 if r.exists() and r.stat().st_mtime >= start]
        res = fresh[-1] if fresh else BENCH / "results" / f"{script.stem}.json"
        if fresh:
            results[script.stem] = json.loads(res.read_text())
        else:
            runs[script.stem]["note"] = f"no fresh {res.relative_to(ROOT)}"
        print(flush=True)
    out = {"machine": machine(), "mode": "full" if args.full else "quick",
           "command": "python bench/run_all.py" + (" --full" if args.full else ""),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": runs, "results": results}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    failed = [k for k, v in runs.items() if v["returncode"] != 0]
    print(f"wrote {args.out.relative_to(ROOT)}: {len(results)} result file(s)"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
