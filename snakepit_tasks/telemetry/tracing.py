"""OpenTelemetry tracing behind one small internal API (the ``otel`` extra).

Every function here is a no-op until :func:`enable` ran (the ``otel_enabled`` setting), and
enabling needs ``opentelemetry-api``. One trace spans a call: the caller's span, Celery's
publish and run spans (``opentelemetry-instrumentation-celery``), the node's span, the gRPC
hop (context carried in the gRPC metadata), the runtime's span and the tool's span (named
after the tool), with a tool's own spans and events below it. A lane that carries calls
another way puts :func:`inject`'s carrier in its message and opens the receiving span with
``span(name, context=extract(carrier))``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigurationError
from . import hooks

INSTALL_HINT = "pip install 'snakepit-tasks[otel]'"
TRACER_NAME = "snakepit_tasks"

_NULL: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
_tracer: Any = None  # set by enable()
_setups_run: set[str] = set()


def enabled() -> bool:
    """Whether spans are made in this process."""
    return _tracer is not None


def enable(setup: str = "") -> None:
    """Make spans in this process; first run the ``setup`` hook (``module:function`` that
    installs a tracer provider and exporter) when given. Idempotent."""
    global _tracer
    try:
        from opentelemetry import trace
    except ImportError:
        raise ConfigurationError(
            f"otel_enabled is set but OpenTelemetry is not installed: {INSTALL_HINT}"
        ) from None
    if setup and setup not in _setups_run:
        hooks.run([setup], "otel_setup")
        _setups_run.add(setup)
    _tracer = trace.get_tracer(TRACER_NAME)


def disable() -> None:
    """Make no more spans in this process."""
    global _tracer
    _tracer = None


def instrument_celery() -> None:
    """Trace Celery's publish and run of each task (``opentelemetry-instrumentation-celery``)."""
    try:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
    except ImportError:
        raise ConfigurationError(
            "otel_enabled is set but opentelemetry-instrumentation-celery is not installed: "
            + INSTALL_HINT
        ) from None
    instrumentor = CeleryInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: str = "internal",
    context: Any = None,
) -> contextlib.AbstractContextManager[Any]:
    """A span named ``name`` around the ``with`` block, child of the current span (or of
    ``context``, from :func:`extract`); yields it (None when tracing is off). ``kind`` is
    ``internal``, ``client``, ``server``, ``producer`` or ``consumer``."""
    if _tracer is None:
        return _NULL
    from opentelemetry.trace import SpanKind

    return _tracer.start_as_current_span(
        name, context=context, kind=getattr(SpanKind, kind.upper()),
        attributes=_attributes(attributes),
    )


def add_event(name: str, attributes: Mapping[str, Any] | None = None) -> None:
    """Record an event on the current span."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().add_event(name, attributes=_attributes(attributes))


def inject(carrier: dict[str, str]) -> dict[str, str]:
    """Write the current trace context into ``carrier`` (W3C ``traceparent``); returns it."""
    if _tracer is not None:
        from opentelemetry import propagate

        propagate.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str]) -> Any:
    """The trace context a carrier written by :func:`inject` holds (None when off)."""
    if _tracer is None:
        return None
    from opentelemetry import propagate

    return propagate.extract(dict(carrier))


def grpc_metadata() -> list[tuple[str, str]] | None:
    """The current trace context as gRPC call metadata (None when tracing is off)."""
    if _tracer is None:
        return None
    return list(inject({}).items()) or None


def _attributes(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Span attributes: strings, booleans and numbers kept, None dropped, the rest as text."""
    if not values:
        return None
    return {
        str(k): v if isinstance(v, (str, bool, int, float)) else str(v)
        for k, v in values.items()
        if v is not None
    }
