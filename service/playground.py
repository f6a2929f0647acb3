"""The playground page at `/`: plain HTML, CSS and JavaScript from service/static/, calling the public API.

Nothing is built and nothing comes from elsewhere, so it works air-gapped. The page and its files need no
API key (they hold no data); the requests it makes send the key typed into its key field.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")
STATIC_PREFIX = "/static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def playground() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def install_playground(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="static")
