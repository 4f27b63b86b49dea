"""The packages a lent GPU machine lacks, as wheels to carry there, so that the first device call
runs bench/gpu_check.py instead of failing on `import mlflow`.

The device machines run their own image (/work/.library/device/KINDS.md, read 2026-11-17):
CPython 3.12 with PyTorch 2.11, torchvision, numpy, pandas, OpenCV, scikit-learn, matplotlib and
more, but no MLflow, Optuna, pytorch-grad-cam or PyAV, and nothing can be fetched from there. This
script runs here, where pip reaches PyPI: it walks exptrack's requirements as installed in this
environment (the versions CI tests), leaves out what the image has and what no device check needs,
downloads the rest as CPython 3.12 manylinux x86-64 wheels into .whl/ (building a wheel where PyPI
has only a source archive: grad-cam, ttach), and checks that they and the working tree fit the 64
MiB a device call may carry. Add `/.whl/` to .git/info/exclude first (the script says so if not).

The device call (one command; gpu_check's own limit is 6 minutes on an H100):

    run(carry=[".whl"], timeout_s=540, command="python3 -m pip install -q --no-index --no-deps
        --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
        PYTHONUNBUFFERED=1 && python3 bench/gpu_check.py --out $OUT/check")

Checked on the CPU (2026-12-07) in an environment built like the image (Python 3.11 here, torch
2.11.0 and the image's other packages, nothing else): the same 45 packages, as 3.11 wheels
(`--python-version 3.11 --out <elsewhere>`), installed as the device call does, and
`bench/gpu_check.py --device cpu` passed every check; without cryptography it failed in MLflow's
SQLite store.

Usage: python bench/device_wheels.py [--out .whl] [--python-version 3.12] [--list]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20  # what one device call may carry: the working tree and the carried paths

# The image's Python packages (KINDS.md, "Python packages already there", as read 2026-11-17),
# those of them in exptrack's requirements. Versions differ from CI's (torch 2.11, numpy 2.5);
# gpu_check is what says whether exptrack runs on them.
DEVICE_IMAGE = frozenset("""
aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi charset-normalizer click
cloudpickle contourpy cuda-bindings cuda-pathfinder cuda-toolkit cycler filelock fonttools
frozenlist fsspec h11 idna jinja2 joblib kiwisolver markupsafe matplotlib mpmath multidict narwhals
networkx numpy nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx opencv-python-headless packaging pandas pillow propcache protobuf psutil pyarrow
pyparsing python-dateutil pyyaml requests scikit-learn scipy seaborn setuptools six sympy
threadpoolctl torch torchvision tqdm triton typing-extensions urllib3 werkzeug yarl zipp
""".split())

# Required by exptrack's requirements but used by no device check; each left out to fit the limit.
NOT_NEEDED = {
    "exptrack": "travels as the working tree",
    "mlflow": "MLflow's UI (26 MB of JavaScript); mlflow-skinny holds the Python API and the stores",
    "docker": "MLflow's container builds",
    "gunicorn": "MLflow's server",
    "huey": "MLflow's job runner",
    "psycopg": "PostgreSQL; the device checks use SQLite",
    "psycopg-binary": "PostgreSQL; the device checks use SQLite",
}

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]


def requirement_closure(python_version: str, root: str = "exptrack") -> dict[str, str]:
    """canonical name -> installed version of `root` and everything it requires (with the extras
    it asks for, e.g. psycopg[binary]) under `python_version`, as installed in this environment."""
    env = {"python_version": python_version, "python_full_version": f"{python_version}.0"}
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()  # a package asked for with other extras is walked again
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if (key, extras) in seen:
            continue
        seen.add((key, extras))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:  # an optional dependency this platform does not install
            continue
        found[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in (*extras, "")):
                todo.append((req.name, frozenset(req.extras)))
    return found


def to_carry(closure: dict[str, str]) -> dict[str, str]:
    """What the image lacks and a device check needs: name -> version."""
    return {name: version for name, version in sorted(closure.items())
            if name not in DEVICE_IMAGE and name not in NOT_NEEDED}


def fetch(name: str, version: str, out: Path, python_version: str) -> None:
    """The wheel of name==version for CPython `python_version` on manylinux x86-64; where PyPI
    has only a source archive, a wheel built from it here (pure Python ones: grad-cam, ttach)."""
    spec = f"{name}=={version}"
    download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                "--python-version", python_version, "--implementation", "cp",
                *(f"--platform={p}" for p in PLATFORMS), "-d", str(out), spec]
    if subprocess.run(download, capture_output=True, text=True).returncode == 0:
        return
    before = set(out.glob("*.whl"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), spec],
                           capture_output=True, text=True)
    if build.returncode != 0:
        raise SystemExit(f"{spec}: no wheel for CPython {python_version} on manylinux x86-64, and none could be "
                         f"built: {build.stderr.strip()[-500:]}")
    built = sorted(set(out.glob("*.whl")) - before)
    if len(built) != 1 or not built[0].name.endswith("-none-any.whl"):  # pure Python runs on any CPython
        raise SystemExit(f"{spec}: building it here gave {[p.name for p in built]}, not one pure-Python wheel: "
                         "a wheel for this machine's Python would not install on the device's")


def tree_bytes() -> int:
    """What a device call sends of this checkout: tracked and untracked, not ignored, files."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    return sum((ROOT / f).stat().st_size for f in files if f and (ROOT / f).is_file())


def ignored(path: Path) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT).returncode == 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / ".whl")
    p.add_argument("--python-version", default="3.12", help="the image's Python (KINDS.md: 3.12.3)")
    p.add_argument("--list", action="store_true", help="only print what would be carried")
    args = p.parse_args()
    carry = to_carry(requirement_closure(args.python_version))
    print(f"{len(carry)} packages to carry: " + ", ".join(f"{n}=={v}" for n, v in carry.items()))
    if args.list:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.out.resolve().is_relative_to(ROOT) and not ignored(args.out):
        print(f"{args.out} is not ignored by git, so it would travel twice (as the tree and as carry): "
              f"add '/{args.out.name}/' to {ROOT / '.git' / 'info' / 'exclude'}", file=sys.stderr)
        return 2
    for old in args.out.glob("*.whl"):
        old.unlink()  # one version of each: two stop the install there
    for name, version in carry.items():
        fetch(name, version, args.out, args.python_version)
    files = list(args.out.glob("*.whl"))
    wheels = sum(w.stat().st_size for w in files)
    tree = tree_bytes()
    total = wheels + tree
    print(f"{len(files)} wheels, {wheels / 2**20:.1f} MiB, and the working tree "
          f"{tree / 2**20:.1f} MiB: {total / 2**20:.1f} of the {CARRY_LIMIT / 2**20:.0f} MiB a call may carry")
    if total > CARRY_LIMIT:
        print("too much to carry: leave out more (NOT_NEEDED) or clean untracked files", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
