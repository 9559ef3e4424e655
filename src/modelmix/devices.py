"""One device check for every command and API function.

A user who types ``--device cuda`` on a machine without a GPU (or ``--device tpu``) should get one sentence
saying so before anything is loaded, not torch's ``AssertionError: Torch not compiled with CUDA enabled``
from deep inside a model load. torch is imported only when a GPU is asked for.
"""

from __future__ import annotations

import re

from modelmix.errors import DeviceError, did_you_mean

DEVICES = ("cpu", "cuda")


def check_device(device: object) -> str:
    """The canonical device string (``cpu``, ``cuda``, ``cuda:N``) or a DeviceError saying what is wrong."""
    name = str(device).strip().lower()  # also a torch.device: str() gives "cpu" / "cuda:0"
    if name == "cpu":
        return "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if m is None:
        raise DeviceError(
            f"Unknown device {str(device)!r}: modelmix runs on cpu or cuda (cuda:N for one of several GPUs)."
            f"{did_you_mean(name, DEVICES)}"
        )
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {name} was requested but no CUDA GPU is available here (this torch build "
            f"{'has no CUDA support' if torch.version.cuda is None else 'sees no GPU'}). Use --device cpu."
        )
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise DeviceError(
            f"--device {name}: there is no GPU number {m.group(1)}; this machine has "
            f"{torch.cuda.device_count()} (cuda:0 ... cuda:{torch.cuda.device_count() - 1})."
        )
    return name
