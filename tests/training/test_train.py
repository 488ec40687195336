"""`m3diff train` on the tiny preset: smoke run, overfit, which parameters train, exact resume,
two processes = one process, and recipes that fail before any work starts."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "training" / "recipes" / "tiny-cpu.yaml"
ACCEL_2CPU = REPO / "training" / "recipes" / "accelerate" / "2cpu.yaml"
LORA = [  # the paper's structure on the tiny model: LoRA on the LLM, the rest fully trained
    "lora={rank: 4, alpha: 8, dropout: 0.1}", "optim.lr=1e-2", "optim.lr_vision=1e-3",
]


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    from m3diff.cli import main

    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(out), "--pairs", "40", "--seed", "5", "--size", "64", "--quiet"]) == 0
    return out


def _train(recipe, data, out, **kw):
    from training.train import train

    return train(recipe, [str(data)], out, quiet=True, **kw)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(ckpt / "model.safetensors"))


def test_smoke_run_saves_a_loadable_model_with_logs_and_card(synth_data, tmp_path):
    from m3diff.pipeline import DiffCaptioner

    recipe = load_recipe(TINY, ["max_steps=3", "checkpoint_every=2", "data.val_pairs=2"])
    result = _train(recipe, synth_data, tmp_path / "run")
    assert result.step == 3
    model_dir = tmp_path / "run" / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "README.md"):
        assert (model_dir / name).is_file(), name
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 1 + 3
    assert "CIDEr-D" in (tmp_path / "run" / "eval.csv").read_text().splitlines()[0]
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    captioner = DiffCaptioner.from_pretrained(model_dir)
    pair = next(iter(sorted((synth_data / "images").glob("*_before.png"))))
    d = captioner.describe(pair, str(pair).replace("_before", "_after"))
    assert isinstance(d.caption, str)


def test_loss_falls_on_a_small_overfit_set(synth_data, tmp_path):
    # every step reads the same 8 samples (global batch = the whole set of one pair's worth of samples)
    recipe = load_recipe(TINY, ["max_steps=25", "checkpoint_every=0", "data.val_pairs=0", "optim.lr=3e-3",
                                "batch.global_batch=8", "batch.per_device_batch=8", "log_every=1"])
    from training.data import load_samples

    samples = load_samples([str(synth_data)], False, 0)
    jsonl = tmp_path / "eight.jsonl"
    import json

    jsonl.write_text("".join(json.dumps({"id": s.id, "before": s.before, "after": s.after, "answer": s.answer}) + "\n"
                             for s in samples[:8]))
    _train(recipe, jsonl, tmp_path / "run")
    losses = [float(r.split(",")[2]) for r in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    assert losses[-1] < 0.7 * losses[0], losses  # from ~ln(vocab); a model that learns nothing stays there
    assert sum(losses[-5:]) < sum(losses[:5]) - 5 * 1.0, losses


def test_exactly_the_intended_parameters_get_gradients(synth_data, tmp_path):
    """LoRA + vision encoder + projector + MDP; no frozen LLM weight (timm-style check)."""
    from training.data import Collator, load_samples
    from training.train import answer_loss_sum, apply_lora, build_model, build_tokenizer, param_groups

    recipe = load_recipe(TINY, LORA)

    class Acc:  # build_tokenizer's view of the accelerator: one process
        is_main_process = True

        def wait_for_everyone(self):
            pass

    samples = load_samples([str(synth_data)], False, 0)
    tok = build_tokenizer(recipe, samples, tmp_path, Acc())
    torch.manual_seed(0)
    model = build_model(recipe, tok)
    from m3diff.processing import PairProcessor

    processor = PairProcessor.for_config(model.config, tok)
    model = apply_lora(recipe, model)
    loss, n = answer_loss_sum(model, Collator(processor)(samples[:4]))
    loss.backward()
    assert n > 0
    trainable_parts = (".lora_", ".vision_tower.", ".multi_modal_projector.", ".mdp.", "image_newline")
    for name, p in model.named_parameters():
        if any(part in name for part in trainable_parts):
            assert p.requires_grad, name
            if "post_layernorm" in name:  # SigLIP's last norm never feeds LLaVA-OneVision's features
                continue
            assert p.grad is not None, f"{name} got no gradient"
            if ".lora_A." not in name:  # LoRA's B starts at zero, so A's first gradient is exactly zero
                assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"
        else:  # the LLM's base weights, embeddings and lm_head stay frozen under LoRA
            assert not p.requires_grad and p.grad is None, f"frozen {name} got a gradient"
    groups = {g["name"]: g for g in param_groups(recipe, model)}
    assert groups["vision"]["lr"] == recipe.optim.lr_vision and groups["rest"]["lr"] == recipe.optim.lr
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)


def test_a_frozen_image_path_keeps_its_weights_while_the_llm_trains(synth_data, tmp_path):
    """model.frozen (the embedded copy stage): vision tower, MDP, projector and image_newline come out
    bit-equal, the LLM moves; a frozen stage with grounding is refused before any work."""
    frozen = "model.frozen=[vision_tower, mdp, multi_modal_projector, image_newline]"
    recipe = load_recipe(TINY, ["lora=null", frozen, "max_steps=2", "checkpoint_every=1", "data.val_pairs=0",
                                "optim.lr=1e-2"])
    _train(recipe, synth_data, tmp_path / "run", stop_at_step=2)
    first = load_file(str(tmp_path / "run" / "checkpoints" / "step-000001" / "model.safetensors"))
    last = _weights(tmp_path / "run")
    parts = (".vision_tower.", ".mdp.", ".multi_modal_projector.", "image_newline")
    image_path = [k for k in last if any(part in f".{k}" for part in parts)]
    assert image_path and any(".mdp." in f".{k}" for k in image_path)
    assert all(torch.equal(first[k], last[k]) for k in image_path)
    llm = [k for k in last if "language_model" in k]
    assert sum(not torch.equal(first[k], last[k]) for k in llm) > len(llm) // 2
    with pytest.raises(RecipeError, match="model.frozen"):
        load_recipe(TINY, [frozen, "grounding={weight: 1.0}"])


def test_kill_and_resume_reaches_the_same_weights(synth_data, tmp_path):
    recipe = load_recipe(TINY, LORA + ["max_steps=4", "checkpoint_every=2", "data.val_pairs=0"])
    _train(recipe, synth_data, tmp_path / "straight")
    # the interrupted run stops right after its step-2 checkpoint, as if killed there, then resumes
    stopped = _train(recipe, synth_data, tmp_path / "resumed", stop_at_step=2)
    assert stopped.step == 2 and stopped.model_dir is None
    with pytest.raises(FileExistsError):  # a second start without --resume must not overwrite the run
        _train(recipe, synth_data, tmp_path / "resumed")
    _train(recipe, synth_data, tmp_path / "resumed", resume=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    # and the weights did move during the resumed half
    half = load_file(str(tmp_path / "resumed" / "checkpoints" / "step-000002" / "model.safetensors"))
    assert any(not torch.equal(half[k], b[k]) for k in b)


def test_stop_at_saves_the_model_part_way_and_resume_continues_the_same_schedule(synth_data, tmp_path):
    from m3diff.cli import main

    common = ["train", "--recipe", str(TINY), "--data", str(synth_data), "--out", str(tmp_path / "run"), "--quiet",
              "--max-steps", "4", "--set", "checkpoint_every=0", "--set", "data.val_pairs=0"]
    assert main(common + ["--stop-at", "3"]) == 0  # 3 is no checkpoint_every multiple: the stop writes one
    model_dir = tmp_path / "run" / "model"
    step3 = load_file(str(tmp_path / "run" / "checkpoints" / "step-000003" / "model.safetensors"))
    from m3diff.pipeline import DiffCaptioner

    saved = DiffCaptioner.from_pretrained(model_dir).model.state_dict()
    dtype = getattr(torch, load_recipe(TINY).save_dtype)
    assert saved.keys() == step3.keys()
    assert all(torch.equal(saved[k].to(dtype), step3[k].to(dtype)) for k in saved)  # the model step 3 left
    assert "step 3 of a 4-step schedule" in (model_dir / "README.md").read_text()
    # asked again at the same step: nothing trains, the same model comes out
    assert main(common + ["--resume", "--stop-at", "3"]) == 0
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 1 + 3
    # continuing finishes the 4-step schedule exactly as one uninterrupted run
    assert main(common + ["--resume"]) == 0
    straight = tmp_path / "straight"
    assert main(common[:6] + [str(straight)] + common[7:]) == 0
    a, b = _weights(tmp_path / "run"), _weights(straight)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "part-way" not in (model_dir / "README.md").read_text()


def test_a_run_continues_from_a_float16_saved_model_with_float32_master_weights(synth_data, tmp_path):
    # the embedded model ships in float16 (save_dtype); fine-tuning it must not train in float16
    first = load_recipe(TINY, ["max_steps=2", "checkpoint_every=0", "data.val_pairs=0", "save_dtype=float16"])
    _train(first, synth_data, tmp_path / "first")
    start = tmp_path / "first" / "model"
    saved = load_file(str(start / "model.safetensors"))
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float16}
    again = load_recipe(TINY, ["max_steps=2", "checkpoint_every=0", "data.val_pairs=0",
                               f"model.init_from={start}", f"model.tokenizer={start}"])
    assert _train(again, synth_data, tmp_path / "again").step == 2
    after = _weights(tmp_path / "again")
    assert {v.dtype for v in after.values() if v.is_floating_point()} == {torch.float32}
    shared = [k for k in saved if k in after and saved[k].is_floating_point()]
    assert shared and any(not torch.equal(after[k].half(), saved[k]) for k in shared)  # it trained from there


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(synth_data, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    common = ["train", "--recipe", str(TINY), "--data", str(synth_data), "--quiet", "--max-steps", "3",
              "--set", "data.val_pairs=0", "--set", "batch.global_batch=8", "--set", "batch.per_device_batch=4",
              "--set", "num_threads=1"]
    one = subprocess.run([sys.executable, "-m", "m3diff.cli", *common, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCEL_2CPU), "--main_process_port", str(port),
         "-m", "m3diff.cli", *common, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    run = (tmp_path / "two" / "run.json").read_text()
    assert '"world_size": 2' in run and '"accumulation": 1' in run
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst  # the same micro-batches; only the all-reduce's summation order differs


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optimizer.lr=1"], "unknown key optimizer"),
        (["lora.rnk=4"], "unknown key lora.rnk"),
        (["optim.lr=fast"], "optim.lr: expected a number"),
        (["batch.global_batch=10", "batch.per_device_batch=4"], "not a multiple of per_device_batch"),
        (["max_steps=2.5"], "max_steps: expected an integer"),
        (["model.preset=huge"], "unknown preset 'huge'"),
        (["model.config={mdp_layers: [9]}"], "model.config"),
        (["precision=fp8"], "precision"),
        (["model.attn_implementation=flash"], "model.attn_implementation"),
        (["grounding={weight: 1.0}", "grounding.scene_share=9"], "grounding.scene_share"),
    ],
)
def test_bad_recipes_fail_on_load_with_the_key_named(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(TINY, overrides)


def test_bad_recipe_and_missing_data_fail_before_any_work(tmp_path, capsys):
    from m3diff.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text() + "\nlearning_rate: 3\n")
    out = tmp_path / "run"
    assert main(["train", "--recipe", str(bad), "--data", str(tmp_path), "--out", str(out)]) == 2
    assert "unknown key learning_rate" in capsys.readouterr().err
    assert main(["train", "--recipe", str(TINY), "--data", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--recipe", str(TINY), "--out", str(out)]) == 2
    assert "no training data" in capsys.readouterr().err
    assert not out.exists()  # nothing started


def test_impossible_batch_for_the_process_count():
    recipe = load_recipe(TINY, ["batch.global_batch=8", "batch.per_device_batch=4"])
    assert recipe.accumulation(1) == 2 and recipe.accumulation(2) == 1
    with pytest.raises(RecipeError, match="× 3 processes"):
        recipe.accumulation(3)


def test_bundled_recipes_load():
    for path in sorted((REPO / "training" / "recipes").glob("*.yaml")):
        recipe = load_recipe(path)
        assert recipe.batch.global_batch % recipe.batch.per_device_batch == 0
    paper = load_recipe(REPO / "training" / "recipes" / "paper-7b.yaml")
    assert (paper.lora.rank, paper.lora.alpha) == (128, 256)
    assert (paper.optim.lr_vision, paper.optim.lr) == (2e-6, 1e-5)
    assert paper.batch.global_batch == 256 and paper.precision == "bf16" and paper.gradient_checkpointing


def test_the_loss_over_the_answer_window_is_the_loss_over_every_position(synth_data):
    """step_losses runs the LM head only from the position before the first answer token on (answers
    end every row, rows are left-padded); it must score exactly what the full logits score."""
    from m3diff.processing import answer_cross_entropy
    from training.data import Collator, load_samples
    from training.train import build_model, build_tokenizer, step_losses

    recipe = load_recipe(TINY)
    samples = load_samples([str(synth_data)], True, 0)
    samples = sorted(samples, key=lambda s: len(s.answer))
    batch_samples = [samples[0], samples[-1]]  # the shortest and the longest answer: different windows
    tokenizer = build_tokenizer(recipe, samples, synth_data / "tok-window", _NoAccelerator())
    torch.manual_seed(0)
    model = build_model(recipe, tokenizer).eval()
    from m3diff.processing import PairProcessor

    batch = Collator(PairProcessor.for_config(model.config, tokenizer))(batch_samples)
    with torch.no_grad():
        window_sum, window_n, _ = step_losses(model, batch)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"],
                     batch_num_images=batch["batch_num_images"], use_cache=False).logits
    sums, counts = answer_cross_entropy(full, batch["labels"])
    assert window_n == int(counts.sum()) > 0
    torch.testing.assert_close(window_sum, sums.sum(), rtol=1e-5, atol=1e-4)


class _NoAccelerator:
    is_main_process = True

    def wait_for_everyone(self):
        pass


def test_a_run_over_its_memory_limit_checkpoints_the_step_and_resume_finishes_it(synth_data, tmp_path, capsys):
    from m3diff.cli import main
    from training.checkpoint import MemoryLimitReached

    recipe = load_recipe(TINY, ["max_steps=3", "checkpoint_every=0", "data.val_pairs=0"])
    with pytest.raises(MemoryLimitReached) as caught:  # any process holds more than a kilobyte
        _train(recipe, synth_data, tmp_path / "lib", memory_limit_gb=1e-6)
    assert caught.value.step == 1 and caught.value.fresh and caught.value.rss_gb > 0.05
    assert (tmp_path / "lib" / "checkpoints" / "step-000001").is_dir()  # saved although checkpoint_every is 0
    done = _train(recipe, synth_data, tmp_path / "lib", resume=True)
    assert done.step == 3 and done.model_dir is not None

    # through the command: a limit no fresh process can keep is a clear error, with the step kept
    out = tmp_path / "cli"
    args = ["train", "--recipe", str(TINY), "--data", str(synth_data), "--out", str(out), "--max-steps", "3",
            "--set", "data.val_pairs=0", "--quiet"]
    assert main(args + ["--memory-limit", "0.000001"]) == 2
    err = capsys.readouterr().err
    assert "passed the limit of 1e-06 GB at step 1" in err and "raise --memory-limit" in err
    assert (out / "checkpoints" / "step-000001").is_dir() and not (out / "model").exists()
    assert main(args + ["--memory-limit", "0"]) == 2
    assert "must be a positive number" in capsys.readouterr().err


def test_past_its_first_step_a_run_over_the_limit_continues_in_a_fresh_process(synth_data, tmp_path, monkeypatch,
                                                                                 capsys):
    import subprocess
    import sys

    import training.train
    from m3diff.cli import main
    from training.checkpoint import MemoryLimitReached

    out = tmp_path / "run"
    args = ["train", "--recipe", str(TINY), "--data", str(synth_data), "--out", str(out), "--max-steps", "4",
            "--set", "data.val_pairs=0", "--set", "checkpoint_every=1", "--quiet"]
    assert main(args + ["--stop-at", "2"]) == 0  # the process that will have "grown": its step 2 is checkpointed

    def grown(*a, **kw):
        raise MemoryLimitReached(2, 7.5, 6.0, fresh=False)

    def execv(path, argv):
        raise SystemExit(("exec", path, argv))

    monkeypatch.setattr(training.train, "train", grown)
    monkeypatch.setattr("os.execv", execv)
    with pytest.raises(SystemExit) as replaced:
        main(args + ["--memory-limit", "6"])
    _, path, argv = replaced.value.code
    assert path == sys.executable and argv[:4] == [sys.executable, "-m", "m3diff", "train"]
    assert "--resume" in argv and argv[argv.index("--memory-limit") + 1] == "6.0"
    assert "continuing in a fresh process" in capsys.readouterr().err
    # the command it would run continues the same run to its end
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "trained to step 4" in run.stdout and (out / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_bf16_trains_in_float32(synth_data, tmp_path, monkeypatch, native):
    # there bf16 matrix products fall back to a scalar kernel: a step took 10-15x the float32 time
    import json

    from training.train import run_precision

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # its mixed precision is set once per process
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert run_precision("bf16", cuda=True) == "bf16" and run_precision("no", cuda=False) == "no"
    recipe = load_recipe(TINY, ["max_steps=1", "checkpoint_every=0", "data.val_pairs=0", "precision=bf16"])
    try:
        if native:
            _train(recipe, synth_data, tmp_path / "run")
        else:
            with pytest.warns(UserWarning, match="without native bf16"):
                _train(recipe, synth_data, tmp_path / "run")
    finally:
        AcceleratorState._reset_state(True)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["precision"] == ("bf16" if native else "no")


def test_precision_no_is_read_as_float32_though_yaml_reads_a_bare_no_as_false(tmp_path):
    assert load_recipe(TINY, ["precision=no"]).precision == "no"
    bare = tmp_path / "r.yaml"
    bare.write_text(TINY.read_text() + "precision: no\n")
    assert load_recipe(bare).precision == "no"
    with pytest.raises(RecipeError, match="precision"):
        load_recipe(TINY, ["precision=yes"])


def test_a_run_without_validation_trains_where_the_scorer_is_not_installed(synth_data, tmp_path, monkeypatch):
    # pycocoevalcap (and its Java) scores validation only: a GPU machine without it still trains
    # (benchmarks/gpu_check.py times the embedded recipe there with data.val_pairs=0)
    monkeypatch.setitem(sys.modules, "analysis.metrics", None)  # `import analysis.metrics` now raises ImportError
    recipe = load_recipe(TINY, ["max_steps=2", "checkpoint_every=0", "data.val_pairs=0"])
    result = _train(recipe, synth_data, tmp_path / "run")
    assert result.step == 2 and (tmp_path / "run" / "model" / "config.json").is_file()
    assert not (tmp_path / "run" / "eval.csv").exists()
