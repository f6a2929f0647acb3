"""SIGTERM loses nothing that reached the server: 64 keep-alive clients, SIGTERM mid-load, 20 times over.

Each client sends `/embed` requests one after another on a shared keep-alive pool. After SIGTERM every
request must still end in an HTTP response (200 for the accepted ones, 503 with `Connection: close` for
new ones) or be refused at connect once the listener is gone: never a connection closed under a request
already sent (httpx `ReadError` / `RemoteProtocolError`), which the client cannot tell from a lost one.
A client told 503 stops, as a load balancer would send its next request elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter

import httpx
import pytest

from tests.support.server import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

ROUNDS = int(os.environ.get("SIGTERM_ROUNDS", "20"))  # fewer for a quick look
CLIENTS = 64
LOST = "connection closed under a sent request"
REFUSED = "refused at connect"


async def one_round(settings: dict[str, str], seed: int) -> Counter[str]:
    """One server, loaded by `CLIENTS` clients, then SIGTERM; the outcome of every request, counted."""
    outcomes: Counter[str] = Counter()
    server = ServerProcess(settings).start()
    try:
        server.wait_until("ok")
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:

            async def send_until_refused(index: int) -> None:
                for n in range(10_000):
                    try:
                        response = await client.post("/embed", json={"input": f"client {index} request {n}"})
                    except httpx.ConnectError:
                        outcomes[REFUSED] += 1
                        return
                    except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                        outcomes[LOST] += 1
                        return
                    outcomes[str(response.status_code)] += 1
                    if response.status_code == 503:
                        assert response.headers["connection"] == "close"
                        assert response.json()["error"]["message"] == "the server is shutting down"
                        return

            clients = [asyncio.create_task(send_until_refused(i)) for i in range(CLIENTS)]
            while outcomes["200"] < 2 * CLIENTS:  # every client is sending: mid-load
                await asyncio.sleep(0.01)
            await asyncio.sleep(random.Random(seed).uniform(0, 0.2))
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.gather(*clients), 120)
        assert server.process.wait(60) in (0, -signal.SIGTERM), server.log()
    finally:
        server.stop()
    return outcomes


async def test_sigterm_under_64_keep_alive_clients_closes_no_connection_under_a_sent_request(
    base_settings: dict[str, str],
) -> None:
    settings = {**base_settings, "MMSERVE_DRAIN_GRACE_S": "5"}
    rounds = [await one_round(settings, seed) for seed in range(ROUNDS)]
    total = sum(rounds, Counter())
    print(f"{ROUNDS} rounds of {CLIENTS} clients: {dict(total)}")
    assert total[LOST] == 0, rounds
    assert set(total) <= {"200", "503", REFUSED}, total
    assert all(r["503"] + r[REFUSED] == CLIENTS for r in rounds)  # every client heard the server stop
