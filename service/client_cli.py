"""`mmserve caption|vqa|embed|transcribe`: the service's client, for a shell, against a running server.

`vqa IMAGE QUESTION` asks a typed question; `vqa IMAGE --question-audio FILE` a spoken one (the answer, and
on stderr what was heard). `transcribe FILE --format text|json|srt|vtt`: the transcript's text, the
server's JSON with segment times (/transcribe with `segments`), or subtitles (OpenAI's route's `srt`/`vtt`).

The server is `--url` (else `MMSERVE_URL`, else http://127.0.0.1:8000) and the key `--api-key` (else
`MMSERVE_API_KEY`). Output is readable by default and the server's JSON with `--json`. Exit codes:
0 done; 1 the server refused or failed (its message on stderr); 2 bad usage or an unreadable local
file; 3 the server could not be reached or did not answer in time.
"""

from __future__ import annotations

import argparse
import json
import math
import mimetypes
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_SERVER_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
FORMATS = ("text", "json", "srt", "vtt")


class ClientError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The client subcommands, on the `mmserve` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help=f"the server (MMSERVE_URL; default {DEFAULT_URL})")
    common.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer' (MMSERVE_API_KEY)")
    common.add_argument("--json", action="store_true", help="print the server's JSON answers")
    common.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")

    caption = commands.add_parser("caption", parents=[common], help="caption images on a running server")
    caption.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    caption.add_argument("--max-new-tokens", type=int, default=None)
    caption.set_defaults(run=run_caption)

    vqa = commands.add_parser("vqa", parents=[common], help="ask a running server a question about an image")
    vqa.add_argument("image", type=Path, metavar="IMAGE")
    vqa.add_argument("question", metavar="QUESTION", nargs="?", help="typed (or give --question-audio)")
    vqa.add_argument("--question-audio", type=Path, metavar="FILE", help="a spoken question (WAV, FLAC, Ogg, MP3)")
    vqa.set_defaults(run=run_vqa)

    transcribe = commands.add_parser("transcribe", parents=[common], help="transcribe speech on a running server")
    transcribe.add_argument("audio", type=Path, metavar="FILE")
    transcribe.add_argument(
        "--format", choices=FORMATS, default="text", help="text (default), json (with segment times), srt or vtt"
    )
    transcribe.add_argument("--language", default=None, help="an ISO 639-1 code; default: the model detects it")
    transcribe.set_defaults(run=run_transcribe)

    embed = commands.add_parser("embed", parents=[common], help="embed texts on a running server")
    embed.add_argument("texts", nargs="+", metavar="TEXT")
    embed.set_defaults(run=run_embed)

    from service.client_generate import add_generate_command  # (it uses this module's helpers)

    add_generate_command(commands, common)


def run(args: argparse.Namespace) -> int:
    """Run a client subcommand; the exit code."""
    url = (args.url or os.environ.get("MMSERVE_URL") or DEFAULT_URL).rstrip("/")
    key = args.api_key or os.environ.get("MMSERVE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    command: Callable[[httpx.Client, argparse.Namespace], None] = args.run
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=args.timeout) as client:
            command(client, args)
    except ClientError as e:
        print(f"mmserve: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def run_caption(client: httpx.Client, args: argparse.Namespace) -> None:
    fields = {"max_new_tokens": str(args.max_new_tokens)} if args.max_new_tokens else {}
    uploads = [upload(path) for path in args.images]  # every file readable before the first request
    for path, files in zip(args.images, uploads, strict=True):
        answer = post(client, "/caption", files=files, data=fields)
        show(args, answer, f"{path}: {answer['caption']}" if len(args.images) > 1 else answer["caption"])


def run_vqa(client: httpx.Client, args: argparse.Namespace) -> None:
    if (args.question is None) == (args.question_audio is None):
        raise ClientError("give a QUESTION or --question-audio FILE (one of them)", EXIT_USAGE)
    if args.question_audio is None:
        answer = post(client, "/vqa", files=upload(args.image), data={"question": args.question})
    else:
        files = {**upload(args.image), **upload(args.question_audio, "question_audio")}
        answer = post(client, "/vqa", files=files)
        if not args.json:
            print(f"heard: {answer['heard']}", file=sys.stderr)
    show(args, answer, answer["answer"])


def run_transcribe(client: httpx.Client, args: argparse.Namespace) -> None:
    language = {"language": args.language} if args.language else {}
    audio = upload(args.audio, "audio")
    if args.format in ("srt", "vtt"):  # the server writes the subtitles (OpenAI's route)
        model = str(get(client, "/health").get("models", {}).get("transcribe", ""))
        files = {"file": audio["audio"]}
        data = {"model": model, "response_format": args.format, **language}
        print(request(client, "/v1/audio/transcriptions", files=files, data=data).text, end="")
        return
    segments = {"segments": "true"} if args.format == "json" else {}
    answer = post(client, "/transcribe", files=audio, data={**language, **segments})
    show(args, answer, json.dumps(answer, indent=2) if args.format == "json" else answer["text"])


def run_embed(client: httpx.Client, args: argparse.Namespace) -> None:
    answer = post(client, "/embed", json={"input": args.texts})
    vectors = [item["embedding"] for item in answer["data"]]
    lines = [f"{answer['dim']}-dimensional embeddings from {answer['model']}"]
    for text, vector in zip(args.texts, vectors, strict=True):
        head = ", ".join(f"{x:+.4f}" for x in vector[:4])
        lines.append(f"  {text!r}: [{head}, ...] (norm {math.sqrt(sum(x * x for x in vector)):.3f})")
    if len(vectors) > 1:
        lines.append("cosine similarity:")
        for i, a in enumerate(vectors):
            cells = " ".join(f"{sum(x * y for x, y in zip(a, b, strict=True)):6.3f}" for b in vectors)
            lines.append(f"  [{i}] {cells}")
    show(args, answer, "\n".join(lines))


def upload(path: Path, field: str = "image") -> dict[str, tuple[str, bytes, str]]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ClientError(f"cannot read {path}: {e.strerror}", EXIT_USAGE) from e
    return {field: (path.name, data, mimetypes.guess_type(path.name)[0] or "application/octet-stream")}


def post(client: httpx.Client, route: str, **fields: Any) -> dict[str, Any]:
    """The JSON answer of a POST, or a `ClientError` saying what went wrong, as the server put it."""
    body: dict[str, Any] = request(client, route, **fields).json()
    return body


def get(client: httpx.Client, route: str) -> dict[str, Any]:
    body: dict[str, Any] = request(client, route, method="GET").json()
    return body


def request(client: httpx.Client, route: str, method: str = "POST", **fields: Any) -> httpx.Response:
    """A successful response, or a `ClientError` saying what went wrong, as the server put it."""
    try:
        response = client.request(method, route, **fields)
    except httpx.TimeoutException as e:
        raise ClientError(f"{client.base_url} did not answer within {client.timeout.read} s", EXIT_UNREACHABLE) from e
    except httpx.TransportError as e:
        message = f"cannot reach the server at {client.base_url} ({e}); is it running?"
        raise ClientError(message, EXIT_UNREACHABLE) from e
    if response.is_success:
        return response
    raise ClientError(f"{response.status_code} {response.reason_phrase}: {server_message(response)}", EXIT_SERVER_ERROR)


def server_message(response: httpx.Response) -> str:
    """The server's own words for an error: its error message, or FastAPI's validation details."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or "(no message)"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message"))
    if isinstance(body, dict) and isinstance(body.get("detail"), list):
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in body["detail"])
    return json.dumps(body)


def show(args: argparse.Namespace, answer: dict[str, Any], readable: str) -> None:
    print(json.dumps(answer) if args.json else readable)
