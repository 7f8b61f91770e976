"""Storage options that travel to actors and tasks without ever printing their secret."""

from __future__ import annotations

from typing import Any


class HiddenOptions:
    """fsspec storage options that never print their secret (actors' reprs, logs, errors)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = dict(options)

    def reveal(self) -> dict[str, Any]:
        return dict(self._options)

    def __repr__(self) -> str:
        return "HiddenOptions(<hidden>)"
