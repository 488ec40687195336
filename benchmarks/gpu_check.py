"""The full M3Diff on one GPU, in one run: every part of the 7B path checked and timed, a JSON line per result.

    bash benchmarks/gpu_check.sh --out gpu.jsonl                   # on a GPU machine: 7B, bf16, cuda
    python benchmarks/gpu_check.py --preset tiny --device cpu --out cpu.jsonl   # the same stages, ~1 min on a CPU

Weights are random (built on the device; nothing is downloaded), so captions are noise: what is checked is
that each part runs, the shapes, dtypes and finiteness of what it returns, and how long and how much memory
it takes. The stages, in order; each is wrapped, so one that fails is recorded with its error and the next
one still runs:

- environment: GPU name, driver, memory; Python, torch, CUDA and the versions of the packages used;
- inference (benchmarks/bench_gpu_7b.py's measurements): build on the device, weight memory, prefill for one
  pair, per-token latency, an N-token caption (--tokens, 80 = ~60 words), pairs/s at batch 1/4/8/16, peak
  memory of each phase; the same with use_mdp=False, and the MDP overhead ratio of the two;
- train_paper_7b: three optimizer steps of the paper-7b recipe (LoRA r128 on the LLM; vision, projector and
  MDP trained; bf16; gradient checkpointing) at the recipe's per-device batch (batch 1 after an OOM);
- pipeline: DiffCaptioner.describe with its trace, both maps of every MDP layer placed on a non-square
  image (m3diff.geometry.grid_to_image), describe_stream, and one word attribution
  (analysis.attribution.explain_word) with its time and peak memory;
- app: the model saved and loaded again in the app's model process (m3diff.remote.RemoteCaptioner) on the
  device, describing there; then one /describe through the served app (gradio_client) if gradio is installed;
- space: the GPU Space's entry (spaces/entry.py, behind spaces.GPU) with that model in the server's
  process, answering /describe, if spaces and gradio are installed;
- train_embedded: the embedded recipe for --embedded-steps steps on pairs from `m3diff synth`, steps/s.
Last comes a summary line: each stage's status and the issue's goals beside what was measured.

Lines are flushed as they are written: a run cut short (the device's time limit) still reports what it
measured. --budget-s stops starting new stages once that many seconds have passed (the stage running then
finishes). --only STAGE,... runs some stages (environment always runs), e.g. to rerun one that failed.
Exit status: 0 when every stage ran or was skipped, 1 when one failed, 2 when the device is not there.

Wheels for the GPU machine (it has no network; its Python is 3.12, with torch 2.11, transformers 5.17,
accelerate 1.15, peft, huggingface_hub 1.33, tokenizers 0.23.2 and pandas, but no captum, gradio or
spaces). This project pins transformers 5.23.0, which accepts the machine's huggingface_hub and
tokenizers, so these must travel, about 15 MB in all:

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl transformers==5.23.0 captum==0.9.0 peft==0.21.2 regex==2026.11.19

(regex: transformers 5.23 checks for regex>=2025.10.22 at import, and the machine's version is not known
here.) `/.whl/` is in .gitignore; gpu_check.sh installs whatever is in .whl/ into /tmp/site with pip
--no-index and puts it first on PYTHONPATH. To also run the served-app and Space stages, add
gradio==6.31.0 gradio_client==2.7.2 spaces==0.51.3 plotly==7.1.0 and what they need that the machine lacks
(fastapi, starlette, uvicorn, pydantic, pydantic-core, orjson, python-multipart, safehttpx, groovy,
hf-gradio, brotli, pydub, semantic-version, tomlkit; `unzip -p .whl/NAME-*.whl '*/METADATA' | grep
^Requires-Dist` lists each one's needs). gradio alone is 83 MB installed here, so with transformers
that may not fit in one carry; without gradio those two parts are recorded as skipped, and the model
process on the device is still checked.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("environment", "inference", "train_paper_7b", "pipeline", "app", "space", "train_embedded")
# The goals (#33), on one H100-class GPU with the 7B preset.
GOALS = {"caption_80_tokens_s": 0.6, "mdp_overhead_ratio": 1.03}
EXPLAINED_CAPTION = "the red square appeared on the left"  # teacher-forced: a random model's caption has no words
PACKAGES = ("transformers", "tokenizers", "huggingface_hub", "safetensors", "accelerate", "peft", "captum",
            "numpy", "pillow", "gradio", "gradio_client", "spaces", "pycocoevalcap")


class Skip(Exception):
    """A stage that cannot run here (a package missing): recorded as skipped, with why."""


class ChecksFailed(AssertionError):
    """A stage ran, but what it returned is wrong (a shape, a dtype, a NaN): the stage fails."""


@dataclass(frozen=True)
class Settings:
    preset: str = "m3diff-7b"
    device: str = "cuda"
    dtype: str = "bfloat16"
    tokens: int = 80
    batches: tuple[int, ...] = (1, 4, 8, 16)
    repeats: int = 3
    train_steps: int = 3
    train_batch: int | None = None  # None: the paper-7b recipe's per-device batch
    embedded_steps: int = 60
    synth_pairs: int = 64
    budget_s: float = 420.0
    only: tuple[str, ...] = ()


@dataclass
class Run:
    """What one run's stages share, passed to each (no module state): settings, the output, a work folder,
    the non-square test pair, and the random captioner the pipeline stage hands on to the app stage."""

    settings: Settings
    out: object  # a text file, one JSON object per line
    workdir: Path
    started: float = field(default_factory=time.perf_counter)
    measured: dict = field(default_factory=dict)  # stage results the summary compares with the goals
    captioner: object | None = None  # built by pipeline, saved by app (then dropped)
    model_dir: Path | None = None  # the random model saved to disk, for the app and space stages
    bench: object = field(default_factory=lambda: load_bench())  # benchmarks/bench_gpu_7b.py
    _pair: tuple | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def write(self, line: dict) -> None:
        text = json.dumps({**line, "t": round(self.elapsed(), 2)}, default=_plain)
        self.out.write(text + "\n")
        self.out.flush()
        print(text, flush=True)

    @property
    def dtype(self):
        import torch

        return getattr(torch, self.settings.dtype)

    def pair(self) -> tuple:
        """(before, after) PIL images, 320×200 (not square: the maps must be placed through the padding),
        and the same as PNG files (what the app's clients upload)."""
        if self._pair is None:
            import numpy as np
            from PIL import Image

            rng = np.random.default_rng(0)
            before = rng.integers(0, 255, (200, 320, 3), dtype=np.uint8)
            after = before.copy()
            after[60:140, 40:120] = (255, 0, 0)
            images = Image.fromarray(before), Image.fromarray(after)
            paths = self.workdir / "before.png", self.workdir / "after.png"
            for image, path in zip(images, paths):
                image.save(path)
            self._pair = (*images, *(str(p) for p in paths))
        return self._pair


def _plain(value):
    """JSON for what json does not know: numpy scalars and arrays, paths, dtypes."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# ---------------------------------------------------------------------------------------- helpers
def load_bench():
    """benchmarks/bench_gpu_7b.py, whose measurements are the inference and paper-7b stages (loaded from
    its file: benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_gpu_7b", Path(__file__).with_name("bench_gpu_7b.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


def on_cuda(settings: Settings) -> bool:
    return settings.device.startswith("cuda")


def free_memory(settings: Settings) -> None:
    gc.collect()
    if on_cuda(settings):
        import torch

        torch.cuda.empty_cache()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(f"{', '.join(missing)} not installed (carry the wheels: see the docstring)")


def random_captioner(settings: Settings):
    """A DiffCaptioner over random weights of the preset, built on the device, with a small trained
    tokenizer (Qwen2's needs a download). The config takes our tokenizer's ids for <image> and <video>;
    every weight keeps the preset's shape (the 7B vocabulary of 152,064 included)."""
    import torch

    from m3diff.change_types import CHANGE_TYPES
    from m3diff.config import OUR_TOKENS, preset
    from m3diff.modeling import M3DiffForConditionalGeneration
    from m3diff.pipeline import DiffCaptioner
    from m3diff.processing import PairProcessor
    from m3diff.tokenizer import train_tokenizer

    corpus = [f"the {t.id} change: {t.definition}." for t in CHANGE_TYPES] + [EXPLAINED_CAPTION]
    tokenizer = train_tokenizer(corpus * 4, vocab_size=400)
    config = preset(settings.preset, **OUR_TOKENS)
    config._attn_implementation = "sdpa"  # what DiffCaptioner.from_pretrained loads a model with
    torch.manual_seed(0)
    with torch.device(settings.device):
        model = M3DiffForConditionalGeneration(config).to(getattr(torch, settings.dtype))
    return DiffCaptioner(model, PairProcessor.for_config(config, tokenizer), source=f"random {settings.preset}",
                         trained=False)


def description_checks(d, config, image_size: tuple[int, int]) -> tuple[dict, dict]:
    """(checks, facts) of one Description: the trace has every MDP layer; each map kind gives a before and
    an after [g, g] map, float32 and finite, and placed on the image it is [h, w] and finite; the Score is
    [d] in (0, 1); the feature difference is [g, g]."""
    import numpy as np

    from m3diff.describing import MAP_KINDS
    from m3diff.geometry import grid_to_image

    g, d_vision = config.patch_grid, config.vision_config.hidden_size
    w, h = image_size
    t = d.trace
    checks = {"caption_is_text": isinstance(d.caption, str), "has_trace": t is not None}
    facts = {"grid": g, "image_size": [w, h], "caption_chars": len(d.caption), "seconds": round(d.seconds, 4)}
    if t is None:
        return checks, facts
    checks["trace_layers"] = tuple(t.layers) == tuple(config.mdp_layers)
    maps_ok, placed_ok, finite, dtypes = True, True, True, set()
    for layer in t.layers:
        for kind in MAP_KINDS:
            raw = np.asarray(getattr(t, kind)[layer])
            dtypes.add(str(raw.dtype))
            for m in t.maps(layer, kind):  # before, after
                placed = grid_to_image(m, image_size)
                maps_ok &= m.shape == (g, g)
                placed_ok &= placed.shape == (h, w)
                finite &= bool(np.isfinite(m).all() and np.isfinite(placed).all())
    checks["maps_shape"], checks["placed_shape"], checks["maps_finite"] = maps_ok, placed_ok, finite
    checks["trace_float32"] = dtypes == {"float32"}
    scores = [np.asarray(t.score[layer]) for layer in t.layers]
    checks["score_shape"] = all(s.shape == (d_vision,) for s in scores)
    checks["score_in_0_1"] = all(bool(np.isfinite(s).all() and (s > 0).all() and (s < 1).all()) for s in scores)
    fd = d.feature_difference
    checks["feature_difference"] = fd is not None and fd.shape == (g, g) and bool(np.isfinite(fd).all())
    facts.update(layers=list(t.layers), placed_shape=[h, w], trace_dtypes=sorted(dtypes),
                 score_mean={str(k): round(v, 4) for k, v in t.score_mean.items()})
    return checks, facts


def checked(result: str, checks: dict, **facts) -> dict:
    """A result line with checks: the stage goes on, and fails at its end if one did not hold."""
    return {"result": result, "checks": {k: bool(v) for k, v in checks.items()}, **facts}


# ----------------------------------------------------------------------------------------- stages
def stage_environment(run: Run) -> Iterator[dict]:
    import importlib.metadata as md
    import shutil
    import subprocess

    import torch

    s = run.settings
    line = {"result": "environment", "preset": s.preset, "device": s.device, "dtype": s.dtype,
            "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count(), "versions": {}}
    for name in PACKAGES:
        try:
            line["versions"][name] = md.version(name)
        except md.PackageNotFoundError:
            line["versions"][name] = None
    spec = importlib.util.find_spec("transformers")
    line["transformers_from"] = str(Path(spec.origin).parent) if spec and spec.origin else None  # a carried wheel?
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        line.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count,
                    capability=f"{p.major}.{p.minor}")
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        line["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    yield line


def stage_inference(run: Run) -> Iterator[dict]:
    s, bench = run.settings, run.bench
    for use_mdp in (True, False):
        key = "m3diff" if use_mdp else "no_mdp"
        res = bench.measure_model(use_mdp, run.dtype, s.tokens, list(s.batches), s.repeats, s.preset, s.device)
        run.measured[key] = res
        yield {"result": key, "tokens": s.tokens, **res}
        free_memory(s)
    overhead = bench.mdp_overhead(run.measured["m3diff"], run.measured["no_mdp"])
    run.measured["mdp_overhead"] = overhead
    yield {"result": "mdp_overhead", **overhead}


def stage_train_paper_7b(run: Run) -> Iterator[dict]:
    import torch

    from training.recipe import load_recipe

    s = run.settings
    recipe_batch = load_recipe(REPO / "training" / "recipes" / "paper-7b.yaml").batch.per_device_batch
    batches = [s.train_batch or recipe_batch]
    if batches[0] > 1:
        batches.append(1)  # tried only after an out-of-memory at the recipe's batch
    for batch in batches:
        oom = False
        try:
            res = run.bench.train_steps(run.dtype, s.train_steps, batch, s.preset, s.device)
        except torch.cuda.OutOfMemoryError as exc:
            oom, message = True, str(exc).splitlines()[0]
        free_memory(s)
        if oom:
            run.measured.setdefault("train_oom", []).append(batch)
            yield {"result": f"batch_{batch}", "per_device_batch": batch, "out_of_memory": True, "error": message}
            continue
        run.measured["train"] = {**res, "recipe_batch": recipe_batch}
        yield checked(f"batch_{batch}", {"losses_finite": finite(res["losses"])}, recipe_batch=recipe_batch,
                      steps=s.train_steps, **res)
        return


def stage_pipeline(run: Run) -> Iterator[dict]:
    import numpy as np

    from analysis.attribution import explain_word
    from m3diff.describing import GenerationSettings

    s, bench = run.settings, run.bench
    before, after, _, _ = run.pair()
    size = before.size
    bench.reset_peak(s.device)
    t, captioner = bench.synced(lambda: random_captioner(s), s.device)
    config = captioner.model.config
    yield {"result": "build", "build_s": round(t, 2), "params": captioner.model.num_parameters_by_part()["total"],
           "peak_gib": bench.peak_gib(s.device)}
    settings = GenerationSettings(max_new_tokens=s.tokens)

    bench.reset_peak(s.device)
    t, d = bench.synced(lambda: captioner.describe(before, after, settings=settings), s.device)
    checks, facts = description_checks(d, config, size)
    yield checked("describe", checks, describe_s=round(t, 3), peak_gib=bench.peak_gib(s.device), **facts)

    start, first, parts = time.perf_counter(), None, []
    for part in captioner.describe_stream(before, after, settings=settings):
        first = first if first is not None else time.perf_counter() - start
        parts.append(part)
    stream_s = time.perf_counter() - start
    last = parts[-1]
    # the same pair twice: the same trace, up to bf16 kernels that need not repeat to the last bit
    checks = {"ends_done": last.done and not any(p.done for p in parts[:-1]),
              "trace_from_first_part": parts[0].trace is not None,
              "same_trace_as_describe": d.trace is not None and last.trace is not None
              and all(np.allclose(d.trace.delta_norm[k], last.trace.delta_norm[k], rtol=0.05, atol=1e-3)
                      for k in d.trace.layers)}
    yield checked("describe_stream", checks, parts=len(parts), first_part_s=round(first, 3), stream_s=round(stream_s, 3),
                  same_caption_as_describe=last.caption == d.caption)

    bench.reset_peak(s.device)
    t, a = bench.synced(lambda: explain_word(captioner, before, after, EXPLAINED_CAPTION, "square"), s.device)
    side, g = config.vision_config.image_size, config.patch_grid
    w, h = size
    checks = {"pixels_shape": a.pixels.shape == (2, side, side), "patches_shape": a.patches.shape == (2, g, g),
              "image_maps_shape": all(m.shape == (h, w) for m in a.image_maps),
              "finite": bool(np.isfinite(a.pixels).all() and np.isfinite(a.patches).all() and np.isfinite(a.score)),
              "reaches_both_images": bool((a.pixels.reshape(2, -1).max(1) > 0).all())}
    yield checked("explain_word", checks, word=a.word, tokens=a.tokens, method=a.method, score=round(a.score, 4),
                  explain_s=round(t, 3), peak_gib=bench.peak_gib(s.device))
    run.captioner = captioner  # the app stage saves it: one build for both


def stage_app(run: Run) -> Iterator[dict]:
    from m3diff.describing import GenerationSettings
    from m3diff.remote import RemoteCaptioner

    s = run.settings
    _, _, before, after = run.pair()
    yield from _save_model(run)
    start = time.perf_counter()
    remote = RemoteCaptioner.start(run.model_dir, device=s.device)
    try:
        info = remote.info  # waits for the model process to load the model
        load_s = time.perf_counter() - start
        settings = GenerationSettings(max_new_tokens=s.tokens)
        t0 = time.perf_counter()
        d = remote.describe(before, after, settings=settings)
        describe_s = time.perf_counter() - t0
        parts = list(remote.describe_stream(before, after, settings=settings))
        config = _saved_config(run.model_dir)
        checks, facts = description_checks(d, config, run.pair()[0].size)
        checks.update(on_device=info.device.startswith(s.device), dtype=info.dtype == s.dtype,
                      uses_mdp=info.use_mdp, stream_ends_done=bool(parts) and parts[-1].done)
        yield checked("model_process", checks, load_s=round(load_s, 2), describe_s=round(describe_s, 3),
                      device=info.device, model_dtype=info.dtype, stream_parts=len(parts), **facts)
        try:
            require("gradio", "gradio_client")
        except Skip as why:
            yield {"result": "served_app", "skipped": str(why)}
            return
        import app

        app_config = app.AppConfig(port=free_port(), max_new_tokens=s.tokens)
        yield _served_describe(app, app.Services(remote, None, {}, "", app_config), app_config, before, after,
                               config, s.tokens)
    finally:
        remote.close()


def stage_space(run: Run) -> Iterator[dict]:
    require("spaces", "gradio", "gradio_client")
    import spaces

    from hosting import build_space

    s = run.settings
    _, _, before, after = run.pair()
    if run.model_dir is None:
        yield from _save_model(run)
    space = build_space(run.workdir / "space")  # without --model: the 7B model is named by M3DIFF_MODEL, not copied
    env = {"M3DIFF_MODEL": str(run.model_dir), "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(free_port())}
    names = ("m3diff_space_entry", "m3diff_app")
    with _environ(env), _on_path(space):
        try:
            start = time.perf_counter()
            spec = importlib.util.spec_from_file_location(names[0], space / "app.py")
            entry = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(entry)  # as the Space does: the model loads at import, in this process
            load_s = time.perf_counter() - start
            captioner = entry.SERVICES.captioner
            probe = lambda: None  # noqa: E731
            duration = entry.gpu_seconds(s.tokens)
            checks = {"model_on_device": str(captioner.model.device).startswith(s.device),
                      "model_in_server_process": hasattr(captioner, "model"),
                      "gpu_seconds_in_range": 0 < duration <= 120}
            yield checked("entry", checks, load_s=round(load_s, 2), gpu_seconds=duration,
                          zero_gpu=bool(os.environ.get("SPACES_ZERO_GPU")),
                          spaces_gpu_is_passthrough=spaces.GPU(duration=entry.gpu_seconds)(probe) is probe)
            yield _served_describe(entry.app, entry.SERVICES, entry.CONFIG, before, after,
                                   _saved_config(run.model_dir), s.tokens, demo=entry.demo)
        finally:
            for name in names:
                sys.modules.pop(name, None)
    free_memory(s)


def stage_train_embedded(run: Run) -> Iterator[dict]:
    import csv

    from m3diff.data.synth.generator import SynthConfig, generate
    from training.recipe import load_recipe
    from training.train import train

    s = run.settings
    data = run.workdir / "synth"
    start = time.perf_counter()
    generate(SynthConfig(seed=0, pairs=s.synth_pairs, size=128), data, progress=False)
    synth_s = time.perf_counter() - start
    # no validation: scoring needs pycocoevalcap and Java, and the steps are what is timed here
    overrides = ["data.val_pairs=0", "log_every=1", "checkpoint_every=0"]
    if s.preset == "tiny":  # the CPU test: the recipe on the tiny model, a small batch
        overrides += ["model.preset=tiny", "batch.global_batch=4", "batch.per_device_batch=4"]
    recipe = load_recipe(REPO / "training" / "recipes" / "embedded.yaml", overrides)
    out = run.workdir / "embedded-run"
    start = time.perf_counter()
    result = train(recipe, [str(data)], out, stop_at_step=s.embedded_steps, quiet=True)
    total_s = time.perf_counter() - start
    rows = list(csv.DictReader((out / "log.csv").open()))
    meta = json.loads((out / "run.json").read_text())
    # from the log: the first step (kernels, allocator, data start-up) is left out
    span = float(rows[-1]["elapsed_s"]) - float(rows[0]["elapsed_s"])
    s_per_step = span / (len(rows) - 1) if len(rows) > 1 and span > 0 else None
    losses = [float(r["loss"]) for r in rows]
    res = {"steps": result.step, "per_device_batch": recipe.batch.per_device_batch, "precision": meta["precision"],
           "model_preset": recipe.model.preset, "synth_pairs": s.synth_pairs, "synth_s": round(synth_s, 2),
           "run_s": round(total_s, 2), "s_per_step": None if s_per_step is None else round(s_per_step, 4),
           "steps_per_s": None if not s_per_step else round(1 / s_per_step, 2), "first_loss": losses[0],
           "last_loss": losses[-1]}
    run.measured["train_embedded"] = res
    yield checked("steps", {"all_steps_ran": result.step == s.embedded_steps == len(rows),
                            "losses_finite": finite(losses)}, **res)


STAGE_FUNCTIONS: dict[str, Callable[[Run], Iterator[dict]]] = {
    "environment": stage_environment, "inference": stage_inference, "train_paper_7b": stage_train_paper_7b,
    "pipeline": stage_pipeline, "app": stage_app, "space": stage_space, "train_embedded": stage_train_embedded,
}


# --------------------------------------------------------------------------- pieces of the app stages
def _save_model(run: Run) -> Iterator[dict]:
    """Save the pipeline stage's captioner (or a fresh one, if that stage did not run) for the model process."""
    s, bench = run.settings, run.bench
    captioner, run.captioner = run.captioner, None
    if captioner is None:
        captioner = random_captioner(s)
    folder = run.workdir / "model"
    t, _ = bench.synced(lambda: captioner.save_pretrained(folder), s.device)
    del captioner
    free_memory(s)  # the model process loads its own copy
    run.model_dir = folder
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    yield {"result": "saved", "save_s": round(t, 2), "disk_gib": round(size / 2**30, 2)}


def _saved_config(folder: Path):
    from m3diff.config import M3DiffConfig

    return M3DiffConfig.from_pretrained(str(folder))


def _served_describe(app_module, services, app_config, before: str, after: str, config, tokens: int, *,
                     demo=None) -> dict:
    """One /describe through the served app, as a client calls it (gradio_client, the two files uploaded)."""
    from gradio_client import Client, handle_file

    if demo is None:
        demo = app_module.build_app(services)
    start = time.perf_counter()
    app_module.launch(demo, app_config, prevent_thread_lock=True, quiet=True)
    try:
        up_s = time.perf_counter() - start
        client = Client(f"http://127.0.0.1:{app_config.port}/", verbose=False)
        t0 = time.perf_counter()
        caption, scores, _ = client.predict(handle_file(before), handle_file(after), tokens, api_name="/describe")
        describe_s = time.perf_counter() - t0
    finally:
        demo.close()
    checks = {"caption_is_text": isinstance(caption, str),
              "scores_per_mdp_layer": sorted(scores) == sorted(str(k) for k in config.mdp_layers),
              "scores_in_0_1": all(0 < float(v) < 1 for v in scores.values())}
    return checked("served_app", checks, start_s=round(up_s, 2), describe_s=round(describe_s, 3))


@contextlib.contextmanager
def _environ(values: dict):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _on_path(folder: Path):
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(folder))


# ------------------------------------------------------------------------------------------ the run
def run_stages(run: Run) -> dict[str, str]:
    """Each stage in order, each wrapped: a failure is one line (error and traceback tail) and the run goes on."""
    s = run.settings
    statuses: dict[str, str] = {}
    for name in STAGES:
        if name != "environment" and s.only and name not in s.only:
            continue
        start = time.perf_counter()
        if name != "environment" and run.elapsed() >= s.budget_s:
            statuses[name] = "skipped"
            run.write({"stage": name, "status": "skipped",
                       "reason": f"budget: {run.elapsed():.0f} s of --budget-s {s.budget_s:g} spent"})
            continue
        try:
            bad = []
            for line in STAGE_FUNCTIONS[name](run):
                run.write({"stage": name, **line})
                bad += [f"{line['result']}.{k}" for k, ok in line.get("checks", {}).items() if not ok]
            if bad:
                raise ChecksFailed(f"checks failed: {', '.join(bad)}")
        except Skip as why:
            statuses[name] = "skipped"
            run.write({"stage": name, "status": "skipped", "reason": str(why),
                       "seconds": round(time.perf_counter() - start, 2)})
        except Exception as exc:  # noqa: BLE001 — recorded; the next stage still runs
            statuses[name] = "failed"
            tail = traceback.format_exception(exc)[-6:]
            run.write({"stage": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                       "traceback": "".join(tail), "seconds": round(time.perf_counter() - start, 2)})
        else:
            statuses[name] = "ok"
            run.write({"stage": name, "status": "ok", "seconds": round(time.perf_counter() - start, 2)})
        finally:
            if name != "pipeline":  # the app stage took it, or did not run: a 7B model is not kept for nothing
                run.captioner = None
            free_memory(s)
        if name == "environment" and on_cuda(s):
            import torch

            if not torch.cuda.is_available():
                statuses["device"] = "missing"
                return statuses
    return statuses


def goals(run: Run) -> dict:
    """The issue's goals beside what this run measured (None where it was not measured)."""
    m = run.measured
    caption = m.get("m3diff", {}).get("caption_s") if run.settings.tokens == 80 else None
    ratio = m.get("mdp_overhead", {}).get("caption_ratio")
    train = m.get("train")
    fits = (train["per_device_batch"] == train["recipe_batch"]) if train else (False if m.get("train_oom") else None)
    return {
        "caption_80_tokens_s": {"goal": f"<= {GOALS['caption_80_tokens_s']}", "measured": caption,
                                "met": None if caption is None else caption <= GOALS["caption_80_tokens_s"]},
        "mdp_overhead_caption_ratio": {"goal": f"<= {GOALS['mdp_overhead_ratio']}", "measured": ratio,
                                       "met": None if ratio is None else ratio <= GOALS["mdp_overhead_ratio"]},
        "train_step_fits_at_recipe_batch": {"met": fits, "peak_gib": train["peak_gib"] if train else None},
        "preset": run.settings.preset, "device": run.settings.device,
    }


def parse_args(argv=None) -> tuple[Settings, Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Stages: " + ", ".join(STAGES) + ". See the module docstring for wheels.")
    p.add_argument("--preset", default="m3diff-7b", help="model size (default m3diff-7b; tiny for a CPU)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="weights' dtype (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--tokens", type=int, default=80, help="caption length in tokens (80 = ~60 words)")
    p.add_argument("--batches", default="1,4,8,16", help="batch sizes of the throughput run")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of prefill and caption (median)")
    p.add_argument("--train-steps", type=int, default=3, help="paper-7b optimizer steps timed (after one warm-up)")
    p.add_argument("--train-batch", type=int, default=None, help="paper-7b per-device batch (default: the recipe's)")
    p.add_argument("--embedded-steps", type=int, default=60, help="steps of the embedded recipe")
    p.add_argument("--synth-pairs", type=int, default=64, help="generated pairs the embedded recipe trains on")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="start no stage after this many seconds (default 420: the run ends within ~8 minutes)")
    p.add_argument("--only", default="", help="comma-separated stages to run (environment always runs)")
    p.add_argument("--out", default="gpu_check.jsonl", help="the JSON-lines file to write (default gpu_check.jsonl)")
    a = p.parse_args(argv)
    only = tuple(x.strip() for x in a.only.split(",") if x.strip())
    unknown = [x for x in only if x not in STAGES]
    if unknown:
        p.error(f"--only: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    try:
        batches = tuple(int(b) for b in a.batches.split(",") if b.strip())
    except ValueError:
        p.error(f"--batches must be comma-separated integers, got {a.batches!r}")
    if a.tokens < 2:
        p.error("--tokens must be at least 2 (per-token latency is the difference of a 1- and an N-token caption)")
    dtype = a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")
    return Settings(preset=a.preset, device=a.device, dtype=dtype, tokens=a.tokens, batches=batches,
                    repeats=a.repeats, train_steps=a.train_steps, train_batch=a.train_batch,
                    embedded_steps=a.embedded_steps, synth_pairs=a.synth_pairs, budget_s=a.budget_s, only=only), Path(a.out)


def main(argv=None) -> int:
    settings, out_path = parse_args(argv)
    if str(REPO) not in sys.path:  # m3diff, analysis, training and app.py from this checkout, installed or not
        sys.path.insert(0, str(REPO))
    from m3diff.config import PRESETS

    if settings.preset not in PRESETS:
        print(f"gpu_check: error: unknown preset {settings.preset!r}; presets: {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as out, tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        run = Run(settings, out, Path(tmp))
        statuses = run_stages(run)
        if statuses.get("device") == "missing":
            run.write({"stage": "summary", "status": "failed", "error": "no CUDA device"})
            print(f"gpu_check: error: --device {settings.device} but torch {_torch_version()} sees no CUDA GPU. "
                  "On a CPU run: --preset tiny --device cpu", file=sys.stderr)
            return 2
        failed = [k for k, v in statuses.items() if v == "failed"]
        run.write({"stage": "summary", "status": "failed" if failed else "ok", "stages": statuses,
                   "goals": goals(run), "seconds": round(run.elapsed(), 1)})
    print(f"gpu_check: {len(statuses)} stages, {len(failed)} failed; results in {out_path}", file=sys.stderr)
    return 1 if failed else 0


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    sys.exit(main())
