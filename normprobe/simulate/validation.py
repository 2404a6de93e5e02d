"""Parameter checks shared by the simulation configs: a bad value is a user mistake, not a bug."""

from __future__ import annotations

from normprobe.errors import NormprobeError


def require(condition: bool, message: str) -> None:
    """Raise :class:`NormprobeError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise NormprobeError(message)
