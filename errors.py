"""Exceptions shared by every layer of turngym.

This module depends on nothing else of ours, so any layer may import it.
Every message names the bad input and the fix.
"""

from __future__ import annotations


class TurngymError(Exception):
    """Base class of every error turngym raises on purpose."""


class UnknownEnvError(TurngymError, KeyError):
    """An environment id that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TaskError(TurngymError, ValueError):
    """A task id, split or task dict that an environment cannot use."""


class EnvFaultError(TurngymError, RuntimeError):
    """The environment itself failed (a crashed sandbox, a dead server).

    Raised instead of silently scoring the episode as a loss.
    """


class EngineError(TurngymError, RuntimeError):
    """An LLM engine failed: an unreachable server, a rejected key, an unknown model, a timeout."""


class MissingDependencyError(TurngymError, ImportError):
    """An optional dependency is not installed; the message names the extra."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{package}': "
            f"pip install 'turngym[{extra}]'"
        )
        self.package = package
        self.extra = extra


def require(module: str, extra: str, purpose: str):
    """Import ``module`` lazily or raise :class:`MissingDependencyError`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised where absent
        raise MissingDependencyError(module.split(".")[0], extra, purpose) from exc
