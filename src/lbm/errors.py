"""User-facing errors.

An :class:`LbmError` carries a message a person can act on (what was wrong, what to do). The CLI
prints it as one paragraph without a traceback unless ``--debug`` is given; anything else that
escapes is a bug and is shown with its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LbmError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


class InputError(LbmError, ValueError):
    """Invalid arguments to a library function (counts, levels, sizes): a ``ValueError`` for library
    users, and an :class:`LbmError` (one paragraph, no traceback) on the command line."""


def did_you_mean(name: str, choices: Iterable[str], what: str) -> LbmError:
    """Build an "unknown X" error that suggests the closest valid names."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(choices) if len(choices) <= 12 else ", ".join(choices[:12]) + f", ... ({len(choices)} in all)"
    return LbmError(f"Unknown {what} {name!r}.{hint} Valid {what}s: {listing}.")
