"""``module:function`` hooks named in the settings (``telemetry_handlers``, ``otel_setup``),
imported and called once in the process that needs them."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ConfigurationError


def load(spec: str, setting: str) -> Callable[[], Any]:
    """The function ``spec`` (``module:function``) names; ConfigurationError if it cannot be
    imported or is not callable."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(
            f"{setting}: {spec!r} is not 'module:function'", {"setting": setting}
        )
    try:
        found: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"{setting}: cannot load {spec!r}: {type(exc).__name__}: {exc}",
            {"setting": setting, "hook": spec},
        ) from None
    if not callable(found):
        raise ConfigurationError(f"{setting}: {spec!r} is not callable", {"setting": setting})
    return found


def run(specs: Iterable[str], setting: str) -> None:
    """Call each hook in ``specs`` with no arguments, in order."""
    for spec in specs:
        if spec:
            load(spec, setting)()
