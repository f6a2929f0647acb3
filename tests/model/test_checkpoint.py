import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import is_builtin_checkpoint, load_builtin, load_module
from model.scenes import make_scene, render
from model.understanding import MIN_BLANK_PROB
from tests.support.builtin_checkpoint import tiny_checkpoint


def test_round_trip_gives_identical_outputs(tmp_path, tiny_model, text_tower) -> None:
    first = tiny_checkpoint(tmp_path / "a", seed=3)
    module, tokenizer, name = load_module(first)
    from model.checkpoint import save_checkpoint

    save_checkpoint(module, tokenizer, tmp_path / "b", name=name)
    a = load_builtin(first, text_tower=text_tower)
    b = load_builtin(tmp_path / "b", text_tower=text_tower)
    images = [render(make_scene(i)) for i in range(3)]
    assert a.caption(images, 10) == b.caption(images, 10)
    assert torch.equal(a.embed_image(images), b.embed_image(images))
    for key, value in a.module.state_dict().items():
        assert torch.equal(value, b.module.state_dict()[key]), key


def test_strict_keys(tmp_path) -> None:
    folder = tiny_checkpoint(tmp_path / "c")
    weights = load_file(str(folder / "model.safetensors"))
    save_file({**weights, "unexpected.weight": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(RuntimeError, match="unexpected"):
        load_module(folder)
    weights.pop("vision.cls")
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(RuntimeError, match=r"vision\.cls"):
        load_module(folder)


def test_folder_format(tmp_path) -> None:
    folder = tiny_checkpoint(tmp_path / "d")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert json.loads((folder / "config.json").read_text())["format"] == "mmserve-builtin"
    assert is_builtin_checkpoint(folder)
    assert not is_builtin_checkpoint(tmp_path)
    assert not any(p.suffix == ".tmp" for p in folder.iterdir())


def test_dtype_placement(tmp_path, text_tower) -> None:
    folder = tiny_checkpoint(tmp_path / "e")
    model = load_builtin(folder, "cpu", torch.bfloat16, text_tower=text_tower)
    assert model.dtype == torch.bfloat16
    assert model.embed_image([render(make_scene(1))]).dtype == torch.float32


def test_loading_a_checkpoint_leaves_the_scene_generator_and_training_out(tiny_checkpoint_dir) -> None:
    """Serving reads the tokenizer from tokenizer.json: it never imports what builds one, nor training."""
    import subprocess
    import sys

    code = (
        "import sys; from model import load_model; load_model(sys.argv[1]); from service.app import create_app; "
        "print(sorted(m for m in sys.modules if m == 'model.scenes' or m.startswith('model.train')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tiny_checkpoint_dir)], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_a_transcript_is_left_blank_as_the_checkpoint_learned_to(tiny_checkpoint_dir, text_tower) -> None:
    """The shipped weights learned to write nothing for audio that is not a scene sentence (their recipe's
    out-of-domain share): a blank only when the end is `MIN_BLANK_PROB` likely. A checkpoint with no recipe:
    greedy (0). A value given wins, and only transcripts carry it."""
    assert load_builtin(text_tower=text_tower).blank_min_prob == MIN_BLANK_PROB > 0
    assert load_builtin(tiny_checkpoint_dir, text_tower=text_tower).blank_min_prob == 0.0
    model = load_builtin(tiny_checkpoint_dir, text_tower=text_tower, blank_min_prob=0.3)
    assert model.sequence("transcribe", None, 8).blank_min_prob == 0.3
    assert model.sequence("caption", None, 8).blank_min_prob == 0.0
