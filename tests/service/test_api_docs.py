"""The docs pages behind a proxy that serves the app under a path prefix (uvicorn's --root-path)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


def test_the_docs_pages_name_their_files_under_the_root_path() -> None:
    client = TestClient(create_app(Settings()), root_path="/mmserve")  # no lifespan: no model is loaded
    swagger = client.get("/docs").text
    assert re.findall(r'(?:src|href)="([^"]*)"', swagger) == [
        "/mmserve/docs/assets/swagger-ui.css", "/mmserve/docs/assets/favicon.png",
        "/mmserve/docs/assets/swagger-ui-bundle.js",
    ]  # fmt: skip
    assert "url: '/mmserve/openapi.json'" in swagger and "'/mmserve/docs/oauth2-redirect'" in swagger
    assert '<redoc spec-url="/mmserve/openapi.json">' in client.get("/redoc").text
