"""Bad input over HTTP: every case answers its own status and a message that says what is wrong."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.server import encode_image, error_of, solid_image, validation_messages

pytestmark = pytest.mark.anyio

PNG = encode_image(solid_image((200, 30, 30)))


def upload(data: bytes, name: str = "image.png", content_type: str = "image/png") -> dict[str, tuple[str, bytes, str]]:
    return {"image": (name, data, content_type)}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bomb() -> bytes:
    """A ~70-byte PNG claiming 30000×30000 pixels."""
    data = bytearray(PNG[:33]) + PNG[33:]
    data[16:24] = struct.pack(">II", 30_000, 30_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# Images that are not (acceptable) images: 400, or 413 for too many pixels.
@pytest.mark.parametrize(
    ("data", "name", "status", "message"),
    [
        (PNG[: len(PNG) // 2], "cut.png", 400, "truncated or corrupt"),
        (b"hello, I am a text file\n", "photo.jpg", 400, "the upload is not an image"),
        (b"", "empty.png", 400, "the image is empty (0 bytes)"),
        (encode_image(solid_image((1, 2, 3)), "PPM"), "image.ppm", 400, "unsupported image format PPM"),
        (bomb(), "bomb.png", 413, "pixels"),
    ],
    ids=["truncated-png", "text-as-jpg", "zero-bytes", "unsupported-format", "decompression-bomb"],
)
@pytest.mark.parametrize("route", ["/caption", "/embed"])
async def test_bad_image_upload(
    client: httpx.AsyncClient, route: str, data: bytes, name: str, status: int, message: str
) -> None:
    response = await client.post(route, files=upload(data, name))
    assert response.status_code == status
    assert message in error_of(response)["message"]


async def test_bad_image_in_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/vqa", json={"image": b64(b"GIF89a nonsense"), "question": "what?"})
    assert response.status_code == 400
    assert error_of(response) == {
        "type": "invalid_image",
        "message": "the upload is not an image; send JPEG, PNG, WebP, GIF, BMP or TIFF",
    }


async def test_invalid_base64(client: httpx.AsyncClient) -> None:
    response = await client.post("/caption", json={"image": "this is not base64!"})
    assert "image is not valid base64" in validation_messages(response)


async def test_data_url_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/caption", json={"image": f"data:image/png;base64,{b64(PNG)}"})
    assert response.status_code == 200, response.text


async def test_wrong_content_type(client: httpx.AsyncClient) -> None:
    response = await client.post("/caption", content=PNG, headers={"content-type": "image/png"})
    assert response.status_code == 415
    assert error_of(response) == {
        "type": "unsupported_media_type",
        "message": "unsupported content type image/png; "
        "send multipart/form-data (a file field 'image') or application/json",
    }


async def test_no_content_type(client: httpx.AsyncClient) -> None:
    response = await client.post("/embed", content=b"{}")
    assert response.status_code == 415
    assert "unsupported content type none" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("route", "kwargs", "message"),
    [
        ("/caption", {"files": {"picture": ("a.png", PNG, "image/png")}}, "a file field named 'image'"),
        ("/caption", {"json": {"max_new_tokens": 3}}, "Field required"),
        ("/caption", {"files": {"image": (None, "not a file")}}, "image must be a file upload"),
        ("/vqa", {"files": upload(PNG)}, "neither was sent"),
        ("/vqa", {"files": upload(PNG), "data": {"question": ""}}, "at least 1 character"),
        ("/vqa", {"files": upload(PNG), "data": {"question": "   "}}, "question must not be blank"),
        (
            "/vqa",
            {"json": {"image": b64(PNG), "question": "x" * 501}},
            "501 characters long; the limit is 500",
        ),
        ("/vqa", {"json": {"image": b64(PNG)}}, "send a question: question (typed) or question_audio (spoken)"),
        ("/vqa", {"json": {"image": b64(PNG), "question": "what?", "question_audio": b64(PNG)}}, "not both"),
        ("/vqa", {"json": {"image": b64(PNG), "question": None}}, "question must not be null"),
        ("/vqa", {"files": upload(PNG), "data": {"question_audio": "text"}}, "must be a file upload"),
        ("/vqa", {"json": {"question": "what?"}}, "Field required"),
        ("/caption", {"json": {"image": b64(PNG), "max_new_tokens": 0}}, "greater than or equal to 1"),
        ("/caption", {"json": {"image": b64(PNG), "max_new_tokens": 1000}}, "at most 128"),
        ("/caption", {"files": upload(PNG), "data": {"max_new_tokens": "many"}}, "valid integer"),
        ("/caption", {"json": {"image": b64(PNG), "max_tokens": 5}}, "Extra inputs are not permitted"),
        ("/caption", {"content": b"{not json", "headers": {"content-type": "application/json"}}, "JSON"),
        ("/embed", {"json": {"input": 42}}, "valid string"),
        ("/embed", {"json": {"input": [1, 2]}}, "valid string"),
        ("/embed", {"json": {"input": []}}, "input must not be an empty list"),
        ("/embed", {"json": {"input": ["ok", ""]}}, "input[1] is empty"),
        ("/embed", {"json": {"input": "x" * 2001}}, "2001 characters long; the limit is 2000"),
        ("/embed", {"json": {"input": ["a"] * 257}}, "input has 257 texts; the limit is 256"),
        ("/embed", {"json": {}}, "send either input"),
        ("/embed", {"json": {"input": "a", "image": b64(PNG)}}, "not both"),
    ],
)
async def test_malformed_fields_answer_422(
    client: httpx.AsyncClient, route: str, kwargs: dict[str, object], message: str
) -> None:
    response = await client.post(route, **kwargs)  # type: ignore[arg-type]
    assert message in validation_messages(response)


@pytest.fixture(scope="module")
async def small_limits(serve) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    async with serve(max_upload_bytes=2000, max_image_pixels=10_000) as client:
        yield client


async def test_upload_over_the_byte_limit_by_content_length(small_limits: httpx.AsyncClient) -> None:
    big = encode_image(solid_image((1, 1, 1)), "BMP") + b"\0" * 10_000
    response = await small_limits.post("/caption", files=upload(big * 10, "big.bmp"))
    assert response.status_code == 413
    assert error_of(response) == {
        "type": "payload_too_large",
        "message": f"the request body is larger than {2000 + 64 * 1024} bytes",
    }


async def test_upload_over_the_byte_limit_while_streaming(small_limits: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the bytes are counted as they come
        for _ in range(100):
            yield b"x" * 1024

    response = await small_limits.post("/embed", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "the request body is larger than" in error_of(response)["message"]


async def test_image_over_the_byte_limit(small_limits: httpx.AsyncClient) -> None:
    big = encode_image(solid_image((1, 1, 1), (40, 40)), "BMP")  # ~4.9 KB, within the body slack
    for response in (
        await small_limits.post("/caption", files=upload(big, "big.bmp")),
        await small_limits.post("/caption", json={"image": b64(big)}),
        await small_limits.post("/embed", json={"image": b64(big)}),
        await small_limits.post("/embed", files=upload(big, "big.bmp")),
    ):
        assert response.status_code == 413
        assert error_of(response)["message"] == "the image is larger than the limit of 2000 bytes"


async def test_image_over_the_pixel_limit(small_limits: httpx.AsyncClient) -> None:
    response = await small_limits.post("/caption", files=upload(encode_image(solid_image((0, 0, 0), (200, 100)))))
    assert response.status_code == 413
    assert error_of(response)["message"] == "the image is 200x100 = 20000 pixels; the limit is 10000 pixels"


async def test_unknown_path_uses_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/nowhere")
    assert response.status_code == 404
    assert error_of(response) == {"type": "not_found", "message": "Not Found"}


async def test_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.post("/caption", content=b"", headers={"x-request-id": "abc123"})
    assert response.headers["x-request-id"] == "abc123"
    assert (await client.get("/health")).headers["x-request-id"]
