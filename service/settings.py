"""Runtime settings: one pydantic-settings class, read from `MMSERVE_*` environment variables.

Built in `create_app()` (or by the CLI), never at import. Per-task knobs are flat fields named
`<task>_max_batch_size` / `<task>_max_wait_ms` so that each is one environment variable
(`MMSERVE_CAPTION_MAX_BATCH_SIZE=1`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from model import Task

DType = Literal["auto", "float32", "bfloat16", "float16"]
Scheduler = Literal["continuous", "static"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
LogFormat = Literal["text", "json"]


@dataclass(frozen=True)
class BatchPolicy:
    """How one task's batcher groups requests."""

    max_batch_size: int
    max_wait_ms: float  # the oldest waiting item is flushed after this long, even in a partial batch


class Settings(BaseSettings):
    """Everything the service can be told at start-up; each field is `MMSERVE_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MMSERVE_", extra="ignore", frozen=True)

    # Models: "builtin", a built-in checkpoint folder, or a Hugging Face folder / hub id.
    model: str = "builtin"
    caption_model: str | None = None  # None: use `model`
    vqa_model: str | None = None
    embed_model: str | None = None  # serves both text and image embeddings
    # speech to text: None serves it with `model` (a built-in checkpoint transcribes once its weights have the
    # audio tower); or a Whisper checkpoint. /vqa's spoken questions are heard by this model too.
    transcribe_model: str | None = None
    # text to image: None serves the built-in generator when `model/weights/generator/` exists (else the task is
    # not served); or a local diffusers Stable Diffusion folder, or a folder of the built-in generator's format;
    # "none": not served.
    generate_model: str | None = None
    device: str = "auto"  # "auto": CUDA when available, else CPU (with a warning); or "cpu", "cuda:1", ...
    dtype: DType = "auto"  # "auto": the model's choice (fp32 on CPU, bf16/fp16 on CUDA)
    torch_threads: int | None = Field(default=None, ge=1)  # CPU intra-op threads; None: torch's default
    gc_freeze: bool = True  # once loaded, the models' objects are left out of Python's garbage collections

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"  # json: one JSON object per line (the request lines' fields at its top level)
    # How long an idle keep-alive connection stays open. Longer than the idle expiry of common clients
    # and proxies (httpx and Node: 5 s, AWS ALB: 60 s), so the client always closes first: a server that
    # closes at the same moment the client reuses the connection loses that request (a reset).
    keep_alive_s: int = Field(default=75, ge=1)

    # Access. With keys set, every route but the open ones needs `Authorization: Bearer <key>`.
    api_keys: SecretStr | None = None  # comma-separated keys (a SecretStr: never shown in a repr or a log)
    api_keys_file: Path | None = None  # a file of keys, one per line ('#' comments and blank lines skipped)
    protect_health: bool = False  # keys also for /health, /health/live and /metrics (open by default)
    cors_origins: str = ""  # comma-separated origins a browser may call from ("*": any); empty: CORS off

    # Batching. "continuous": captions and answers join and leave the running batch between decoding
    # steps (for models that decode step by step), images between denoising steps; "static": whole batches,
    # each run to its longest row (its most steps).
    scheduler: Scheduler = "continuous"
    # Per task: the largest batch (for continuous generation: the most sequences running at once), and
    # how long the oldest request may wait for batch-mates when the device is idle (0: run it now).
    caption_max_batch_size: int = Field(default=32, ge=1)
    caption_max_wait_ms: float = Field(default=0.0, ge=0)
    vqa_max_batch_size: int = Field(default=32, ge=1)
    vqa_max_wait_ms: float = Field(default=0.0, ge=0)
    embed_text_max_batch_size: int = Field(default=64, ge=1)
    embed_text_max_wait_ms: float = Field(default=0.0, ge=0)
    embed_image_max_batch_size: int = Field(default=32, ge=1)
    embed_image_max_wait_ms: float = Field(default=0.0, ge=0)
    transcribe_max_batch_size: int = Field(default=8, ge=1)
    transcribe_max_wait_ms: float = Field(default=0.0, ge=0)
    # text to image: the most images denoising at once (each image is one row of every denoising step)
    text_to_image_max_batch_size: int = Field(default=8, ge=1)
    text_to_image_max_wait_ms: float = Field(default=0.0, ge=0)
    # While sequences decode, what joins them in one turn (images encoded, prompts prefilled) and a whole
    # batch (a model that cannot decode step by step: Hugging Face, Whisper) each take only as many items as
    # their measured cost per item fits in this (at least one), so streams wait about this long at most
    # between two tokens. While other work waits or runs beside image generations, a denoising step advances
    # only the images whose measured cost per image fits in this (the longest waiting first). 0: no budget.
    max_turn_ms: float = Field(default=50.0, ge=0)
    # The built-in model's decoding step (the same tokens either way). fixed_shape_step: rows padded to a
    # bucket (1, 2, 4, ...) and attention over every cached position, masked, so a step's shapes stay the same
    # within a bucket; cuda_graphs: each bucket's step captured as a CUDA graph and replayed (implies fixed
    # shapes; a capture that fails falls back to eager, logged). None: off, until bench/gpu_check.sh has measured
    # them on a GPU (on a CPU the fixed shapes cost compute: docs/benchmarks.md).
    fixed_shape_step: bool | None = None
    cuda_graphs: bool | None = None
    encoder_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0)  # image encodings kept for reuse; 0: off
    queue_capacity: int = Field(default=1024, ge=1)  # admitted, unfinished items per task; beyond it: 429

    request_timeout_s: float = Field(default=30.0, gt=0)  # from arrival to answer; beyond it: 504
    decode_threads: int = Field(default=4, ge=1)  # image decoding runs in this many threads

    # Input limits.
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1)  # one image, before decoding
    # one audio file on the transcription routes (/transcribe, /v1/audio/transcriptions): 10 minutes of 16 kHz
    # 16-bit mono WAV is 19 MB (FLAC or MP3 are far smaller); /vqa's spoken question keeps `max_upload_bytes`
    max_audio_upload_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)  # width × height, read from the header
    # one audio recording; one longer than the model's window is cut at pauses into chunks that fit it, where a
    # route chunks (model.speech_chunks; docs/models.md), and refused past the window where it does not
    max_audio_seconds: float = Field(default=600.0, gt=0)
    max_text_chars: int = Field(default=2000, ge=1)  # one /embed text
    max_question_chars: int = Field(default=500, ge=1)
    max_embed_inputs: int = Field(default=256, ge=1)  # texts in one /embed call
    text_to_image_max_steps: int = Field(default=100, ge=1)  # the most denoising steps a request may ask for
    default_max_new_tokens: int = Field(default=32, ge=1)  # /caption when the request names none
    max_new_tokens_limit: int = Field(default=128, ge=1)  # the most a /caption request may ask for
    vqa_max_new_tokens: int = Field(default=16, ge=1)
    # A spoken question (/vqa's `question_audio`) is refused with a 422 that says what was heard when the
    # voice-activity detector finds no speech in it (its no_speech_prob above the first), or the model is
    # unsure of its transcript (avg_logprob below the second); chosen on held-out data (model/MODEL_CARD.md).
    # (the defaults are model.understanding's MAX_NO_SPEECH_PROB and MIN_AVG_LOGPROB; settings import no torch)
    spoken_max_no_speech_prob: float = Field(default=0.01, ge=0, le=1)
    spoken_min_avg_logprob: float = Field(default=-0.5, le=0)
    spoken_refuse_loops: bool = True  # a transcript cut short for repeating itself is refused too
    # The built-in model writes nothing (a blank transcript: refused as "nothing understood") for audio that is not
    # a scene sentence; it does so only when the end is at least this likely at the transcript's first token, else
    # it writes what it heard best (None: model.understanding.MIN_BLANK_PROB, chosen on held-out tuning clips;
    # 0: whenever the end is likeliest, as before)
    transcript_blank_min_prob: float | None = Field(default=None, ge=0, le=1)
    # A spoken question's transcript is rescored among its neighbours (one scene word swapped, the grammar's short
    # questions) by joint CTC/attention scoring before it is answered, when the model can (the built-in model
    # with its CTC head: model/heard_rescoring.py); false: answered as greedy decoding heard it
    spoken_rescoring: bool = True

    # Faults. No progress for this long (a turn of the step loop, or a decoding step inside a whole-batch
    # generation) means the device is stuck: unhealthy, every request answered 503, then exit (status 3).
    # 0: no watchdog.
    step_timeout_s: float = Field(default=60.0, ge=0)
    exit_on_stuck: bool = True  # false: stay up, unhealthy (for tests that look at the state in-process)
    # Fatal states end the process, so a supervisor restarts it (service.exits): a model that cannot load
    # at once; a broken device or a dead inference thread after this long answering 503 (so a load
    # balancer sees it). false: stay up, unhealthy (for tests that look at the state in-process).
    exit_on_failure: bool = True
    unhealthy_exit_after_s: float = Field(default=5.0, ge=0)
    # SIGTERM: for this long the listener and open connections stay; new requests get 503 with `Connection:
    # close`, accepted ones finish; then (or once no connection is open) the server stops. Fits, with
    # request_timeout_s + 5 s of draining, in Kubernetes' grace after its preStop and compose's stop_grace_period.
    drain_grace_s: float = Field(default=5.0, ge=0)
    # Tests only: POST /faults/device and /faults/inference-thread break the device or kill the inference
    # thread (service.fault_injection), so a container's restart can be shown for real. Never in production.
    fault_injection: bool = False

    # http(s) image URLs in /v1/chat/completions: off unless allowed, then only to the listed hosts (never to
    # loopback, link-local or private addresses), at most `max_upload_bytes`, within `image_url_timeout_s`.
    allow_image_urls: bool = False
    image_url_hosts: str = ""  # comma-separated host names (or IP literals) images may be fetched from
    image_url_timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_embed_inputs > self.queue_capacity:
            raise ValueError("max_embed_inputs must not exceed queue_capacity (one /embed call would never fit)")
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ValueError("default_max_new_tokens must not exceed max_new_tokens_limit")
        return self

    def api_key_list(self) -> list[str]:
        """Every configured API key (from `api_keys` and `api_keys_file`); empty: no authentication."""
        keys = self.api_keys.get_secret_value().split(",") if self.api_keys else []
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text().splitlines()
            except OSError as e:
                raise ValueError(f"MMSERVE_API_KEYS_FILE {self.api_keys_file} cannot be read: {e.strerror}") from e
            from_file = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
            if not from_file:
                raise ValueError(f"MMSERVE_API_KEYS_FILE {self.api_keys_file} holds no key")
            keys += from_file
        return [key.strip() for key in keys if key.strip()]

    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    def image_url_host_list(self) -> frozenset[str]:
        return frozenset(host.strip().lower().strip("[]") for host in self.image_url_hosts.split(",") if host.strip())

    def batch_policy(self, task: Task) -> BatchPolicy:
        """The batching knobs of one task."""
        return BatchPolicy(
            max_batch_size=getattr(self, f"{task}_max_batch_size"),
            max_wait_ms=getattr(self, f"{task}_max_wait_ms"),
        )

    def model_for(self, task: Task) -> str:
        """Which model serves `task`: its own setting, else `model`."""
        if task == "text_to_image":
            return self.generate_model or "builtin"
        per_task = {
            "caption": self.caption_model,
            "vqa": self.vqa_model,
            "embed_text": self.embed_model,
            "embed_image": self.embed_model,
            "transcribe": self.transcribe_model,
        }[task]
        return per_task or self.model
