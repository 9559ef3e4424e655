"""User-facing errors.

Every failure a user can cause (bad recipe, unreadable checkpoint, NaN in a tensor, ...) is raised as a
`ModelmixError` subclass whose message is one self-contained paragraph naming the file/key/tensor. The CLI
prints the message and exits non-zero; it shows a traceback only with --debug.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ModelmixError(Exception):
    """Base class for errors caused by user input; message is shown as-is, without a traceback."""

    exit_code = 2


class ConfigError(ModelmixError):
    """The recipe is invalid (unknown key, bad type, missing parameter, ...)."""


class InputError(ModelmixError):
    """A model/checkpoint/data file is missing, unreadable, corrupt or incompatible."""


class OutputError(ModelmixError):
    """The output location is unusable (exists without --overwrite, unwritable, disk full)."""


class DataError(ModelmixError):
    """An example/evaluation data file is malformed."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f' Did you mean "{close[0]}"?' if close else ""


class DeviceError(ModelmixError):
    """The requested device is unknown or not available on this machine."""
