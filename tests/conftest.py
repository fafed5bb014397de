"""Shared pytest configuration."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
# pytest-xdist runs one worker per core: one torch/OpenMP thread each avoids oversubscription,
# under which OpenMP's spinning threads make small models orders of magnitude slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
