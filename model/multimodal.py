"""The built-in multimodal Transformer and its public face.

`MultimodalTransformer` is the trainable module: a ViT image encoder, a projection of the image into the
frozen MiniLM text space (for embeddings), and a decoder with cross-attention (for captions and answers).
`BuiltinModel` wraps it with the tokenizer, the text tower and image preprocessing, and implements the
`MultimodalModel` protocol the service uses: batched `caption`, `answer`, `embed_text`, `embed_image`,
and `transcribe` when the checkpoint has an audio tower (`model.audio`): its tokens feed the same decoder.

Prompts: a caption (and a transcript, from audio) is generated after `[BOS]`; an answer after
`[BOS] question [SEP]`. For some questions
the decoder first writes a scratchpad ending in `[SEP]`: for relative position each object's column, then
their relation ("two four left [SEP] yes"); for colour the object's column ("three [SEP] green").
`answer` returns only what follows the last `[SEP]`, and nothing when a question whose family has a scratchpad
never ended it (the scratchpad is never shown). Questions are normalised to their trained phrasing first, and
`known_question` says which the model knows (`model.questions`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer
from torch import nn

from model.api import (
    UNDERSTANDING_TASKS,
    AudioSpec,
    PreparedImage,
    Progress,
    Task,
    UnknownQuestion,
    UnsupportedTask,
    Update,
)
from model.audio import HOP, AudioEncoder, log_mel, pad_features
from model.config import ModelConfig
from model.decoder import Decoder
from model.generate import (
    DecodeState,
    ImageEncoding,
    SequenceSpec,
    encode_contexts,
    generate_all,
    generate_all_updates,
)
from model.heard_rescoring import CTC_WEIGHT, attention_scores, candidates, choose, ctc_scores, shortlist
from model.images import to_pixels
from model.inputs import check_pairs, row_limits
from model.loops import STOP_REPEATS, transcript_token_limit
from model.questions import normalise, parse
from model.step_graphs import DecodeOptions
from model.text import TextTower
from model.tokenizer import BOS, EOS, PAD, SEP
from model.vision import VisionEncoder


class MultimodalTransformer(nn.Module):
    """The trainable towers: image encoder, image→text-space projection, decoder, and the audio encoder if any."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = VisionEncoder(config.vision)
        self.image_proj = nn.Sequential(nn.LayerNorm(config.vision.dim), nn.Linear(config.vision.dim, config.embed_dim))
        self.decoder = Decoder(config.decoder, context_dim=config.vision.dim)
        # audio tokens arrive where image tokens do: in the image encoder's width, before the decoder's projection
        self.audio = AudioEncoder(config.audio, out_dim=config.vision.dim) if config.audio else None
        # CLIP's learnable temperature, log(1/0.07); only the training loss reads it
        self.logit_scale = nn.Parameter(torch.tensor(2.6593))

    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels (B, 3, H, W) → normalised embedding (B, embed_dim) and image tokens (B, 1 + N, d)."""
        cls, patches = self.vision(pixels)
        embedding = F.normalize(self.image_proj(cls).float(), dim=-1)
        return embedding, torch.cat([cls[:, None], patches], dim=1)

    def encode_audio(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features (B, T, n_mels) with lengths (B,) → audio tokens (B, N, d) and their validity (B, N)."""
        if self.audio is None:
            raise ValueError("this model has no audio tower")
        return self.audio(features, lengths)


class AudioEncoding:
    """Audios going through the audio tower a block at a time, so that a step loop can interleave their
    encoding with decoding steps (each turn short); the same computation as one pass."""

    def __init__(
        self, module: MultimodalTransformer, features: torch.Tensor, lengths: torch.Tensor, keep_tokens: bool = False
    ) -> None:
        """`keep_tokens`: each encoding keeps its audio's tower tokens too (for `BuiltinModel.rescore_heard`)."""
        assert module.audio is not None
        self._module, self._audio, self._keep_tokens = module, module.audio, keep_tokens
        self._x, self._valid = module.audio.embed(features, lengths)  # (B, N, dim), (B, N)
        self._blocks_run = 0

    @property
    def remaining(self) -> int:
        """Blocks still to run."""
        return len(self._audio.blocks) - self._blocks_run

    @torch.inference_mode()
    def advance(self) -> list[ImageEncoding] | None:
        """Run the next block; after the last, each audio's cross-attention keys and values (before: None)."""
        if self.remaining:
            self._x = self._audio.blocks[self._blocks_run](self._x, mask=self._valid[:, None, None, :])
            self._blocks_run += 1
        if self.remaining:
            return None
        tokens, lengths = self._audio.finish(self._x), self._valid.sum(1).tolist()
        encodings = encode_contexts(self._module.decoder, tokens, lengths)
        if not self._keep_tokens:
            return encodings
        return [replace(e, tokens=tokens[i, :n]) for i, (e, n) in enumerate(zip(encodings, lengths, strict=True))]


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    found = tokenizer.token_to_id(token)
    if found is None:
        raise ValueError(f"the tokenizer has no {token} token")
    return found


class BuiltinModel:
    """The built-in model behind the `MultimodalModel` protocol, a `StepwiseGenerator` and `KnowsQuestions`."""

    LANGUAGES = frozenset({"en"})  # what the audio tower was trained on

    def __init__(
        self,
        module: MultimodalTransformer,
        tokenizer: Tokenizer,
        text_tower: TextTower,
        name: str = "mmserve-builtin",
        scratchpad_families: frozenset[str] | None = None,
        closed_questions: bool = False,
        decode_options: DecodeOptions | None = None,
        blank_min_prob: float = 0.0,
        ctc_head: torch.nn.Linear | None = None,
    ) -> None:
        """`scratchpad_families`: the question families whose answers follow a scratchpad (the checkpoint's
        training recipe says); None when not known: an answer is then what follows the last `[SEP]`, or all
        that was generated when there is none. `closed_questions`: it was trained on the scene grammar's
        questions and knows no others (the service then refuses the others; `known_question`). `decode_options`:
        how the continuous-batching step runs (None: `DecodeOptions.resolve` for the device). `blank_min_prob`:
        a transcript is left blank (nothing understood) only when the end is at least this likely at its first
        token (`SequenceSpec.blank_min_prob`; 0: whenever it is the likeliest). `ctc_head`: a CTC head over the
        audio tower's tokens, with which a heard question is rescored among its neighbours (`rescore_heard`;
        None: a question is answered as heard)."""
        self.module = module.eval()
        self.scratchpad_families = scratchpad_families
        self.closed_questions = closed_questions
        self.tokenizer = tokenizer
        self.text_tower = text_tower.eval()
        self.name = name
        self.config = module.config
        parameter = next(module.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.decode_options = decode_options or DecodeOptions.resolve(self.device)
        self.blank_min_prob = blank_min_prob
        self.ctc_head = None if ctc_head is None else ctc_head.to(self.device, self.dtype).eval()
        self.dim: int | None = module.config.embed_dim
        self.max_text_tokens = text_tower.max_tokens
        self._ids = {token: _token_id(tokenizer, token) for token in (PAD, BOS, EOS, SEP)}
        vision = module.config.vision
        self.input_size: tuple[int, int] | None = (vision.image_size, vision.image_size)  # squashed to a square
        self._context_len = 1 + (vision.image_size // vision.patch_size) ** 2  # CLS + patches
        heard = module.config.audio
        self.tasks: frozenset[Task] = UNDERSTANDING_TASKS if heard else UNDERSTANDING_TASKS - {"transcribe"}
        self.audio: AudioSpec | None = (
            AudioSpec(heard.sampling_rate, heard.max_seconds, self.LANGUAGES) if heard else None
        )

    @property
    def _pinned(self) -> bool:
        """Whether batches for the device are stacked in page-locked memory (on CUDA)."""
        return self.device.type == "cuda"

    # -- preprocessing (any thread) --------------------------------------------------------------
    def prepare_image(self, image: Image.Image) -> PreparedImage:
        """Resized and scaled pixels (3, S, S), keyed by a digest of exactly those pixels."""
        pixels = to_pixels([image], self.config.vision.image_size)[0]
        key = hashlib.blake2b(pixels.numpy().tobytes(), digest_size=16).digest()
        return PreparedImage(pixels, key)

    def prepare_text(self, text: str) -> list[int]:
        """MiniLM token ids of one text to embed (truncated to `max_text_tokens`)."""
        return self.text_tower.tokenize(text)

    def known_question(self, question: str) -> str:
        """The question in its trained phrasing (`model.questions.normalise`), or `UnknownQuestion` when it
        is of no family the model was trained on; the message lists those it knows."""
        return parse(question).text

    def sequence(self, task: Task, question: str | None, max_new_tokens: int) -> SequenceSpec:
        """A caption (and a transcript) is generated after `[BOS]`; an answer after `[BOS] question [SEP]` (the
        question normalised), its scratchpad hidden. A transcript runs to its end or the decoder's room, at
        most `max_new_tokens` (give it `transcript_tokens(audio)`), stops when it loops, and is blank only when
        the end is at least `blank_min_prob` likely at its start."""
        if task == "caption":
            return SequenceSpec((self._ids[BOS],), max_new_tokens)
        if task == "transcribe":  # a loop ends the row (`model.loops`)
            return SequenceSpec(
                (self._ids[BOS],), max_new_tokens, stop_repeats=STOP_REPEATS, blank_min_prob=self.blank_min_prob
            )
        if task != "vqa" or question is None:
            raise ValueError(f"no sequence for task {task!r} with question {question!r}")
        ids = self.tokenizer.encode(normalise(question), add_special_tokens=False).ids
        ids = ids[: self.config.max_question_tokens]
        prompt = (self._ids[BOS], *ids, self._ids[SEP])
        return SequenceSpec(prompt, max_new_tokens, answer_only=True, scratchpad=self._has_scratchpad(question))

    def _has_scratchpad(self, question: str) -> bool:
        """Whether the answer must follow a scratchpad: its family has one, or, for a question of no known
        family, any family does (an unknown question's output is never shown before a `[SEP]`)."""
        if self.scratchpad_families is None:
            return False
        try:
            return parse(question).family in self.scratchpad_families
        except UnknownQuestion:
            return bool(self.scratchpad_families)

    # -- the device ------------------------------------------------------------------------------
    def _prepared(self, images: Sequence[Image.Image | PreparedImage]) -> list[PreparedImage]:
        return [im if isinstance(im, PreparedImage) else self.prepare_image(im) for im in images]

    def _pixels(self, images: Sequence[Image.Image | PreparedImage]) -> torch.Tensor:
        each = [p.pixels for p in self._prepared(images)]
        # stacked into page-locked memory on CUDA: a pageable batch would make the "non-blocking" copy wait
        pixels = torch.empty((len(each), *each[0].shape), dtype=each[0].dtype, pin_memory=self._pinned)
        torch.stack(each, out=pixels)  # (B, 3, H, W) float32
        return pixels.to(self.device, self.dtype, non_blocking=True)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[PreparedImage]) -> list[ImageEncoding]:
        """Each image's cross-attention keys and values, from one pass of the image encoder."""
        if not images:
            return []
        _, tokens = self.module.encode_image(self._pixels(images))
        return encode_contexts(self.module.decoder, tokens)

    def new_state(self, capacity: int, context_len: int | None = None, once: bool = False) -> DecodeState:
        """A decoding state for up to `capacity` rows. With an audio tower, rows of images and of audio
        (each its own length, masked) decode together; its context slots start at `context_len` tokens.
        `once`: for one batch run to its end (a whole-batch call), where capturing CUDA graphs would cost more
        than replaying them saves: its steps run eagerly (the same tokens)."""
        options = replace(self.decode_options, cuda_graphs=False) if once else self.decode_options
        return DecodeState(
            self.module.decoder,
            capacity,
            context_len or self._context_len,
            eos_id=self._ids[EOS],
            pad_id=self._ids[PAD],
            sep_id=self._ids[SEP],
            detokenize=self._decode,
            masked_context=self.module.config.audio is not None,
            options=options,
        )

    def _generate(
        self, images: Sequence[Image.Image | PreparedImage], specs: list[SequenceSpec], progress: Progress | None
    ) -> list[str]:
        if not images:
            return []
        encodings = self.encode_images(self._prepared(images))
        return generate_all(self.new_state(len(specs), once=True), specs, encodings, progress)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids).strip()

    # -- the protocol ------------------------------------------------------------------------------
    @torch.inference_mode()
    def caption(
        self,
        images: Sequence[Image.Image | PreparedImage],
        max_new_tokens: int | Sequence[int] = 32,
        progress: Progress | None = None,
    ) -> list[str]:
        """One caption per image (objects left to right)."""
        limits = row_limits(max_new_tokens, len(images))
        return self._generate(images, [self.sequence("caption", None, n) for n in limits], progress)

    @torch.inference_mode()
    def answer(
        self,
        images: Sequence[Image.Image | PreparedImage],
        questions: Sequence[str],
        max_new_tokens: int = 16,
        progress: Progress | None = None,
    ) -> list[str]:
        """One answer per (image, question); questions are truncated to `max_question_tokens` tokens."""
        check_pairs(images, questions)
        return self._generate(images, [self.sequence("vqa", q, max_new_tokens) for q in questions], progress)

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str | list[int]]) -> torch.Tensor:
        """(n, 384) MiniLM embeddings, normalised; texts past 256 tokens are truncated."""
        return self.text_tower([t if isinstance(t, list) else self.prepare_text(t) for t in texts])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """The text tower's tokens per text (for usage reports; any thread)."""
        return self.text_tower.count_tokens(texts)

    def prepare_audio(self, audio: np.ndarray) -> torch.Tensor:
        """Log-mel features (frames, n_mels) of one audio at the model's rate (any thread)."""
        if self.module.config.audio is None:
            raise self._no_audio()
        features = log_mel(audio, self.module.config.audio)
        return features

    @torch.inference_mode()
    def encode_audios(self, audios: Sequence[np.ndarray | torch.Tensor]) -> list[ImageEncoding]:
        """Each audio's cross-attention keys and values, its own length (one pass of the audio encoder)."""
        encoding = self.start_audio_encoding(audios)
        while (encodings := encoding.advance()) is None:
            pass
        return encodings

    @torch.inference_mode()
    def start_audio_encoding(self, audios: Sequence[np.ndarray | torch.Tensor]) -> AudioEncoding:
        """An encoding of the audios that a step loop runs a block at a time (`AudioEncoding.advance`)."""
        if self.module.audio is None:
            raise self._no_audio()
        features = [a if isinstance(a, torch.Tensor) else self.prepare_audio(a) for a in audios]
        batch, lengths = pad_features(features, pin=self._pinned)
        return AudioEncoding(
            self.module,
            batch.to(self.device, self.dtype, non_blocking=True),
            lengths.to(self.device),
            keep_tokens=self.ctc_head is not None,
        )

    def transcript_rows(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text as the decoder writes a transcript: `[BOS]` ids `[EOS]` (for scoring it teacher-forced)."""
        bos, eos = self._ids[BOS], self._ids[EOS]
        return [[bos, *self.tokenizer.encode(t, add_special_tokens=False).ids, eos] for t in texts]

    @torch.inference_mode()
    def rescore_heard(self, encodings: Sequence[ImageEncoding], texts: Sequence[str]) -> list[str]:
        """Each heard question (a transcript of the audio encoded in `encodings`, by `encode_audios` or a step
        loop's `start_audio_encoding`) as the candidate that best fits its audio by joint CTC/attention scoring
        (`model.heard_rescoring`); a blank one, or any without a CTC head, as it is."""
        out = list(texts)
        if self.ctc_head is None:
            return out
        for i, (encoding, text) in enumerate(zip(encodings, texts, strict=True)):
            if not text.strip() or encoding.tokens is None:
                continue
            options = candidates(text)
            rows = self.transcript_rows(options)
            ctc = ctc_scores(self.ctc_head, encoding.tokens, rows)
            kept = shortlist(ctc, options.index(text))
            attention = attention_scores(
                self.module.decoder, encoding.tokens, [rows[k] for k in kept], encoding.cross_kv
            )
            out[i] = options[kept[choose(ctc[kept], attention, CTC_WEIGHT)]]
        return out

    @torch.inference_mode()
    def transcribe(
        self,
        audios: Sequence[np.ndarray | torch.Tensor],
        language: str | Sequence[str | None] | None = None,
        progress: Progress | None = None,
    ) -> list[str]:
        """What is said in each audio (English; `language` may say "en"), generated after `[BOS]` from its tokens."""
        return [update.text or "" for update in self.transcribe_scored(audios, language, progress)]

    @torch.inference_mode()
    def transcribe_scored(
        self,
        audios: Sequence[np.ndarray | torch.Tensor],
        language: str | Sequence[str | None] | None = None,
        progress: Progress | None = None,
    ) -> list[Update]:
        """Each audio's finished update: its transcript (`text`), `avg_logprob` and `finish_reason` (English)."""
        if self.module.config.audio is None:
            raise self._no_audio()
        languages = [language] * len(audios) if language is None or isinstance(language, str) else list(language)
        unknown = sorted({code for code in languages if code is not None and code not in self.LANGUAGES})
        if unknown:
            raise ValueError(f"language {unknown[0]!r} is not one this model knows (only 'en')")
        if not audios:
            return []
        features = [a if isinstance(a, torch.Tensor) else self.prepare_audio(a) for a in audios]
        encodings = self.encode_audios(features)
        state = self.new_state(len(encodings), max(e.cross_kv[0][0].shape[1] for e in encodings), once=True)
        specs = [self.sequence("transcribe", None, self.transcript_tokens(f)) for f in features]
        return generate_all_updates(state, specs, encodings, progress)

    def transcript_tokens(self, audio: np.ndarray | torch.Tensor) -> int:
        """The most tokens a transcript of this audio (samples, or its log-mel features) may take: a bound
        from its duration (`model.loops.transcript_token_limit`)."""
        assert self.module.config.audio is not None
        rate = self.module.config.audio.sampling_rate
        seconds = audio.shape[0] * HOP / rate if isinstance(audio, torch.Tensor) else audio.shape[0] / rate
        return transcript_token_limit(seconds)

    def _no_audio(self) -> UnsupportedTask:
        return UnsupportedTask(
            f"model {self.name!r} cannot transcribe (it has no audio tower); serve a Whisper checkpoint with "
            "MMSERVE_TRANSCRIBE_MODEL"
        )

    @torch.inference_mode()
    def embed_image(self, images: Sequence[Image.Image | PreparedImage]) -> torch.Tensor:
        """(n, 384) image embeddings in MiniLM's space, normalised."""
        if not images:
            return torch.zeros(0, self.config.embed_dim)
        embedding, _ = self.module.encode_image(self._pixels(images))
        return embedding.float().cpu()
