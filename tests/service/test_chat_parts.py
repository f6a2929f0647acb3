"""The parts of /v1/chat/completions that need no model: stop strings, and which image URLs are fetched.

The URL refusals are checked without any network: every refused URL is refused before a connection
(literal addresses, `localhost`, hosts not listed), and the one fetch that goes through goes to an
`httpx.MockTransport`.
"""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from service.errors import InvalidImage, PayloadTooLarge, ServiceError
from service.openai.chat_schemas import ChatCompletionRequest
from service.openai.errors import UnsupportedParameter
from service.openai.image_urls import ImageURLFailed, ImageURLRefused, image_bytes, is_public
from service.openai.stops import StopScanner, cut_at_stop
from service.settings import Settings

PARAM = "messages[0].content[0].image_url.url"
PUBLIC = "93.184.215.14"  # a global unicast address, used only as a literal (MockTransport answers)


def stream_through(deltas: list[str], stops: list[str]) -> tuple[str, bool]:
    scanner = StopScanner(stops)
    sent = ""
    for delta in deltas:
        sent += scanner.feed(delta)
        if scanner.stopped:
            break
    return sent + scanner.flush(), scanner.stopped


@pytest.mark.parametrize(
    ("deltas", "stops"),
    [
        (["a large", " orange", " circle"], ["orange"]),
        (["a lar", "ge or", "ange cir", "cle"], [" orange"]),  # the stop string spans deltas
        (["a", " b", " c"], ["zzz"]),  # never found: everything is sent, at the end at the latest
        (["ab", "ab", "c"], ["abc"]),  # a partial match that fails, then the real one
        (["x y", " z"], ["y z", "x"]),  # the earliest stop in the text wins, whichever is listed first
        (["text end"], ["end", "text"]),
    ],
)
def test_streamed_stops_cut_where_the_whole_text_is_cut(deltas: list[str], stops: list[str]) -> None:
    assert stream_through(deltas, stops) == cut_at_stop("".join(deltas), stops)


def test_text_that_could_begin_a_stop_is_held_back_until_it_cannot() -> None:
    scanner = StopScanner(["circle."])
    assert scanner.feed("a red cir") == "a red "
    assert scanner.feed("cus") == "circus"
    assert scanner.feed(" circle") == " "
    assert scanner.flush() == "circle"


def test_unsupported_parameters_are_named() -> None:
    def refused(**fields: object) -> str | None:
        body = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user"}], **fields})
        found = body.unsupported()
        return found[0] if found else None

    assert refused(temperature=0, top_p=1, n=1, seed=7, user="u", response_format={"type": "text"}) is None
    assert refused(temperature=0.7) == "temperature"
    assert refused(top_p=0.9) == "top_p"
    assert refused(n=2) == "n"
    assert refused(logprobs=True) == "logprobs"
    assert refused(tools=[{"type": "function", "function": {"name": "f"}}]) == "tools"
    assert refused(response_format={"type": "json_object"}) == "response_format"
    assert refused(stream_options={"include_usage": True}) == "stream_options"  # without stream


def allowing(*hosts: str, **more: object) -> Settings:
    return Settings(allow_image_urls=True, image_url_hosts=",".join(hosts), **more)  # type: ignore[arg-type]


async def refusal(url: str, settings: Settings) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        await image_bytes(url, PARAM, settings, transport=httpx.MockTransport(unreachable))
    assert caught.value.param == PARAM
    return caught.value


def unreachable(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"a refused URL was fetched: {request.url}")


@pytest.mark.anyio
async def test_http_urls_are_refused_unless_allowed() -> None:
    error = await refusal("https://images.example.com/cat.png", Settings())
    assert isinstance(error, ImageURLRefused) and "MMSERVE_ALLOW_IMAGE_URLS" in error.message
    error = await refusal("https://elsewhere.example.com/cat.png", allowing("images.example.com"))
    assert isinstance(error, ImageURLRefused) and "'elsewhere.example.com' is not in" in error.message
    error = await refusal("ftp://images.example.com/cat.png", allowing("images.example.com"))
    assert isinstance(error, UnsupportedParameter)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "[::1]", "169.254.169.254", "10.1.2.3", "192.168.0.7", "172.16.5.5", "[fe80::1]",
     "[::ffff:127.0.0.1]", "0.0.0.0", "100.64.0.1", "[fd00::1]"],
)  # fmt: skip
async def test_non_public_addresses_are_never_fetched_even_when_listed(host: str) -> None:
    error = await refusal(f"http://{host}:8080/cat.png", allowing(host.strip("[]")))
    assert isinstance(error, ImageURLRefused) and "non-public address" in error.message


def test_is_public() -> None:
    assert is_public(ipaddress.ip_address(PUBLIC)) and is_public(ipaddress.ip_address("2606:4700::1111"))
    assert not is_public(ipaddress.ip_address("::ffff:10.0.0.1"))


@pytest.mark.anyio
async def test_an_allowed_public_url_is_fetched_from_the_checked_address() -> None:
    seen: list[httpx.Request] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"\x89PNG not really")

    url = f"http://{PUBLIC}/a.png?x=1"
    data = await image_bytes(url, PARAM, allowing(PUBLIC), transport=httpx.MockTransport(serve))
    assert data == b"\x89PNG not really"
    [request] = seen
    assert request.url.host == PUBLIC and request.url.query == b"x=1" and request.headers["host"] == PUBLIC


@pytest.mark.anyio
async def test_fetches_are_capped_and_redirects_not_followed() -> None:
    def big(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 2048)

    with pytest.raises(PayloadTooLarge):
        await image_bytes(f"http://{PUBLIC}/a.png", PARAM, allowing(PUBLIC, max_upload_bytes=1024),
                          transport=httpx.MockTransport(big))  # fmt: skip

    def redirect(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "http://127.0.0.1/secret"})

    with pytest.raises(ImageURLFailed, match="redirects are not followed"):
        await image_bytes(f"http://{PUBLIC}/a.png", PARAM, allowing(PUBLIC), transport=httpx.MockTransport(redirect))


@pytest.mark.anyio
async def test_data_urls_are_decoded_and_bad_ones_named() -> None:
    assert await image_bytes("data:image/png;base64,aGVsbG8=", PARAM, Settings()) == b"hello"
    with pytest.raises(InvalidImage) as caught:
        await image_bytes("data:image/png;base64,@@@", PARAM, Settings())
    assert caught.value.param == PARAM and PARAM in caught.value.message
