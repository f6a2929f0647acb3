"""The HTTP side of docker/smoke-test.sh: standard library only, so any python3 on the host runs it.

    smoke_client.py check URL SCENES [--strict]      /health, /caption, /vqa, /embed: the model's own answers
    smoke_client.py spread URL SCENES --requests N   requests through the balancer reach every replica
    smoke_client.py load URL SCENES --seconds S      a steady stream of requests; every one must succeed
    smoke_client.py fault URL device|inference-thread  break a server run with MMSERVE_FAULT_INJECTION=true
    smoke_client.py healthy URL --seconds S          wait until /health answers 200

SCENES is the JSON written by docker/smoke_scenes.py. Each command prints what it saw and exits 1 on
the first broken expectation (`load`: once the stream ends, if any request failed).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from typing import Any

TIMEOUT_S = 180  # above the service's own MMSERVE_REQUEST_TIMEOUT_S in the smoke test (120)


class SmokeFailure(Exception):
    pass


def request(url: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, dict, Any]:
    """(status, headers, parsed JSON or text) of one request; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            status, headers, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, dict(e.headers), e.read()
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode(errors="replace")


def post_json(url: str, payload: dict) -> tuple[int, dict, Any]:
    return request(url, json.dumps(payload).encode(), "application/json")


def post_multipart(url: str, fields: dict[str, str], image_png: bytes) -> tuple[int, dict, Any]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="scene.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + image_png
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return request(url, b"".join(parts), f"multipart/form-data; boundary={boundary}")


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise SmokeFailure(what)


def expect_ok(status: int, body: Any, what: str) -> None:
    expect(status == 200, f"{what}: HTTP {status}: {str(body)[:300]}")


def expect_unit_vector(vector: list[float], dim: int, what: str) -> None:
    expect(len(vector) == dim, f"{what}: {len(vector)} numbers, expected {dim}")
    norm = math.sqrt(sum(x * x for x in vector))
    expect(abs(norm - 1) < 1e-3, f"{what}: norm {norm:.4f}, expected 1")


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def check(url: str, reference: dict, strict: bool) -> None:
    """Every endpoint answers what the model answers when called directly; with `strict`, the captions
    must also be the scenes' true captions (VQA answers against the truth are reported only)."""
    scenes = reference["scenes"]
    status, _, health = request(f"{url}/health")
    expect_ok(status, health, "/health")
    expect(health.get("status") == "ok", f"/health: {health}")
    print(f"  /health: ok, model {health.get('model')!r} on {health.get('device')}, tasks {health.get('tasks')}")

    wrong_captions = wrong_answers = 0
    for scene in scenes:
        status, _, body = post_json(f"{url}/caption", {"image": scene["png_base64"]})
        expect_ok(status, body, f"/caption seed {scene['seed']}")
        caption = body.get("caption")
        expect(
            caption == scene["model_caption"],
            f"/caption seed {scene['seed']}: served {caption!r}, the model itself says {scene['model_caption']!r}",
        )
        mark = "=" if caption == scene["caption"] else "≠"
        wrong_captions += mark == "≠"
        print(f"  /caption seed {scene['seed']}: {caption!r} {mark} truth {scene['caption']!r}")

        status, _, body = post_json(f"{url}/vqa", {"image": scene["png_base64"], "question": scene["question"]})
        expect_ok(status, body, f"/vqa seed {scene['seed']}")
        answer = body.get("answer")
        expect(
            answer == scene["model_answer"],
            f"/vqa seed {scene['seed']}: served {answer!r}, the model itself says {scene['model_answer']!r}",
        )
        mark = "=" if answer == scene["answer"] else "≠"
        wrong_answers += mark == "≠"
        print(f"  /vqa {scene['question']!r}: {answer!r} {mark} truth {scene['answer']!r}")
    print("  every caption and answer is the model's own (called directly, in the image)")

    png = base64.b64decode(scenes[0]["png_base64"])
    status, _, body = post_multipart(f"{url}/caption", {"max_new_tokens": "20"}, png)
    expect_ok(status, body, "/caption (multipart)")
    print(f"  /caption (multipart upload, max_new_tokens=20): {body['caption']!r}")

    texts = [scene["caption"] for scene in scenes]
    status, _, body = post_json(f"{url}/embed", {"input": texts})
    expect_ok(status, body, "/embed (texts)")
    dim = body.get("dim")
    expect(dim == 384, f"/embed: dim {dim}, expected 384 (all-MiniLM-L6-v2)")
    expect([item["index"] for item in body["data"]] == list(range(len(texts))), "/embed: indices out of order")
    for item, expected in zip(body["data"], reference["caption_embeddings"], strict=True):
        expect_unit_vector(item["embedding"], dim, f"/embed text {item['index']}")
        similarity = cosine(item["embedding"], expected)
        expect(similarity > 0.9999, f"/embed text {item['index']}: cosine {similarity:.6f} to the model's own")
    status, _, body = post_json(f"{url}/embed", {"image": scenes[0]["png_base64"]})
    expect_ok(status, body, "/embed (image)")
    embedding = body["data"][0]["embedding"]
    expect_unit_vector(embedding, body["dim"], "/embed image")
    similarity = cosine(embedding, scenes[0]["model_image_embedding"])
    expect(similarity > 0.9999, f"/embed image: cosine {similarity:.6f} to the model's own")
    print(f"  /embed: {len(texts)} texts and 1 image → unit vectors of {dim}, equal to the model's own")

    status, _, body = post_json(f"{url}/caption", {"image": base64.b64encode(b"not an image").decode()})
    expect(status == 400 and "error" in body, f"/caption with bad bytes: HTTP {status} {body}, expected 400")
    print("  /caption with bytes that are no image: 400 in the error shape")

    print(
        f"  against the scenes' truth: {len(scenes) - wrong_captions}/{len(scenes)} captions, "
        f"{len(scenes) - wrong_answers}/{len(scenes)} VQA answers right"
    )
    if wrong_captions:
        if strict:
            raise SmokeFailure(f"{wrong_captions} captions differ from the truth (SMOKE_CHECK_ANSWERS=0 to accept)")
        print("  (not required: SMOKE_CHECK_ANSWERS=0)")


def replica_of(headers: dict) -> str:
    """The replica that answered: the last address in nginx's X-Upstream (earlier ones failed)."""
    return headers.get("X-Upstream", "?").split(",")[-1].strip()


def spread(url: str, scenes: list[dict], requests: int) -> None:
    """Sequential requests through the balancer: more than one replica must answer."""
    replicas = Counter()
    for i in range(requests):
        status, headers, body = post_json(f"{url}/caption", {"image": scenes[i % len(scenes)]["png_base64"]})
        expect_ok(status, body, "/caption through the balancer")
        replicas[replica_of(headers)] += 1
    print(f"  {requests} requests through the balancer, by replica: {dict(replicas)}")
    expect(len(replicas) >= 2 and "?" not in replicas, "requests did not reach two replicas")


def load(url: str, scenes: list[dict], seconds: float, concurrency: int) -> None:
    """Send requests from `concurrency` threads for `seconds`; every one must succeed."""
    outcomes: Counter[str] = Counter()
    retried = 0
    replicas_by_second: dict[int, set[str]] = {}
    failures: list[str] = []
    lock = threading.Lock()
    started = time.monotonic()

    def worker(index: int) -> None:
        nonlocal retried
        i = index
        while time.monotonic() - started < seconds:
            scene = scenes[i % len(scenes)]
            i += concurrency
            try:
                status, headers, body = post_json(f"{url}/caption", {"image": scene["png_base64"]})
            except Exception as e:  # a refused or reset connection: lost
                status, headers, body = 0, {}, repr(e)
            with lock:
                outcomes[str(status)] += 1
                retried += "," in headers.get("X-Upstream", "")
                second = int(time.monotonic() - started)
                replicas_by_second.setdefault(second, set()).add(replica_of(headers))
                if status != 200:
                    failures.append(f"t={time.monotonic() - started:.1f}s HTTP {status}: {str(body)[:200]}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(outcomes.values())
    timeline = " ".join(f"{s}s:{len(r)}" for s, r in sorted(replicas_by_second.items()))
    print(
        f"  {total} requests in {seconds:.0f} s from {concurrency} clients: {dict(outcomes)}, "
        f"{retried} retried on the other replica by nginx"
    )
    print(f"  replicas answering, per second: {timeline}")
    for failure in failures[:10]:
        print(f"    {failure}")
    expect(not failures, f"{len(failures)} of {total} requests failed")


def fault(url: str, kind: str) -> None:
    """Inject `kind`; the server must take it (202) and then refuse work with 503 as it turns unhealthy."""
    status, _, body = request(f"{url}/faults/{kind}", b"")
    expect(status == 202 and body.get("injected") is True, f"POST /faults/{kind}: HTTP {status} {body}")
    deadline = time.monotonic() + 30
    while True:
        try:
            status, _, body = post_json(f"{url}/embed", {"input": "after the fault"})
        except OSError as e:  # it exited already
            print(f"  POST /faults/{kind}: 202; then /embed: {e!r} (the process has exited)")
            return
        if status == 503:
            print(f"  POST /faults/{kind}: 202; then /embed: 503 {body['error']['message']!r}")
            return
        expect(time.monotonic() < deadline, f"/embed after the fault: still HTTP {status}")
        time.sleep(0.2)


def healthy(url: str, seconds: float) -> None:
    """Poll /health until it answers 200 (connections refused meanwhile are expected: a restart)."""
    started = time.monotonic()
    while True:
        try:
            status, _, body = request(f"{url}/health")
        except OSError:
            status, body = 0, "no answer"
        if status == 200:
            print(f"  /health 200 after {time.monotonic() - started:.0f} s")
            return
        expect(time.monotonic() - started < seconds, f"/health not 200 within {seconds:.0f} s: {status} {body}")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("check", "spread", "load", "fault", "healthy"))
    parser.add_argument("url")
    parser.add_argument("scenes", help="JSON from docker/smoke_scenes.py (fault: the fault's kind)", nargs="?")
    parser.add_argument("--strict", action="store_true", help="captions and answers must equal the truth")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    try:
        if args.command == "fault":
            fault(url, args.scenes)
            return
        if args.command == "healthy":
            healthy(url, args.seconds)
            return
    except SmokeFailure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    with open(args.scenes) as f:
        reference = json.load(f)
    scenes = reference["scenes"]
    url = args.url.rstrip("/")
    try:
        if args.command == "check":
            check(url, reference, args.strict)
        elif args.command == "spread":
            spread(url, scenes, args.requests)
        else:
            load(url, scenes, args.seconds, args.concurrency)
    except SmokeFailure as e:
        print(f"  FAILED: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
