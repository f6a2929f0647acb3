"""Fault injection, for tests of a real process or container (`MMSERVE_FAULT_INJECTION=true`; off by default).

Three routes, mounted only when the setting is on and never in the OpenAPI document:
- `POST /faults/device` breaks the device: from now on every batch and `/health`'s device check fail as a
  lost CUDA context does (a sticky "CUDA error"), so the service turns unhealthy and exits (status 5);
- `POST /faults/inference-thread` raises an exception inside the inference thread, wherever it is (as a
  bug in the step loop would), so the thread dies and the process exits (status 6);
- `POST /faults/stall?seconds=S` holds the inference thread's next whole batch for S seconds (once), so the
  requests that reach this server meanwhile are certainly inside it: tests/deploy/test_ray_serve.py kills
  a Ray replica while it holds requests.
Each answers 202 at once; the failure follows within a moment (the next batch or device check, or the
thread's next instruction). docker/smoke-test.sh uses them to watch compose restart the container.
"""

from __future__ import annotations

import ctypes
import logging
import time
from typing import Any, NoReturn

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.runtime import Runtime

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/faults", include_in_schema=False)

INJECTED = "injected by MMSERVE_FAULT_INJECTION"


class InjectedFault(BaseException):
    """Raised inside the inference thread: a BaseException, so nothing in the step loop handles it."""


@router.post("/device", status_code=202)
async def break_device(request: Request) -> JSONResponse:
    """Make every later use of the device fail like a lost CUDA context."""
    runtime: Runtime = request.app.state.runtime
    engine = runtime.engine
    if engine is None:
        return JSONResponse({"fault": "device", "injected": False, "reason": "not loaded yet"}, status_code=409)

    def broken(*args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError(f"CUDA error: an illegal memory access was encountered ({INJECTED})")

    # On this engine object only: the batch path and /health's device check.
    engine.run = broken  # type: ignore[method-assign]
    engine.check_device = broken  # type: ignore[method-assign]
    logger.warning("fault injection: the device is broken from now on")
    return JSONResponse({"fault": "device", "injected": True}, status_code=202)


@router.post("/inference-thread", status_code=202)
async def kill_inference_thread(request: Request) -> JSONResponse:
    """Raise `InjectedFault` in the inference thread, so that it dies."""
    runtime: Runtime = request.app.state.runtime
    thread = runtime.inference_thread
    if thread.ident is None or not thread.is_alive():
        return JSONResponse({"fault": "inference-thread", "injected": False, "reason": "not running"}, status_code=409)
    raised = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(InjectedFault))
    logger.warning("fault injection: killing the inference thread")
    thread.flush()  # wakes it if it waits for work (it dies at its next instruction: the flag never matters)
    return JSONResponse({"fault": "inference-thread", "injected": raised == 1}, status_code=202)


@router.post("/stall", status_code=202)
async def stall_inference(request: Request, seconds: float = 20.0) -> JSONResponse:
    """Hold the inference thread's next whole batch for `seconds` (once); what arrives meanwhile waits inside."""
    runtime: Runtime = request.app.state.runtime
    engine = runtime.engine
    if engine is None:
        return JSONResponse({"fault": "stall", "injected": False, "reason": "not loaded yet"}, status_code=409)
    run = engine.run

    def held(*args: Any, **kwargs: Any) -> Any:
        engine.run = run  # type: ignore[method-assign]  # once
        logger.warning("fault injection: holding the inference thread for %g s", seconds)
        time.sleep(seconds)
        return run(*args, **kwargs)

    engine.run = held  # type: ignore[method-assign]
    return JSONResponse({"fault": "stall", "injected": True, "seconds": seconds}, status_code=202)
