"""sentence-transformers folders as text embedders, computed exactly as sentence-transformers does.

A folder is a pipeline described by `modules.json`: a Transformer (any `AutoModel` with its tokenizer
and `sentence_bert_config.json`: max_seq_length, do_lower_case), a Pooling module (its `config.json`
names the modes: cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken; several are
concatenated in that order), any Dense layers and, optionally, Normalize. A default prompt
(`default_prompt_name` in `config_sentence_transformers.json`) goes before every text. We read those
files ourselves and run the same steps with transformers, so the service needs no sentence-transformers
at run time. Pipelines with other modules (CNN, LSTM, Router, …) are refused at load time rather than
silently embedded wrong.

The contract wants L2-normalised embeddings, so a pipeline without Normalize is normalised at the end
(same direction as sentence-transformers' vector; cosine similarities unchanged).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from safetensors.torch import load_file as load_safetensors
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from model.api import ModelLoadError
from model.hf.base import HFAdapter, empty_embedding, normalized_cpu, to_device
from model.hf.loading import find_file, load_pretrained, load_processor, read_json, text_position_limit
from model.pooling import mean_pool
from model.tokens import TokenCounter

logger = logging.getLogger(__name__)

# sentence-transformers' legacy boolean keys, in the order it concatenates the modes
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
POOLING_MODES = frozenset(LEGACY_POOLING_KEYS.values())


@dataclass(frozen=True)
class SentencePipeline:
    """What a sentence-transformers folder asks for, read from its JSON files."""

    transformer_dir: str  # subfolder of the Transformer module ("" = the folder itself)
    pooling_modes: tuple[str, ...]  # concatenated in this order
    dense_dirs: tuple[str, ...]  # subfolders of the Dense modules after pooling, in order
    normalize: bool  # a Normalize module ends the pipeline
    max_seq_length: int | None  # from sentence_bert_config.json; None = the tokenizer's own limit
    do_lower_case: bool
    prompt: str = ""  # the default prompt (config_sentence_transformers.json), put before every text


def pooling_modes(config: dict[str, object]) -> tuple[str, ...]:
    """The pooling modes of a Pooling module's config, new style (`pooling_mode`) or legacy booleans."""
    mode = config.get("pooling_mode")
    if mode is not None:
        modes = (mode,) if isinstance(mode, str) else tuple(str(m) for m in mode)  # type: ignore[attr-defined]
    else:
        modes = tuple(m for key, m in LEGACY_POOLING_KEYS.items() if config.get(key)) or ("mean",)
    unknown = set(modes) - POOLING_MODES
    if unknown:
        raise ValueError(f"unknown pooling modes {sorted(unknown)}")
    return modes


def read_pipeline(name: str, modules: list[dict[str, str]]) -> SentencePipeline:
    """The pipeline of a folder from its modules.json entries; `ModelLoadError` for modules we do not run."""
    kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
    normalize = kinds[-1:] == ["Normalize"]
    dense = modules[2 : len(modules) - normalize]
    if kinds[:2] != ["Transformer", "Pooling"] or any(
        kind != "Dense" for kind in kinds[2 : len(kinds) - normalize]
    ):
        raise ModelLoadError(
            f"model {name!r}: sentence-transformers modules {kinds} are not supported "
            "(supported: Transformer, Pooling, any Dense, optionally Normalize)"
        )
    transformer_dir, pooling_dir = modules[0].get("path", ""), modules[1].get("path", "")
    pooling_config = read_json(name, "config.json", pooling_dir)
    st_config = read_json(name, "sentence_bert_config.json", transformer_dir) or {}
    if not isinstance(pooling_config, dict) or not isinstance(st_config, dict):
        raise ModelLoadError(f"model {name!r}: missing or malformed pooling config in {pooling_dir!r}")
    try:
        modes = pooling_modes(pooling_config)
    except ValueError as e:
        raise ModelLoadError(f"model {name!r}: {e}") from e
    prompt = default_prompt(name)
    if prompt and not pooling_config.get("include_prompt", True):
        raise ModelLoadError(f"model {name!r}: pooling that leaves out the prompt is not supported")
    return SentencePipeline(
        transformer_dir=transformer_dir,
        pooling_modes=modes,
        dense_dirs=tuple(module.get("path", "") for module in dense),
        normalize=normalize,
        max_seq_length=st_config.get("max_seq_length"),
        do_lower_case=bool(st_config.get("do_lower_case", False)),
        prompt=prompt,
    )


def default_prompt(name: str) -> str:
    """The prompt sentence-transformers puts before every text by default ("" for most models)."""
    config = read_json(name, "config_sentence_transformers.json")
    if not isinstance(config, dict):
        return ""
    prompt_name = config.get("default_prompt_name")
    return str(config.get("prompts", {}).get(prompt_name) or "") if prompt_name else ""


def pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, modes: Sequence[str]) -> torch.Tensor:
    """sentence-transformers' pooling of right-padded (B, T, C) token embeddings → (B, C * modes), fp32."""
    x = token_embeddings.float()
    mask = attention_mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    count = mask.sum(dim=1).clamp(min=1e-9)  # (B, 1)
    pooled: list[torch.Tensor] = []
    for mode in modes:
        if mode == "cls":
            first = attention_mask.int().argmax(dim=1)  # (B,) first real token
            pooled.append(x[torch.arange(x.shape[0]), first])
        elif mode == "max":
            pooled.append(x.masked_fill(mask == 0, float("-inf")).max(dim=1).values)
        elif mode == "mean":
            pooled.append(mean_pool(token_embeddings, attention_mask))
        elif mode == "mean_sqrt_len_tokens":
            pooled.append((x * mask).sum(dim=1) / count.sqrt())
        elif mode == "weightedmean":
            weights = mask * torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
            pooled.append((x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9))
        elif mode == "lasttoken":
            trailing_pads = attention_mask.flip(1).int().argmax(dim=1)  # (B,)
            pooled.append(x[torch.arange(x.shape[0]), attention_mask.shape[1] - 1 - trailing_pads])
    return torch.cat(pooled, dim=-1)


class SentenceEmbedder(HFAdapter):
    """Text embeddings from a sentence-transformers folder."""

    def __init__(
        self,
        name: str,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        pipeline: SentencePipeline,
        dense: Sequence[nn.Module],
        max_text_tokens: int,
    ) -> None:
        dim = model.config.hidden_size * len(pipeline.pooling_modes)
        if dense:
            dim = dense[-1][0].out_features  # type: ignore[index]
        super().__init__(name, model.device, model.dtype, frozenset({"embed_text"}), max_text_tokens, dim)
        self.model = model
        self.tokenizer = tokenizer
        self.pipeline = pipeline
        self.dense = list(dense)
        self._counter = TokenCounter(tokenizer, max_text_tokens, self._as_embedded)

    def _as_embedded(self, text: str) -> str:
        text = self.pipeline.prompt + text
        return text.lower() if self.pipeline.do_lower_case else text

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as embedded: prompt included, truncated (any thread)."""
        return self._counter(texts)

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """[n, dim] float32 CPU tensor, L2-normalised."""
        if not texts:
            return empty_embedding(self.dim)
        texts = [self._as_embedded(text) for text in texts]
        tokens = self.tokenizer(
            texts,
            padding=True,
            truncation="longest_first",
            max_length=self.max_text_tokens,
            return_tensors="pt",
        )
        inputs = to_device(
            {k: tokens[k] for k in self.tokenizer.model_input_names if k in tokens}, self.device, self.dtype
        )
        hidden = self.model(**inputs).last_hidden_state  # (B, T, C)
        embeddings = pool(hidden, inputs["attention_mask"], self.pipeline.pooling_modes)
        for layer in self.dense:
            embeddings = layer(embeddings.to(self.dtype))
        return normalized_cpu(embeddings)


def load_dense(name: str, subfolder: str, device: torch.device, dtype: torch.dtype) -> nn.Sequential:
    """A Dense module: its config (features, bias, activation) and its weights (`linear.weight`, …)."""
    config = read_json(name, "config.json", subfolder)
    if not isinstance(config, dict):
        raise ModelLoadError(f"model {name!r}: no Dense config in {subfolder!r}")
    linear = nn.Linear(config["in_features"], config["out_features"], bias=config.get("bias", True))
    activation = activation_module(
        name, config.get("activation_function", "torch.nn.modules.activation.Tanh")
    )
    weights = find_file(name, "model.safetensors", subfolder)
    if weights is not None:
        state = load_safetensors(str(weights))
    elif (weights := find_file(name, "pytorch_model.bin", subfolder)) is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    else:
        raise ModelLoadError(f"model {name!r}: no Dense weights in {subfolder!r}")
    linear.load_state_dict({key.removeprefix("linear."): value for key, value in state.items()})
    return nn.Sequential(linear, activation).to(device, dtype).eval()


def activation_module(name: str, path: str) -> nn.Module:
    """A Dense activation named by its class path, restricted to torch.nn (sentence-transformers' rule)."""
    module_name, _, class_name = path.rpartition(".")
    activation = (
        getattr(importlib.import_module(module_name), class_name, None) if path.startswith("torch.") else None
    )
    if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
        raise ModelLoadError(f"model {name!r}: unsupported Dense activation {path!r}")
    return activation()


def load_sentence_transformer(
    name: str,
    modules: list[dict[str, str]],
    device: torch.device,
    dtype: torch.dtype,
    max_text_tokens: int | None,
) -> SentenceEmbedder:
    pipeline = read_pipeline(name, modules)
    subfolder = {"subfolder": pipeline.transformer_dir} if pipeline.transformer_dir else {}
    tokenizer = load_processor(name, AutoTokenizer, **subfolder)
    model = load_pretrained(AutoModel, name, device, dtype, **subfolder)
    # sentence-transformers: max_seq_length if set, else the tokenizer's limit capped by the positions
    limit = pipeline.max_seq_length or min(tokenizer.model_max_length, text_position_limit(model.config))
    if max_text_tokens:
        limit = min(limit, max_text_tokens)
    dense = [load_dense(name, subfolder, device, model.dtype) for subfolder in pipeline.dense_dirs]
    logger.info("model %s: sentence-transformers pipeline %s, %d tokens", name, pipeline, limit)
    return SentenceEmbedder(name, model, tokenizer, pipeline, dense, limit)
