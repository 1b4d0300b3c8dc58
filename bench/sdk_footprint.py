"""What an agent pays to carry the SDK: installed size and import time, beside other tracing SDKs.

Each candidate is installed alone into a fresh virtualenv (pip, from the package index; agentwatch from this
checkout, no extras). Installed size is what the install added to site-packages (pip's own files excluded);
import time is the median, over --runs fresh interpreters, of the wall time of `python -c "import X"` less that
of `python -c "pass"`, and of the cumulative time `-X importtime` gives the module. Prints JSON.

    python bench/sdk_footprint.py                      # all three
    python bench/sdk_footprint.py --only agentwatch    # one
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name: (what pip installs, what the agent imports)
CANDIDATES = {
    "agentwatch": (str(ROOT), "agentwatch"),
    "langfuse": ("langfuse", "langfuse"),
    "openinference-instrumentation-openai": ("openinference-instrumentation-openai",
                                             "openinference.instrumentation.openai"),
}

IMPORTTIME = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)$")


def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def _size(path: Path) -> tuple[int, int]:
    total = files = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
                files += 1
    return total, files


def _distributions(python: Path) -> set[str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], check=True, capture_output=True,
                         text=True)
    return {d["name"].lower() for d in json.loads(out.stdout)}


# Every interpreter runs from the venv's bin/, so that a checkout in the working directory is not what gets imported.
def _wall(python: Path, code: str) -> float:
    start = time.perf_counter()
    subprocess.run([str(python), "-c", code], check=True, capture_output=True, cwd=python.parent)
    return time.perf_counter() - start


def _importtime(python: Path, module: str) -> float:
    """Seconds `-X importtime` gives the top-level imports that `import module` made."""
    out = subprocess.run([str(python), "-X", "importtime", "-c", f"import {module}"], check=True,
                         capture_output=True, text=True, cwd=python.parent)
    parts = module.split(".")
    names = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    micros = 0
    for line in out.stderr.splitlines():
        match = IMPORTTIME.match(line)
        if match and match.group(3) == " " and match.group(4) in names:  # not nested under another import
            micros += int(match.group(2))
    return micros / 1e6


def measure(name: str, work: Path, runs: int) -> dict:
    spec, module = CANDIDATES[name]
    venv = work / name
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = _site_packages(python)
    before, before_files = _size(site)
    base_dists = _distributions(python)
    start = time.perf_counter()
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", spec],
                   check=True)
    install_s = time.perf_counter() - start
    after, after_files = _size(site)
    dists = sorted(_distributions(python) - base_dists)
    version = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
                             check=True, capture_output=True, text=True, cwd=python.parent).stdout.strip()
    _wall(python, f"import {module}")  # first run writes the bytecode caches; not counted
    empty = statistics.median(_wall(python, "pass") for _ in range(runs))
    loaded = statistics.median(_wall(python, f"import {module}") for _ in range(runs))
    cumulative = statistics.median(_importtime(python, module) for _ in range(runs))
    return {
        "name": name,
        "version": version,
        "installed_bytes": after - before,
        "installed_mib": round((after - before) / 2**20, 1),
        "installed_files": after_files - before_files,
        "distributions": len(dists),
        "distribution_names": dists,
        "install_s": round(install_s, 1),
        "import_wall_ms": round((loaded - empty) * 1000, 1),
        "import_importtime_ms": round(cumulative * 1000, 1),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(CANDIDATES), help="measure only these")
    parser.add_argument("--runs", type=int, default=9, help="interpreters per import-time median")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="sdk-footprint-") as work:
        for name in args.only or list(CANDIDATES):
            results.append(measure(name, Path(work), args.runs))
            print(f"{name}: {results[-1]['installed_mib']} MiB, {results[-1]['import_wall_ms']} ms",
                  file=sys.stderr)
    print(json.dumps({"python": sys.version.split()[0], "results": results}, indent=2))


if __name__ == "__main__":
    main()
