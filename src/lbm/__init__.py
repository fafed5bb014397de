"""lbm: pretrain, finetune, rigorously evaluate and safely deploy Large Behavior Models."""

import os as _os

# Headless rendering must be chosen before MuJoCo is first imported: EGL works on CPU (Mesa
# llvmpipe) and GPU alike. Nothing may reach a model hub at run time.
_os.environ.setdefault("MUJOCO_GL", "egl")
_os.environ.setdefault("PYOPENGL_PLATFORM", _os.environ["MUJOCO_GL"])
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__version__ = "0.1.0"
