"""Images of /v1/chat/completions given as URLs: data URLs decoded, http(s) URLs fetched only when allowed.

Fetching is off by default (`MMSERVE_ALLOW_IMAGE_URLS`); when on, only from the hosts in
`MMSERVE_IMAGE_URL_HOSTS`, and never from a loopback, link-local, private or otherwise non-public
address: the host is resolved once, every address it resolves to is checked, and the connection goes to
a checked address (the name kept for the Host header and TLS), so a second lookup cannot point it
elsewhere. Redirects are not followed; the body is capped at `MMSERVE_MAX_UPLOAD_BYTES` and the whole
fetch at `MMSERVE_IMAGE_URL_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit, urlunsplit

import httpx

from service.errors import InvalidImage, PayloadTooLarge, ServiceError
from service.openai.errors import UnsupportedParameter
from service.schemas import _decode_base64
from service.settings import Settings
from service.uploads import Offload, to_thread

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ImageURLRefused(ServiceError):
    """An http(s) image URL the server will not fetch (not allowed, or a non-public address)."""

    status_code = 400
    error_type = "image_url_refused"


class ImageURLFailed(ServiceError):
    """An allowed image URL that could not be fetched."""

    status_code = 400
    error_type = "image_url_failed"


async def image_bytes(
    url: str,
    param: str,
    settings: Settings,
    transport: httpx.AsyncBaseTransport | None = None,
    offload: Offload = to_thread,
) -> bytes:
    """The image's bytes: a data URL decoded (off the event loop), or an allowed http(s) URL fetched (400/413
    otherwise)."""
    if url.startswith("data:"):
        return await offload(lambda: data_url_bytes(url, param, settings))
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsupportedParameter(
            f"{param}: send a data URL (data:image/png;base64,...) or an http(s) URL", param=param
        )
    if not settings.allow_image_urls:
        raise ImageURLRefused(
            f"{param}: image URLs are not fetched by this server: send the image as a data URL "
            "(data:image/png;base64,...); the operator can allow listed hosts with MMSERVE_ALLOW_IMAGE_URLS "
            "and MMSERVE_IMAGE_URL_HOSTS",
            param=param,
        )
    host = (parts.hostname or "").lower()
    if host not in settings.image_url_host_list():
        raise ImageURLRefused(f"{param}: the host {host!r} is not in MMSERVE_IMAGE_URL_HOSTS", param=param)
    try:
        async with asyncio.timeout(settings.image_url_timeout_s):
            address = await public_address(host, parts.port or (443 if parts.scheme == "https" else 80), param)
            return await _fetch(url, address, param, settings, transport)
    except TimeoutError as e:
        raise ImageURLFailed(
            f"{param}: fetching the image took longer than {settings.image_url_timeout_s:g} s", param=param
        ) from e


def data_url_bytes(url: str, param: str, settings: Settings) -> bytes:
    """A data URL's bytes (400 when it is not base64, 413 over the upload limit)."""
    try:
        data = _decode_base64(url)
    except ValueError as e:
        raise InvalidImage(f"{param}: {e}", param=param) from e
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"{param}: the image is larger than the limit of {settings.max_upload_bytes} bytes")
    return data


async def public_address(host: str, port: int, param: str) -> IPAddress:
    """One address of `host`, after checking that every address it resolves to is public."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ImageURLFailed(f"{param}: the host {host!r} cannot be resolved", param=param) from e
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise ImageURLFailed(f"{param}: the host {host!r} has no address", param=param)
    for address in addresses:
        if not is_public(address):
            raise ImageURLRefused(
                f"{param}: the host {host!r} resolves to {address}, a non-public address; it is never fetched",
                param=param,
            )
    return addresses[0]


def is_public(address: IPAddress) -> bool:
    """False for loopback, link-local, private, multicast, reserved and unspecified addresses (mapped IPv4 too)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not (
        address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


async def _fetch(
    url: str, address: IPAddress, param: str, settings: Settings, transport: httpx.AsyncBaseTransport | None
) -> bytes:
    """GET the URL from the checked address (no redirects), reading at most the upload limit."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal + (f":{parts.port}" if parts.port else "")
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    limit = settings.max_upload_bytes
    headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/*"}
    try:
        async with (
            httpx.AsyncClient(
                transport=transport, timeout=settings.image_url_timeout_s, follow_redirects=False
            ) as client,
            client.stream("GET", pinned, headers=headers, extensions={"sni_hostname": host}) as response,
        ):
            if response.is_redirect:
                raise ImageURLFailed(
                    f"{param}: the URL redirects ({response.status_code}); redirects are not followed", param=param
                )
            if response.status_code != 200:
                raise ImageURLFailed(f"{param}: the URL answered {response.status_code}", param=param)
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise PayloadTooLarge(f"{param}: the image is larger than the limit of {limit} bytes")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise PayloadTooLarge(f"{param}: the image is larger than the limit of {limit} bytes")
            return bytes(body)
    except httpx.HTTPError as e:
        raise ImageURLFailed(f"{param}: the image could not be fetched ({type(e).__name__})", param=param) from e
