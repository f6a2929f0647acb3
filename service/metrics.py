"""Prometheus metrics, in a registry per app (several apps can live in one process, e.g. in tests)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The service's metrics, named as in TEI and Triton."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_size = Gauge("mmserve_queue_size", "Items waiting for a batch", ["task"], registry=self.registry)
        self.batch_size = Histogram(
            "mmserve_batch_size",
            "Items per batch run",
            ["task"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.queue_duration = Histogram(
            "mmserve_queue_duration_seconds",
            "Time an item waited for its batch",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_duration = Histogram(
            "mmserve_inference_duration_seconds",
            "Time one batch took on the device",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "mmserve_request_duration_seconds",
            "Time from request arrival to response",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "mmserve_requests", "Requests by task and HTTP status", ["task", "status"], registry=self.registry
        )
        # Continuous batching.
        self.running_sequences = Gauge(
            "mmserve_running_sequences", "Captions and answers decoding now", registry=self.registry
        )
        self.decode_steps = Counter("mmserve_decode_steps", "Decoding steps run", registry=self.registry)
        self.time_to_first_token = Histogram(
            "mmserve_time_to_first_token_seconds",
            "From arrival to the first generated token",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Text to image (denoising steps batched continuously).
        self.denoise_steps = Counter("mmserve_denoise_steps", "Denoising steps run", registry=self.registry)
        self.running_images = Gauge("mmserve_running_images", "Images denoising now", registry=self.registry)
        self.images_generated = Counter("mmserve_images_generated", "Images generated", registry=self.registry)
        self.image_duration = Histogram(
            "mmserve_image_duration_seconds",
            "Time one image took from joining the running images to its decoded result",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.encoder_cache = Counter(
            "mmserve_encoder_cache_lookups",
            "Image encodings looked up in the encoder cache, by result (hit or miss)",
            ["result"],
            registry=self.registry,
        )

        # Faults.
        self.out_of_memory = Counter(
            "mmserve_oom", "Batches (or decoding steps) that ran out of device memory", ["task"], registry=self.registry
        )
        self.batch_cap = Gauge(
            "mmserve_batch_cap",
            "The most items one batch (for generation: the most running sequences) may hold now; "
            "halved on out-of-memory, grown back slowly",
            ["task"],
            registry=self.registry,
        )

    def count_encoder_lookup(self, hit: bool) -> None:
        self.encoder_cache.labels("hit" if hit else "miss").inc()

    def watch_running(self, running: Callable[[], int]) -> None:
        self.running_sequences.set_function(running)

    def watch_queues(self, queue_sizes: Mapping[str, Callable[[], int]]) -> None:
        """Read each task's queue size at scrape time."""
        for task, size in queue_sizes.items():
            self.queue_size.labels(task).set_function(size)
