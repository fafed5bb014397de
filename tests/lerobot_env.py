"""LeRobot's own environment, built beside ours (shared by the interop tests and ``benchmarks/peers``).

``lerobot`` 0.4.x pins ``torch<2.11``, ``torchvision<0.26`` and ``huggingface-hub<0.36``, so it cannot
live in our venv. :func:`build` makes a separate venv (cached under ``$LBM_INTEROP_CACHE``, default
``~/.cache/lbm-interop``) with the ``torch==2.9.1`` / ``torchvision==0.24.1`` pair (inside LeRobot's
pins; pip takes both from this machine's disk), then ``lerobot`` with ``--no-deps`` plus, with
LeRobot's own bounds, the packages its dataset code, its ``lerobot-train`` entry point and its
ACT / Diffusion policies import, and what ``lbm_client.lerobot_server`` needs (msgpack, websockets).
Newer torchvision will not do: 0.25+ dropped ``torchvision.io.VideoReader``, which LeRobot's ``pyav``
decoder calls (``torchcodec``, its other decoder, needs system FFmpeg libraries and a matching torch).

    python tests/lerobot_env.py      # build (or find) it and print its Python
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

LEROBOT = "0.4.4"
TORCH, TORCHVISION = "2.9.1", "0.24.1"  # on disk for Python 3.11 on x86_64 (CUDA build, runs on CPU) and aarch64
DEPS = [  # LeRobot 0.4.4's own bounds; what its datasets, lerobot-train, ACT and Diffusion import
    "datasets>=4,<5",
    "huggingface-hub>=0.34.2,<0.36",
    "accelerate>=1.10,<2",
    "av>=15,<16",
    "packaging>=24.2,<26",
    "pandas",
    "pyarrow",
    "pillow",
    "diffusers>=0.27.2,<0.36",
    "einops>=0.8,<0.9",
    "draccus==0.10.0",
    "termcolor>=2.4,<4",
    "deepdiff>=7.0.1,<9",
    "gymnasium>=1.1.1,<2",
    "imageio[ffmpeg]>=2.34,<3",
    "jsonlines>=4,<5",
    "opencv-python-headless>=4.9,<4.13",
    "pyserial>=3.5,<4",
    # lbm_client.lerobot_server (the adapter behind `lbm serve --lerobot`)
    "msgpack>=1,<2",
    "websockets>=13,<18",
]
PROBE = (
    "import torchvision.io; torchvision.io.VideoReader; from lerobot.datasets.lerobot_dataset import LeRobotDataset; "
    "import lerobot.scripts.lerobot_train, lerobot.policies.act.modeling_act, lerobot.policies.diffusion.modeling_diffusion; "
    "import msgpack, websockets"
)
NEEDED_FREE_GB = 12  # the venv is ~7.5 GB on x86_64, plus pip's unpacking


class Unavailable(RuntimeError):
    """The LeRobot environment cannot be built here; the message says why."""


def cache_root() -> Path:
    return Path(os.environ.get("LBM_INTEROP_CACHE") or Path.home() / ".cache" / "lbm-interop")


def offline_env(home: Path) -> dict[str, str]:
    """Environment for LeRobot's side: offline, its own HOME and Hugging Face cache, no telemetry, no wandb."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "WANDB_MODE": "disabled",
        "PYTHONWARNINGS": "ignore",
    }


def _pip(python: Path, *args: str, constraints: Path) -> None:
    cmd = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(constraints), *args]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"pip install {' '.join(args)} took over 30 min") from None
    if r.returncode:
        err = "\n".join(line for line in r.stderr.splitlines() if not line.startswith("WARNING: Location"))
        raise Unavailable(f"pip install {' '.join(args)} failed: {err[-600:]}")


def _probe(python: Path) -> str:
    """'' when everything LeRobot's side needs imports in ``python``, else the last line of the error."""
    r = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=300, env=offline_env(python.parent))
    return "" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]


def build() -> Path:
    """Python of the LeRobot venv, built once and cached, keyed by every pinned version; raises :class:`Unavailable`.

    A cached venv whose pins changed is topped up in place when its base still imports; a broken or
    half-built one is rebuilt (a first build takes a few minutes)."""
    if sys.version_info[:2] != (3, 11):
        raise Unavailable(f"the LeRobot side environment is pinned for Python 3.11, this is {platform.python_version()}")
    if platform.machine() not in ("x86_64", "aarch64"):
        raise Unavailable(f"no torch {TORCH} / torchvision {TORCHVISION} pair is known for {platform.machine()}")
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / f"lerobot-{LEROBOT}-torch{TORCH}-tv{TORCHVISION}-py311-{platform.machine()}"
    python, ready, constraints = venv / "bin" / "python", venv / ".lbm-ready", venv / "constraints.txt"
    spec = json.dumps({"lerobot": LEROBOT, "torch": TORCH, "torchvision": TORCHVISION, "deps": DEPS})
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others then find it ready
        if ready.is_file() and ready.read_text() == spec and python.exists() and not _probe(python):
            return python
        if python.exists() and constraints.is_file() and ready.is_file():  # same base, other extras: top it up
            _pip(python, *DEPS, constraints=constraints)
            if not _probe(python):
                ready.write_text(spec)
                return python
        shutil.rmtree(venv, ignore_errors=True)  # half-built or broken: start over
        free_gb = shutil.disk_usage(cache).free / 2**30
        if free_gb < NEEDED_FREE_GB:
            raise Unavailable(f"{free_gb:.1f} GB free in {cache}, need {NEEDED_FREE_GB}")
        r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if r.returncode:
            raise Unavailable(f"cannot create a venv: {r.stderr.strip()[-300:]}")
        constraints.write_text(f"torch=={TORCH}\ntorchvision=={TORCHVISION}\n")  # nothing may swap torch for a download
        _pip(python, f"torch=={TORCH}", f"torchvision=={TORCHVISION}", constraints=constraints)
        _pip(python, "--no-deps", f"lerobot=={LEROBOT}", constraints=constraints)
        _pip(python, *DEPS, constraints=constraints)
        error = _probe(python)
        if error:
            raise Unavailable(f"lerobot=={LEROBOT} does not import in its side environment ({venv}): {error}")
        ready.write_text(spec)
    return python


if __name__ == "__main__":
    try:
        print(build())
    except Unavailable as error:
        sys.exit(f"cannot build the LeRobot environment: {error}")
