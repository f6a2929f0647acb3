"""LitServe serving the built-in model's /embed and /caption, batched with mmserve's batch size and wait.

Each endpoint is a `LitAPI` with its own inference worker process, as LitServe runs them. Its
`batch_timeout` is mmserve's `max_wait_ms` for the task, at least 1 ms: with 0, LitServe polls its
queue without sleeping. Requests and responses have mmserve's JSON shapes. `decode_request` and
`encode_response` stay unannotated: LitServe builds its routes from those annotations.
"""

from __future__ import annotations

from typing import Any

import litserve as ls

from bench.peers.common import (
    DEFAULT_MAX_NEW_TOKENS,
    EchoRequestId,
    arguments,
    caption_response,
    decode_image,
    embed_response,
    load,
)
from service.settings import Settings

MIN_BATCH_TIMEOUT_S = 0.001


class EmbedAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = load(device)

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # unannotated: LitServe passes the JSON
        return str(request["input"])

    def batch(self, inputs: list[str]) -> list[str]:
        return list(inputs)

    def predict(self, texts: list[str]) -> list[list[float]]:
        return self.model.embed_text(texts).tolist()

    def unbatch(self, output: list[list[float]]) -> list[list[float]]:
        return list(output)

    def encode_response(self, vector):  # type: ignore[no-untyped-def]  # unannotated: LitServe sends it as JSON
        return embed_response(self.model, vector)


class CaptionAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = load(device)

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return decode_image(request["image"]), int(request.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))

    def batch(self, inputs: list[tuple[Any, int]]) -> list[tuple[Any, int]]:
        return list(inputs)

    def predict(self, inputs: list[tuple[Any, int]]) -> list[str]:
        return self.model.caption([image for image, _ in inputs], [limit for _, limit in inputs])

    def unbatch(self, output: list[str]) -> list[str]:
        return list(output)

    def encode_response(self, caption):  # type: ignore[no-untyped-def]
        return caption_response(self.model, caption)


def server(device: str) -> ls.LitServer:
    settings = Settings()
    apis = []
    for api, task, path in ((EmbedAPI, "embed_text", "/embed"), (CaptionAPI, "caption", "/caption")):
        policy = settings.batch_policy(task)
        timeout_s = max(policy.max_wait_ms / 1000, MIN_BATCH_TIMEOUT_S)
        apis.append(api(max_batch_size=policy.max_batch_size, batch_timeout=timeout_s, api_path=path))
    accelerator = "cuda" if device.startswith("cuda") else "cpu"
    return ls.LitServer(apis, accelerator=accelerator, devices=1, workers_per_device=1, middlewares=[EchoRequestId])


if __name__ == "__main__":
    args = arguments(__doc__.split("\n")[0])
    server(args.device).run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")
