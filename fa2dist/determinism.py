"""The global deterministic-mode switch.

Precedence, highest first: the per-call ``deterministic=`` argument, the innermost ``fa2dist.deterministic(flag)``
context, ``fa2dist.set_deterministic(flag)``, the environment variable ``FA2DIST_DETERMINISTIC=0|1``, and
``torch.are_deterministic_algorithms_enabled()`` (which Lightning's ``Trainer(deterministic=True)`` and
``"warn"`` turn on). With nothing set, the mode is off (sequence-parallel backward).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

import torch

ENV_VAR = "FA2DIST_DETERMINISTIC"
_context: contextvars.ContextVar[bool | None] = contextvars.ContextVar("fa2dist_deterministic", default=None)
_global: bool | None = None


def _check_flag(flag: object, call: str, allow_none: bool) -> None:
    """Raise a TypeError naming ``call`` (a template such as ``"fa2dist.deterministic({})"``) unless flag is a bool."""
    if not (isinstance(flag, bool) or (allow_none and flag is None)):
        expected = "True, False or None" if allow_none else "True or False"
        raise TypeError(f"`{call.format(repr(flag))}`: expected {expected}, got {type(flag).__name__}.")


def set_deterministic(flag: bool | None) -> None:
    """Set the process-wide mode: True (bitwise reproducible backward), False (sequence-parallel) or None (unset,
    defer to the environment and ``torch.use_deterministic_algorithms``)."""
    global _global
    _check_flag(flag, "fa2dist.set_deterministic({})", allow_none=True)
    _global = flag


@contextlib.contextmanager
def deterministic(flag: bool = True) -> Iterator[None]:
    """Context manager that sets the mode inside its block (it outranks ``set_deterministic``)::

        with fa2dist.deterministic(True):
            loss = model(x).sum()
            loss.backward()
    """
    _check_flag(flag, "fa2dist.deterministic({})", allow_none=False)
    token = _context.set(flag)
    try:
        yield
    finally:
        _context.reset(token)


def _env_flag() -> bool | None:
    raw = os.environ.get(ENV_VAR)
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{ENV_VAR}={raw!r} is not understood. Set it to 0 or 1, or unset it.")


def resolve_deterministic(flag: bool | None = None) -> tuple[bool, str]:
    """The mode a call with ``deterministic=flag`` runs in, and where that decision came from."""
    if flag is not None:
        _check_flag(flag, "deterministic={}", allow_none=False)
        return flag, "argument"
    context = _context.get()
    if context is not None:
        return context, "fa2dist.deterministic() context"
    if _global is not None:
        return _global, "fa2dist.set_deterministic()"
    env = _env_flag()
    if env is not None:
        return env, f"environment {ENV_VAR}"
    if torch.are_deterministic_algorithms_enabled():
        if torch.is_deterministic_algorithms_warn_only_enabled():
            return True, "torch.use_deterministic_algorithms(True, warn_only=True)"
        return True, "torch.use_deterministic_algorithms(True)"
    return False, "default"


def is_deterministic() -> bool:
    """Whether a call without ``deterministic=`` runs the deterministic backward now."""
    return resolve_deterministic(None)[0]
