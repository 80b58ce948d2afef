"""Hooks into third-party libraries: one module per library, imported lazily.

``import tether`` imports none of them, and none imports its library until a function
that needs it is called; a missing library raises ``ImportError`` naming the extra to
install (``pip install 'tether[name]'``).

- ``tether.integrations.tenacity``: tenacity stop/retry/sleep hooks that end retrying
  with a context (extra ``tenacity``).
- ``tether.integrations.uvicorn`` / ``tether.integrations.hypercorn``: ``Server(app,
  host=, port=).serve``, an ASGI server as a ``Supervisor`` component that leaves
  signals to tether, stops accepting on shutdown and drains within the supervisor's
  deadline (extras ``uvicorn``, ``hypercorn``).
"""
