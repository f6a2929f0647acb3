"""mmserve's HTTP service: routes → batchers → the inference thread → engine → model.

`create_app(settings)` builds the FastAPI app; `mmserve serve` (or `python -m service`) runs it.
"""

from service.app import create_app
from service.settings import Settings

__all__ = ["Settings", "create_app"]
