"""mmserve's HTTP service: routes → batchers → the inference thread → engine → model.

`create_app(settings)` builds the FastAPI app; `mmserve serve` (or `python -m service`) runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.app import create_app
    from service.settings import Settings

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    """Imported on first use: the client commands (`mmserve embed ...`) start without torch."""
    if name == "create_app":
        from service.app import create_app

        return create_app
    if name == "Settings":
        from service.settings import Settings

        return Settings
    raise AttributeError(f"module 'service' has no attribute {name!r}")
