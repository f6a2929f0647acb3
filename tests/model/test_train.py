"""Training runs, checkpoints atomically, resumes where it stopped, and exports a loadable checkpoint."""

import re

import numpy as np
import pytest
import torch

from model.checkpoint import load_builtin
from model.config import PRESETS
from model.multimodal import MultimodalTransformer
from model.scenes import make_scene, render
from model.train import Batches, TrainConfig, losses, lr_at, max_objects_at, train
from model.train.vocabulary import build_tokenizer
from tests.support.audio import ESPEAK, NO_ESPEAK


def _config(steps: int) -> TrainConfig:
    return TrainConfig(
        preset="tiny", steps=steps, batch_size=6, eval_every=steps, checkpoint_every=2, eval_scenes=100, warmup_steps=2
    )


def test_batches_are_deterministic() -> None:
    batches = Batches(_config(10), build_tokenizer())
    a, b = batches(3), batches(3)
    assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["seq"], b["seq"])
    assert a["captions"] == b["captions"]
    assert a["captions"] != batches(4)["captions"]


# how a question row shows its family
CUES = {"position": (" left of ", " right of "), "colour": ("what colour",), "exists": ("is there a",)}


@pytest.mark.parametrize("scratchpad", [(), ("position",), ("position", "colour"), ("position", "colour", "exists")])
def test_answer_loss_covers_only_what_the_decoder_writes(scratchpad: tuple[str, ...]) -> None:
    from dataclasses import replace

    tokenizer = build_tokenizer()
    config = replace(_config(40), batch_size=24, scratchpad=scratchpad)
    batch = Batches(config, tokenizer)(39)  # the end of the curriculum: up to four objects
    n = len(batch["captions"])
    seen = set()
    for row, weight in zip(batch["seq"][n:], batch["weight"][n:], strict=True):
        text = tokenizer.decode(row.tolist(), skip_special_tokens=False)
        targets = [tokenizer.id_to_token(int(t)) for t, w in zip(row[1:], weight, strict=False) if w > 0]
        assert targets[-1] == "[EOS]"
        family = next((f for f, cue in CUES.items() if any(c in text for c in cue)), "")
        if family in scratchpad:  # position: columns, relation, [SEP], answer; others: column, [SEP], answer
            seen.add(family)
            assert len(targets) == (6 if family == "position" else 4), text
            assert targets[-3] == "[SEP]" and targets[0] in ("zero", "one", "two", "three", "four"), text
            assert family == "exists" or targets[0] != "zero", text  # only a missing object has no column
        else:  # one answer word, then end of sequence
            assert len(targets) == 2, text
    assert seen == set(scratchpad)


def test_curriculum_and_schedule() -> None:
    config = TrainConfig(steps=1000)
    assert max_objects_at(config, 0) == 1 and max_objects_at(config, 999) == 4
    assert lr_at(config, 0) < lr_at(config, config.warmup_steps) == config.lr
    assert lr_at(config, 999) < 0.05 * config.lr
    # a stage that stops before its planned schedule ends stops at a higher rate
    stopped = TrainConfig(steps=1000, schedule_steps=2000)
    assert lr_at(stopped, 500) == lr_at(TrainConfig(steps=2000), 500) and lr_at(stopped, 999) > 0.4 * config.lr


def test_a_few_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    config = _config(10)
    module = MultimodalTransformer(PRESETS["tiny"])
    batch = Batches(config, build_tokenizer())(0)
    text = torch.nn.functional.normalize(torch.randn(len(batch["captions"]), 384), dim=-1)
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    first = None
    for _ in range(8):
        loss = sum(losses(module, batch, text).values())
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first


def test_train_checkpoints_and_resumes(tmp_path, text_tower) -> None:
    out, run = tmp_path / "weights", tmp_path / "run"
    train(_config(4), out, run, resume=False)
    assert torch.load(run / "train_state.pt", weights_only=False)["step"] == 4
    train(_config(6), out, run, resume=True)
    state = torch.load(run / "train_state.pt", weights_only=False)
    assert state["step"] == 6
    assert not list(run.glob("*.tmp")) and not list(out.glob("*.tmp"))
    model = load_builtin(out, text_tower=text_tower)
    assert len(model.caption([render(make_scene(1))], 4)) == 1


def test_fine_tuning_starts_from_a_checkpoint(tmp_path, tiny_checkpoint_dir, text_tower) -> None:
    from model.checkpoint import load_module

    start = load_module(tiny_checkpoint_dir)[0].state_dict()
    module = train(_config(1), tmp_path / "weights", tmp_path / "run", resume=False, init=tiny_checkpoint_dir)
    # one small step away from the checkpoint, not a fresh random initialisation
    drift = max((module.state_dict()[k].cpu() - v).abs().max().item() for k, v in start.items())
    assert 0 < drift < 0.05


def test_several_questions_per_image_line_up_with_their_images() -> None:
    from dataclasses import replace

    tokenizer = build_tokenizer()
    config = replace(_config(10), questions_per_image=3)
    batch = Batches(config, tokenizer)(5)
    n = len(batch["captions"])
    assert batch["seq"].shape[0] == 4 * n  # captions, then three blocks of questions
    # the count question, wherever it is asked, must agree with the caption of its own image
    numbers = ("zero", "one", "two", "three", "four")
    for row in range(n, 4 * n):
        text = tokenizer.decode(batch["seq"][row].tolist(), skip_special_tokens=False)
        if "how many" in text:
            caption = batch["captions"][row % n]
            objects = caption.count(",") + caption.count(" and ") + 1
            assert numbers[objects] in text


def test_the_command_line_plans_the_shipped_recipe(tmp_path) -> None:
    from model.train import STAGES, parse_args

    plan = parse_args(["--run-dir", str(tmp_path), "--out", str(tmp_path / "model"), "--seed", "3"])
    assert [name for name, *_ in plan.stages] == ["base", "position", "colour", "speech", "hearing"]
    stages = {name: rest for name, *rest in plan.stages}  # name → config, init, out, run dir
    base, base_init, base_out, base_run = stages["base"]
    position, position_init, position_out, position_run = stages["position"]
    colour, colour_init, colour_out, _ = stages["colour"]
    speech, speech_init, speech_out, _ = stages["speech"]
    hearing, hearing_init, out, _ = stages["hearing"]
    assert base.steps == STAGES["base"].steps and base.scratchpad == () and base.family_weights == ()
    assert base_init is None and base_out == tmp_path / "base" / "weights" and base_run == tmp_path / "base"
    # each stage starts from the previous one's weights; the last writes the finished model
    assert position_init == base_out and position_out == tmp_path / "position" / "weights"
    assert position_run == tmp_path / "position"
    assert colour_init == position_out and colour_out == tmp_path / "colour" / "weights"
    assert speech_init == colour_out and speech_out == tmp_path / "speech" / "weights"
    assert hearing_init == speech_out and out == tmp_path / "model"
    assert speech.speech_pool > 0 and speech.preset == "base+audio" and 0 < speech.decoder_lr_ratio < 1
    assert not speech.speech_varied and speech.out_of_domain_share == 0
    assert hearing.speech_varied and 0 < hearing.out_of_domain_share < 0.5 and hearing.lr < speech.lr
    assert position.scratchpad == ("position",) and dict(position.family_weights) == {"position": 4.0}
    assert set(colour.scratchpad) == {"position", "colour"} and dict(colour.family_weights)["colour"] == 4.0
    assert position.curriculum == colour.curriculum == ((1.0, 4),) and position.lr < base.lr
    assert base.seed == position.seed == colour.seed == speech.seed == hearing.seed == 3


def test_one_stage_takes_its_settings_from_the_command_line(tmp_path, tiny_checkpoint_dir) -> None:
    from model.train import parse_args

    plan = parse_args(
        [
            "--stage",
            "position",
            "--init",
            str(tiny_checkpoint_dir),
            "--steps",
            "7",
            "--scratchpad",
            "",
            "--family-weight",
            "shape=2",
            "--family-weight",
            "exists=2",
        ]
    )
    ((name, config, init, _, _),) = plan.stages
    assert name == "position" and init == tiny_checkpoint_dir
    assert config.steps == 7 and config.scratchpad == () and config.family_weights == (("shape", 2.0), ("exists", 2.0))
    assert config.lr == 5e-4  # what was not given stays the stage's


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "10"], "--steps set one stage's settings: add --stage base or --stage position or"),
        (["--stage", "colour", "--scratchpad", "colour,size"], "unknown question family 'size'"),
        (["--stage", "position"], "run --stage base first, or give --init"),
        (["--stage", "base", "--family-weight", "position"], "expected FAMILY=WEIGHT"),
    ],
)
def test_the_command_line_refuses_what_it_cannot_do(tmp_path, capsys, argv, message) -> None:
    from model.train import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args([*argv, "--run-dir", str(tmp_path)])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_stage_already_done_is_not_trained_again(tmp_path, text_tower) -> None:
    out, run = tmp_path / "weights", tmp_path / "run"
    train(_config(2), out, run, resume=False)
    before = (out / "model.safetensors").read_bytes()
    module = train(_config(2), out, run, resume=True)  # nothing left: no step, weights untouched
    assert (out / "model.safetensors").read_bytes() == before
    # and what it returns is the trained module from the saved state, not a fresh initialisation
    saved = torch.load(run / "train_state.pt", weights_only=False)["module"]
    assert all(torch.equal(v, saved[k]) for k, v in module.state_dict().items())
    # stopped after the state was saved but before the export: resuming exports
    import shutil

    shutil.rmtree(out)
    train(_config(2), out, run, resume=True)
    assert load_builtin(out, text_tower=text_tower).caption([render(make_scene(1))], 2)


def test_mmserve_train_runs_stage_after_stage(tmp_path, text_tower) -> None:
    from model.train import main

    common = ["--preset", "tiny", "--steps", "2", "--batch-size", "4", "--run-dir", str(tmp_path / "run")]
    main(["--stage", "base", *common])
    assert (tmp_path / "run" / "base" / "weights" / "model.safetensors").exists()
    main(["--stage", "position", *common])  # from the base stage's weights
    assert torch.load(tmp_path / "run" / "position" / "train_state.pt", weights_only=False)["step"] == 2
    main(["--stage", "colour", *common])
    if ESPEAK is None:  # the speech stage speaks its sentences with espeak-ng
        pytest.skip(f"the stages before speech passed; the speech stage needs it: {NO_ESPEAK}")
    # the audio tower joins (a pool of 12 utterances, 4 a step); the hearing stage goes on from it (its pool
    # varied and with audio to transcribe as nothing) and, the last stage, writes the finished model
    speech = ["--preset", "tiny+audio", "--speech-pool", "12", "--audio-batch-size", "4", "--speech-eval", "4"]
    main(["--stage", "speech", *common, *speech])
    main(["--stage", "hearing", *common, *speech, "--speech-eval", "8", "--out", str(tmp_path / "model")])
    assert "out_of_domain" in torch.load(tmp_path / "run" / "hearing" / "eval_audio.pt", weights_only=False)
    model = load_builtin(tmp_path / "model", text_tower=text_tower)
    assert len(model.answer([render(make_scene(1))], ["what colour is the circle?"])) == 1
    assert "transcribe" in model.tasks and len(model.transcribe([np.zeros(8000, np.float32) + 0.1])) == 1
    # the image encoder was frozen: its weights are the colour stage's, bit for bit
    colour = load_builtin(tmp_path / "run" / "colour" / "weights", text_tower=text_tower)
    assert torch.equal(model.module.vision.patchify.weight, colour.module.vision.patchify.weight)
    assert not torch.equal(model.module.decoder.tok_emb.weight, colour.module.decoder.tok_emb.weight)


def test_a_training_step_builds_every_tensor_on_the_batch_device() -> None:
    """The model and the batch on `meta`: any tensor made on the CPU in the step fails it (as it would on CUDA)."""
    from model.train.data import to_device
    from model.train.loop import make_optimizer, train_step

    meta = torch.device("meta")
    config = _config(10)
    module = MultimodalTransformer(PRESETS["tiny"]).to(meta)
    batch = to_device(Batches(config, build_tokenizer())(0), meta)
    text = torch.empty(len(batch["captions"]), 384, device=meta)
    parts = train_step(module, make_optimizer(module, config), batch, text, config)
    assert set(parts) == {"caption", "answer", "contrastive", "align"}
    assert all(part.device == meta and part.shape == () for part in parts.values())
    assert all(p.grad is not None and p.grad.device == meta for p in module.parameters() if p.requires_grad)


def test_hard_position_scenes_ask_first_about_an_object_named_in_three_words() -> None:
    """`hard_position_share`: those scenes hold two objects told apart only by size, and their first question
    names one of them in three words; at 0 no scene is chosen so."""
    from dataclasses import replace

    tokenizer = build_tokenizer()
    config = replace(_config(10), batch_size=8, hard_position_share=1.0)
    batch = Batches(config, tokenizer)(3)
    first = [tokenizer.decode(row.tolist()) for row in batch["seq"][8:16]]  # the first question of each scene
    assert all(("large" in q or "small" in q) and (" left of " in q or " right of " in q) for q in first), first
    for caption, question in zip(batch["captions"], first, strict=True):
        named = re.search(r"(?:large|small) (\w+ \w+)", question)
        assert named and caption.count(named[1]) >= 2  # its colour and shape twice in the scene: size tells
    plain = Batches(replace(config, hard_position_share=0.0), tokenizer)(3)
    asked = [tokenizer.decode(row.tolist()) for row in plain["seq"][8:16]]
    assert sum(bool(re.search(r"(?:large|small) \w+ \w+ (?:left|right) of", q)) for q in asked) < 8


@pytest.mark.parametrize("reaches", [True, False])
def test_a_fresh_ctc_head_can_learn_alone_over_a_tower_that_hears(reaches: bool) -> None:
    """`ctc_reaches_tower=False`: the CTC loss trains its head and leaves the audio tower's gradients at zero."""
    from model.train.objective import speech_losses

    module = MultimodalTransformer(PRESETS["tiny+audio"])
    assert module.audio is not None and module.config.audio is not None
    head = torch.nn.Linear(module.config.vision.dim, module.config.decoder.vocab_size + 1)
    features, lengths = torch.randn(2, 120, module.config.audio.n_mels), torch.tensor([120, 80])
    seq = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    speech_losses(module, head, features, lengths, seq, 0, ctc_reaches_tower=reaches)["ctc"].backward()
    tower = [p.grad for p in module.audio.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in tower) == reaches
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
