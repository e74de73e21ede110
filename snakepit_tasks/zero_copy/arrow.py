"""pyarrow, imported only when large data needs it (``pip install 'snakepit-tasks[arrow]'``)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ..errors import SerializationError

INSTALL_HINT = "pip install 'snakepit-tasks[arrow]'"


def available() -> bool:
    """Whether pyarrow can be imported here."""
    try:
        importlib.import_module("pyarrow")
    except ImportError:
        return False
    return True


def require(what: str = "zero-copy transfer") -> ModuleType:
    """The ``pyarrow`` module; SerializationError with the install hint when it is missing."""
    try:
        return importlib.import_module("pyarrow")
    except ImportError:
        raise SerializationError(
            f"{what} needs pyarrow, which is not installed: {INSTALL_HINT}",
            {"install": INSTALL_HINT},
        ) from None


def flight() -> ModuleType:
    """``pyarrow.flight`` (SerializationError with the install hint when it is missing)."""
    require("Arrow Flight")
    try:
        return importlib.import_module("pyarrow.flight")
    except ImportError as exc:  # a pyarrow build without Flight
        raise SerializationError(
            f"this pyarrow has no Arrow Flight ({exc}); install the pyarrow wheel from PyPI",
            {"install": INSTALL_HINT},
        ) from None


def loaded() -> Any:
    """The ``pyarrow`` module if something in this process imported it already, else None
    (a value cannot be a pyarrow object unless pyarrow is loaded)."""
    import sys

    return sys.modules.get("pyarrow")
