"""Hooks into third-party libraries: one module per library, imported lazily.

``import tether`` imports none of them, and none imports its library until a function
that needs it is called; a missing library raises ``ImportError`` naming the extra to
install (``pip install 'tether[name]'``).

- ``tether.integrations.tenacity``: tenacity stop/retry/sleep hooks that end retrying
  with a context (extra ``tenacity``).
- ``tether.integrations.redis_streams``, ``.nats``, ``.kafka``: sources for
  ``tether.lifecycle.Consumer`` (extras ``redis``, ``nats``, ``kafka``).
"""
