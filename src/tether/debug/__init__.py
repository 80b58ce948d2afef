"""The live view of tether's context tree, and a leak detector.

::

    from tether import debug

    debug.enable()                       # off by default; bounded; weak references
    debug.snapshot()                     # the tracked contexts, as data
    debug.leaks(older_than=300)          # live for 5 minutes: suspects, with stacks
    app = debug.asgi_app()               # mount at /debug/tether (loopback only)

Disabled (the default), it costs nothing: the core's observer hook has no observer.
Enabled, each derived context is recorded with its creation stack (8 frames) in a
registry that holds it by weak reference, up to ``limit`` live contexts at a time.
Stdlib only.

Added in 0.1.
"""

from ._registry import disable, enable, is_enabled, leaks, snapshot
from ._view import asgi_app

__all__ = ["asgi_app", "disable", "enable", "is_enabled", "leaks", "snapshot"]
