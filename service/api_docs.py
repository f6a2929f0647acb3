"""The interactive API documentation, `/docs` (Swagger UI) and `/redoc`, served offline.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and a favicon from fastapi.tiangolo.com), so on
an air-gapped host they stay blank. These are the same pages (FastAPI's "self-hosting JavaScript and CSS
for docs" recipe) with their scripts, styles and icon served from the `fastapi-offline` package's files
under /docs/assets/. Like the pages, the files need no API key (they hold no data); "Try it out" sends
requests to this server only.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"  # FastAPI's default for `docs_url="/docs"`
ASSETS_URL = "/docs/assets"
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))  # swagger-ui-bundle.js and .css, redoc.standalone.js
# The pages may load only from this server (and inline code, data: and blob: URLs): with no network they
# work the same, and they never reach out (ReDoc's sidebar shows Redocly's logo from its CDN: not loaded).
CONTENT_SECURITY_POLICY = "default-src 'self' 'unsafe-inline' data: blob:"
# No online validator badge (an image from validator.swagger.io when the page is not on localhost).
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}


def install_api_docs(app: FastAPI) -> None:
    """Serve `/docs`, `/docs/oauth2-redirect`, `/redoc` and their files; `app` needs `docs_url=redoc_url=None`."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("create the app with docs_url=None and redoc_url=None: these pages replace FastAPI's")
    title = app.title
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return _self_contained(
            get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{title} - Swagger UI",
                oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
                swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                swagger_ui_parameters=SWAGGER_UI_PARAMETERS | (app.swagger_ui_parameters or {}),
            )
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return _self_contained(get_swagger_ui_oauth2_redirect_html())

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return _self_contained(
            get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                with_google_fonts=False,
            )
        )

    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="api-docs-assets")


def _root_path(request: Request) -> str:
    """The prefix a proxy serves the app under (uvicorn's `--root-path`), as FastAPI's own pages use it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _self_contained(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page
