"""Decoding steps of fixed shapes: batch-size buckets, and one CUDA graph of the step per bucket.

A CUDA graph replays the kernels it recorded on the tensors it recorded them on: the step it captures
must have the same shapes every time and read and write only long-lived ("static") buffers. So a
fixed-shape step runs over a bucket of rows (1, 2, 4, 8, ..., the state's capacity), the rows past the
running ones padded, and attends over every cached position, masked, instead of the longest row's.
`DecodeState` keeps its inputs (each slot's last token and position) and caches in such buffers; this
module records and replays its step per bucket (as vLLM and gpt-fast do for their decode steps), and falls
back to running it eagerly, with a log line, where capture fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

StepOutputs = tuple[torch.Tensor, torch.Tensor]  # the chosen ids (b,) and (id, log-probability) pairs (b, 2)


@dataclass(frozen=True)
class DecodeOptions:
    """How the built-in model's continuous-batching step runs (results are the same token for token)."""

    fixed_shapes: bool = False  # rows padded to a bucket, attention over all max_len positions (masked)
    cuda_graphs: bool = False  # each bucket's step captured as a CUDA graph and replayed (implies fixed_shapes)

    @classmethod
    def resolve(
        cls, device: torch.device, fixed_shapes: bool | None = None, cuda_graphs: bool | None = None
    ) -> DecodeOptions:
        """The options for `device`: None means off (on a CPU the fixed shapes cost compute and there is nothing
        to capture, docs/benchmarks.md; on CUDA the graphs have not been measured yet, `bench/gpu_check.sh`).
        Graphs need CUDA and imply fixed shapes."""
        cuda = device.type == "cuda"
        graphs = bool(cuda_graphs)
        if graphs and not cuda:
            logger.warning("CUDA graphs need a CUDA device (this one is %s): decoding steps run eagerly", device)
            graphs = False
        fixed = bool(fixed_shapes) or graphs
        return cls(fixed_shapes=fixed, cuda_graphs=graphs)


def bucket(rows: int, capacity: int) -> int:
    """The bucket of `rows` running rows: the next power of two, at most `capacity` (the largest bucket)."""
    size = 1
    while size < rows:
        size *= 2
    return min(size, capacity)


class StepGraphs:
    """`step(b)` captured as one CUDA graph per bucket `b`, on first use, and replayed after that.

    `step` must read and write only static buffers (and allocate the rest), so that a replay computes what
    a call would for the buffers' current contents; running it twice must do no harm (its warm-up run
    before capture computes a step for real: it writes the same keys and values the replay writes).
    """

    def __init__(self, step: Callable[[int], StepOutputs]) -> None:
        self._step = step
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, StepOutputs]] = {}
        self.failed = False  # a capture failed: every step runs eagerly from then on

    @property
    def captured(self) -> list[int]:
        """The buckets with a graph."""
        return sorted(self._graphs)

    def run(self, size: int) -> StepOutputs:
        """The step of bucket `size`: the graph's replay (its outputs are overwritten by the next replay)."""
        if self.failed:
            return self._step(size)
        if size not in self._graphs:
            try:
                self._graphs[size] = self._capture(size)
            except Exception:
                logger.warning(
                    "capturing the decoding step (bucket %d) as a CUDA graph failed: eager",
                    size,
                    exc_info=True,
                )
                self.failed = True
                self._graphs.clear()
                return self._step(size)
        graph, outputs = self._graphs[size]
        graph.replay()
        return outputs

    def clear(self) -> None:
        """Forget the graphs (the buffers they read were reallocated)."""
        self._graphs.clear()

    def _capture(self, size: int) -> tuple[torch.cuda.CUDAGraph, StepOutputs]:
        # Warm up on a side stream first, as PyTorch's CUDA-graph docs do (lazy initialisation, cuBLAS
        # workspaces and allocator state happen outside the capture).
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._step(size)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # each graph its own memory pool (a few MB for this decoder; sharing one would make replay order
        # matter); "thread_local": CUDA calls of other threads (a pinned buffer being allocated) do not break it
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            outputs = self._step(size)
        return graph, outputs
