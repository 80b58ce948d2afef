"""OpenTelemetry: ``TetherPropagator`` (tether's headers beside the trace context).

opentelemetry-api is imported with this module; without it, ``ImportError`` names the
extra: ``pip install 'tether[otel]'``.

Added in 0.1.
"""

from ._otel_propagator import TetherPropagator

__all__ = ["TetherPropagator"]
