"""API keys, CORS, OpenAI's error shape on /v1 and the text request line, in process."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings
from tests.service.conftest import Serve
from tests.support.server import error_of

pytestmark = pytest.mark.anyio

DOCS_PAGES = ("/docs", "/redoc")


async def test_keys_guard_every_route_but_health_and_docs(serve: Serve) -> None:
    async with serve(api_keys="k1,k2") as client:
        for route in ("/health", "/health/live", "/metrics", "/openapi.json", *DOCS_PAGES, "/docs/oauth2-redirect"):
            assert (await client.get(route)).status_code == 200, route
        missing = await client.post("/embed", json={"input": "a"})
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        assert error_of(missing)["type"] == "invalid_api_key"
        wrong = await client.post("/embed", json={"input": "a"}, headers={"Authorization": "Bearer k3"})
        assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
        for key in ("k1", "k2"):
            ok = await client.post("/embed", json={"input": "a"}, headers={"Authorization": f"bearer {key}"})
            assert ok.status_code == 200, ok.text
        basic = await client.get("/v1/models", headers={"Authorization": "Basic azE6"})
        assert basic.status_code == 401


async def test_the_docs_pages_load_only_their_own_open_files(serve: Serve) -> None:
    async with serve(api_keys="k1") as client:
        for route in DOCS_PAGES:
            page = await client.get(route)
            assert page.headers["content-security-policy"].startswith("default-src 'self'")
            files = re.findall(r'(?:src|href)="([^"]*)"', page.text)
            assert files and all(file.startswith("/docs/assets/") for file in files), files
            for file in files:  # no key needed: they hold no data
                assert (await client.get(file)).status_code == 200, file
        for escape in ("/docs/assets/%2e%2e/v1/models", "/docs/assets/%2e%2e/core.py"):
            assert (await client.get(escape)).status_code == 404, escape


async def test_health_can_be_protected_too(serve: Serve, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# comment\n\n  file-key  \n")
    async with serve(api_keys_file=keys, protect_health=True, wait_ready=False) as client:
        assert (await client.get("/health")).status_code == 401
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/health/live", headers={"Authorization": "Bearer file-key"})).status_code == 200


def test_key_settings_are_checked_and_never_shown(tmp_path: Path) -> None:
    settings = Settings(api_keys="secret-one, secret-two")
    assert settings.api_key_list() == ["secret-one", "secret-two"]
    assert "secret-one" not in repr(settings) and "secret-one" not in str(settings.model_dump())
    with pytest.raises(ValueError, match="cannot be read"):
        Settings(api_keys_file=tmp_path / "absent").api_key_list()
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no key"):
        Settings(api_keys_file=tmp_path / "empty").api_key_list()
    with pytest.raises(ValidationError):
        Settings(log_format="xml")  # type: ignore[arg-type]


async def test_cors_is_off_by_default_and_on_for_listed_origins(serve: Serve) -> None:
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    async with serve() as client:
        response = await client.get("/health", headers={"Origin": "http://app.example"})
        assert "access-control-allow-origin" not in response.headers
    async with serve(cors_origins="http://app.example", api_keys="k") as client:
        asked = {**preflight, "Access-Control-Request-Headers": "authorization"}
        allowed = await client.options("/embed", headers=asked)
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://app.example"
        refused = await client.post("/embed", json={"input": "a"}, headers={"Origin": "http://app.example"})
        assert refused.status_code == 401  # the key is still needed, and the browser may read why
        assert refused.headers["access-control-allow-origin"] == "http://app.example"
        other = await client.options("/embed", headers={**preflight, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_v1_errors_are_in_openai_shape_with_native_statuses(serve: Serve) -> None:
    async with serve(max_upload_bytes=1000) as client:
        too_large = b"x" * 100_000  # over the JSON limit (the image limit in base64, plus 64 KiB of framing)
        cases = [
            (await client.post("/v1/embeddings", content=too_large, headers={"content-type": "application/json"}), 413),
            (await client.post("/v1/embeddings", content=b"a", headers={"content-type": "text/plain"}), 415),
            (await client.post("/v1/embeddings", json={"model": "m"}), 422),
            (await client.get("/v1/nothing"), 404),
        ]
        for response, status in cases:
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], error
        assert cases[2][0].json()["error"]["param"] == "input"
        native = await client.post("/embed", content=b"a", headers={"content-type": "text/plain"})
        assert error_of(native)["type"] == "unsupported_media_type"  # the native shape elsewhere


async def test_text_request_line(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    async with serve() as client:
        with caplog.at_level(logging.INFO, logger="mmserve.access"):
            response = await client.post("/embed", json={"input": "a secret text"}, headers={"X-Request-ID": "r-1"})
    assert response.status_code == 200
    [line] = [r.getMessage() for r in caplog.records if r.name == "mmserve.access" and "r-1" in r.getMessage()]
    assert line.startswith("request request_id=r-1 method=POST route=/embed task=embed_text status=200 duration_ms=")
    assert "batch_size=1" in line and "queue_ms=" in line and "inference_ms=" in line
    assert "secret" not in line
