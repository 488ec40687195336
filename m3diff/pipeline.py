"""DiffCaptioner: load an M3Diff model and describe what changed between two images, with the evidence.

    captioner = DiffCaptioner.from_pretrained()            # the embedded default in m3diff/weights/
    captioner = DiffCaptioner.from_pretrained("runs/m3")   # a local directory (save_pretrained layout)
    captioner = DiffCaptioner.from_pretrained("org/name")  # a hub id (needs network access)
    d = captioner.describe("before.png", "after.png")
    d.caption, d.layer_scores   # "the red cube …", {17: 0.31, 20: 0.22, …}
    d.trace                     # a PairTrace: numpy maps per MDP layer (ΔF norm, eq. 5 and eq. 6 attention)

Everything a Description holds is plain CPU data (str, float, numpy), ready for JSON or a UI.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from m3diff.change_types import CHANGE_TYPES
from m3diff.config import M3DiffConfig, preset
from m3diff.describing import (  # noqa: F401 — re-exported: the pipeline is where users look for them
    EMBEDDED_DIR,
    EMBEDDED_TWIN_DIR,
    Description,
    GenerationSettings,
    ModelInfo,
    ModelLoadError,
)
from m3diff.facts import ChangeReading, said
from m3diff.images import load_image
from m3diff.modeling import M3DiffForConditionalGeneration, M3DiffImageFeatures, feature_difference, register_auto_classes
from m3diff.processing import PairProcessor, facts_instruction
from m3diff.reader import ReaderConfig
from m3diff.stopping import EndThreshold
from m3diff.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)

# A change reader as small as the tiny preset: 32-px images, a 4×4 token grid.
TINY_READER = ReaderConfig(image_size=32, width=32, heads=2, decoder_layers=1, crop_height=8, crop_width=16)

# Models this large are refused on a CPU: a 7B model needs ~30 GB and minutes per caption there.
CPU_PARAMETER_LIMIT = 2_000_000_000


# Below this size a CPU spends more on splitting each tiny matmul over threads than on the matmul:
# one thread was 4× faster for the tiny model's 60-token generate on our 2-core machine.
SMALL_MODEL_PARAMETERS = 100_000_000


class DiffCaptioner:
    def __init__(self, model: M3DiffForConditionalGeneration, processor: PairProcessor, source: str = "",
                 trained: bool = True):
        self.model = model.eval()
        self.processor = processor
        self.source = source
        self.trained = trained

    @property
    def cpu_threads(self) -> int | None:
        """The torch thread count this model describes fastest with on a CPU: 1 for small models; None
        (torch's default) for large ones and on a GPU."""
        if self.model.device.type != "cpu":
            return None
        small = sum(p.numel() for p in self.model.parameters()) < SMALL_MODEL_PARAMETERS
        return 1 if small else None

    def use_recommended_threads(self) -> None:
        """Set torch's thread count to ``cpu_threads``, once, for the whole process.

        torch's thread count belongs to the process, not to a call: switching it around each describe
        races when two threads describe at once (one restores the count while the other still runs).
        So the captioner never sets it itself; the code that owns the process calls this once at start
        (`m3diff describe`, the model process of ``m3diff.remote``, the app with the model in its process).
        """
        if self.cpu_threads is not None:
            torch.set_num_threads(self.cpu_threads)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, *, device: str | None = None,
                        dtype: torch.dtype | None = None, allow_large_on_cpu: bool = False) -> "DiffCaptioner":
        """``None`` or ``"embedded"``: the default shipped in the package; else a directory or a hub id."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if name_or_path in (None, "", "embedded"):
            if (EMBEDDED_DIR / "config.json").is_file():
                return cls._load(EMBEDDED_DIR, device, dtype, "embedded", allow_large_on_cpu)
            return cls.untrained(device=device)
        return cls._load(name_or_path, device, dtype, str(name_or_path), allow_large_on_cpu)

    @classmethod
    def _load(cls, path, device, dtype, source, allow_large_on_cpu) -> "DiffCaptioner":
        from transformers import AutoConfig

        register_auto_classes()  # AutoConfig must know model_type "m3diff"
        local = Path(path)
        if local.exists():
            _check_local_model(local)
        try:
            config = AutoConfig.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            if local.exists():  # checked above, so transformers found something else it cannot use
                raise ModelLoadError(f"{local}: {str(exc).splitlines()[0]}") from None
            raise ModelLoadError(
                f"could not load model {path!r}: it is not a local directory, and the hub did not answer "
                f"({exc.__class__.__name__}). Pass a directory made by save_pretrained, or check the hub id."
            ) from None
        if not isinstance(config, M3DiffConfig) and getattr(config, "model_type", "") != "llava_onevision":
            raise ModelLoadError(f"{path} is a {config.model_type!r} model, not M3Diff or LLaVA-OneVision.")
        on_gpu = str(device).startswith("cuda")
        dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
        kwargs = dict(dtype=dtype, attn_implementation="sdpa")
        if not on_gpu and not allow_large_on_cpu:
            with torch.device("meta"):
                size = sum(p.numel() for p in M3DiffForConditionalGeneration(_as_m3diff(config)).parameters())
            if size > CPU_PARAMETER_LIMIT:
                raise ModelLoadError(
                    f"{path} has {size / 1e9:.1f} B parameters; on a CPU that is ~{size * 4 / 2**30:.0f} GiB and "
                    "minutes per caption. Run it on a GPU (device='cuda'), or use the embedded default model."
                )
        from safetensors import SafetensorError

        if local.exists():
            _check_local_weights(local)
        try:
            if isinstance(config, M3DiffConfig):
                model = M3DiffForConditionalGeneration.from_pretrained(str(path), **kwargs)
            else:
                model, fresh = M3DiffForConditionalGeneration.from_llava_onevision(str(path), **kwargs)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ModelLoadError(
                f"{path}: its weights could not be read ({str(exc).splitlines()[0]}); the file may be truncated "
                "or from another model: copy it again or save the model again with save_pretrained.") from None
        bad = _non_finite(model)
        if bad:
            raise ModelLoadError(
                f"{path}: {len(bad)} weight tensors hold NaN or inf (first: {bad[0]}): the training run that saved "
                "it diverged. Use an earlier checkpoint, or train again with a lower learning rate.")
        processor = PairProcessor.from_pretrained(str(path))
        return cls(model.to(device), processor, source=source, trained=True)

    @classmethod
    def untrained(cls, device: str = "cpu", seed: int = 0, change_reader: bool = False) -> "DiffCaptioner":
        """A tiny random model: what runs until trained weights exist. Its captions are noise.
        ``change_reader``: with a tiny random change reader (m3diff.reader), as tests of its paths need."""
        warnings.warn(
            "m3diff: no trained weights in m3diff/weights/ — using a tiny RANDOM model; its captions are noise. "
            "Pass --model DIR (or M3DIFF_MODEL) to use a trained model.",
            stacklevel=2,
        )
        corpus = [f"the {t.id} change: {t.definition}." for t in CHANGE_TYPES]
        tokenizer = train_tokenizer(corpus * 4, vocab_size=400)
        reader = TINY_READER.to_dict() if change_reader else None
        config = preset("tiny", vocab_size=len(tokenizer), change_reader=reader)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # reproducible noise, without leaving the global RNG changed
        model = M3DiffForConditionalGeneration(config)
        torch.random.set_rng_state(generator_state)
        return cls(model.to(device), PairProcessor.for_config(config, tokenizer), source="untrained-tiny",
                   trained=False)

    def save_pretrained(self, directory: str | Path) -> None:
        bad = _non_finite(self.model)
        if bad:  # such a model only ever writes empty captions; saving it would pass the fault on
            raise ValueError(f"not saved: {len(bad)} weight tensors hold NaN or inf (first: {bad[0]})")
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)

    # ---------------------------------------------------------------- describing
    @property
    def uses_mdp(self) -> bool:
        return self.model.model.mdp is not None

    @property
    def info(self) -> ModelInfo:
        c = self.model.config
        return ModelInfo(
            source=self.source, trained=self.trained, use_mdp=self.uses_mdp,
            mdp_layers=tuple(c.mdp_layers) if self.uses_mdp else (), mdp_depth=c.mdp_depth,
            image_size=c.vision_config.image_size, num_image_tokens=c.num_image_tokens,
            parameters=self.model.num_parameters_by_part(), device=str(self.model.device),
            dtype=str(self.model.dtype).replace("torch.", ""), reads_changes=self.reads_changes,
        )

    @property
    def reads_changes(self) -> bool:
        """Whether the model has a change reader (m3diff.reader): describe() then lists what it read."""
        return self.model.change_reader is not None

    def read_changes(self, pairs: Sequence[tuple], threshold: float | None = None) -> list[ChangeReading]:
        """What the model's change reader reads in each (before, after) pair, without a caption;
        ``threshold``: the presence probability from which a change is read (None: the reader's calibrated one)."""
        images = [(load_image(b, name="before image"), load_image(a, name="after image")) for b, a in pairs]
        batch = self.processor.encode_pairs(images).to(self.model.device)
        return self._read(images, batch, threshold)

    def _read(self, images, batch, threshold: float | None = None) -> list[ChangeReading]:
        reader = self.model.change_reader
        threshold = reader.cfg.threshold if threshold is None else threshold
        base = batch["pixel_values"][:, 0].to(self.model.dtype)  # each image's base view, before/after alternating
        sizes = [b.size for b, _ in images]
        with torch.inference_mode():
            facts = reader.read(base[0::2], base[1::2], sizes, threshold=threshold)
        return [ChangeReading(tuple(f), size, threshold) for f, size in zip(facts, sizes)]

    def encode_pairs(self, pairs: Sequence[tuple], answers: Sequence[str] | None = None,
                     instruction: str | Sequence[str | None] | None = None):
        """The model inputs of these pairs exactly as describe() builds them — with a change reader, the
        facts it reads follow the instruction — and the readings (None without a reader). Anything that
        scores a caption teacher-forced (answer losses, attributions) goes through here, so that it
        scores what the model is given when it describes."""
        images = [(load_image(b, name="before image"), load_image(a, name="after image")) for b, a in pairs]
        batch = self.processor.encode_pairs(images, answers, instruction=instruction).to(self.model.device)
        if not self.reads_changes:
            return batch, None
        readings = self._read(images, batch)
        asked = instruction if isinstance(instruction, (list, tuple)) else [instruction] * len(pairs)
        batch = self.processor.encode_pairs(
            images, answers, instruction=[facts_instruction(i, r.changes) for i, r in zip(asked, readings)],
        ).to(self.model.device)
        return batch, readings

    def _prepare(self, pairs, instruction, with_trace: bool, knockout=None, each_change: bool = False) -> _Prepared:
        images = [(load_image(b, name="before image"), load_image(a, name="after image")) for b, a in pairs]
        batch = self.processor.encode_pairs(images, instruction=instruction).to(self.model.device)
        pixel_values = batch["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            features = self.model.model.get_image_features(
                pixel_values, batch["image_sizes"], batch_num_images=batch["batch_num_images"],
                output_mdp_trace=with_trace and self.uses_mdp, mdp_knockout=knockout,
            )
        diff = feature_difference(features.pooler_output, self.model.config.patch_grid).numpy() if with_trace else None
        owners = list(range(len(pairs)))
        readings = None
        if self.reads_changes:
            readings = self._read(images, batch)
            # one prompt per pair with every change read, or (each_change) one per change a caption says
            groups = [(i, [c]) for i, r in enumerate(readings) for c in said(r.changes)] if each_change else []
            covered = {i for i, _ in groups}
            groups += [(i, list(r.changes)) for i, r in enumerate(readings) if i not in covered]
            groups.sort(key=lambda g: g[0])  # stable: each pair's changes stay in the reader's order
            owners = [i for i, _ in groups]
            asked = instruction if isinstance(instruction, (list, tuple)) else [instruction] * len(pairs)
            batch = self.processor.encode_pairs(
                [images[i] for i in owners], instruction=[facts_instruction(asked[i], c) for i, c in groups],
            ).to(self.model.device)
        # The features go to generate so the vision tower and MDP run once per pair, here, with the trace;
        # a pair asked several prompts shares its two images' features.
        per_image = [features.pooler_output[2 * i + k] for i in owners for k in (0, 1)]
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      mm_encoder_outputs={"image": M3DiffImageFeatures(pooler_output=per_image)})
        return _Prepared(inputs, owners, features.mdp_trace, diff, readings)

    def _generate(self, inputs, settings: GenerationSettings, streamer=None):
        pad = self.processor.tokenizer.pad_token_id
        eos = self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        processors = None
        if settings.min_end_probability is not None:
            from transformers import LogitsProcessorList

            processors = LogitsProcessorList([EndThreshold(eos, settings.min_end_probability)])
        with torch.inference_mode():
            return self.model.generate(
                **inputs, max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams,
                repetition_penalty=settings.repetition_penalty, do_sample=False, pad_token_id=pad,
                eos_token_id=eos, streamer=streamer, logits_processor=processors,
            )

    def describe_batch(self, pairs: Sequence[tuple], *, instruction: str | None = None, with_trace: bool = True,
                       settings: GenerationSettings = GenerationSettings(), knockout=None) -> list[Description]:
        """Describe several (before, after) pairs in one batch (images: paths, bytes, arrays or PIL).
        ``knockout``: an ``m3diff.mdp.MDPKnockout`` for this call (one, or one per pair); the model is untouched."""
        start = time.perf_counter()
        prepared = self._prepare(pairs, instruction, with_trace, knockout, settings.each_change)
        mdp_trace, diff, readings = prepared.mdp_trace, prepared.diff, prepared.readings
        out = self._generate(prepared.inputs, settings)
        parts = self.processor.decode_captions(out[:, prepared.inputs["input_ids"].shape[1]:])
        captions = [" ".join(p.strip() for p, o in zip(parts, prepared.owners) if o == b and p.strip())
                    for b in range(len(pairs))]
        seconds = (time.perf_counter() - start) / len(pairs)
        results = []
        for b, caption in enumerate(captions):
            pair_trace = mdp_trace.pair(b) if mdp_trace is not None else None
            scores = pair_trace.score_mean if pair_trace else {}
            results.append(Description(caption, scores, pair_trace, seconds,
                                       feature_difference=diff[b] if diff is not None else None,
                                       changes=readings[b] if readings is not None else None))
        return results

    def describe(self, before, after, *, instruction: str | None = None, with_trace: bool = True,
                 settings: GenerationSettings = GenerationSettings(), knockout=None) -> Description:
        return self.describe_batch([(before, after)], instruction=instruction, with_trace=with_trace,
                                   settings=settings, knockout=knockout)[0]

    def describe_stream(self, before, after, *, instruction: str | None = None, with_trace: bool = True,
                        settings: GenerationSettings = GenerationSettings()) -> Iterator[Description]:
        """Yield partial Descriptions as tokens arrive (trace from the first one); the last has done=True."""
        from transformers import TextIteratorStreamer

        start = time.perf_counter()
        prepared = self._prepare([(before, after)], instruction, with_trace, each_change=settings.each_change)
        reading = prepared.readings[0] if prepared.readings is not None else None
        pair_trace = prepared.mdp_trace.pair(0) if prepared.mdp_trace is not None else None
        fd = prepared.diff[0] if prepared.diff is not None else None
        scores = pair_trace.score_mean if pair_trace else {}
        done = ""  # the sentences of the prompts answered so far (one prompt per change read)
        for k in range(len(prepared.owners)):
            streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
            errors: list[BaseException] = []

            def run(inputs=prepared.item(k), streamer=streamer, errors=errors):
                try:
                    self._generate(inputs, settings, streamer=streamer)
                except BaseException as exc:  # surfaced in the caller's thread below
                    errors.append(exc)
                    streamer.end()

            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            text = ""
            for piece in streamer:
                text += piece
                yield Description(" ".join(t for t in (done, text.strip()) if t), scores, pair_trace,
                                  time.perf_counter() - start, done=False, feature_difference=fd, changes=reading)
            worker.join()
            if errors:
                raise errors[0]
            done = " ".join(t for t in (done, text.strip()) if t)
        yield Description(done, scores, pair_trace, time.perf_counter() - start, done=True,
                          feature_difference=fd, changes=reading)


@dataclass
class _Prepared:
    """The generate inputs of one describe call: one row per prompt, ``owners[row]`` the pair it belongs
    to (a pair has one prompt, or with ``each_change`` one per change read), and each pair's evidence."""

    inputs: dict
    owners: list[int]
    mdp_trace: object
    diff: object
    readings: list[ChangeReading] | None

    def item(self, row: int) -> dict:
        """The generate inputs of one prompt alone (streaming answers one prompt at a time)."""
        images = self.inputs["mm_encoder_outputs"]["image"].pooler_output
        return dict(input_ids=self.inputs["input_ids"][row:row + 1], attention_mask=self.inputs["attention_mask"][row:row + 1],
                    mm_encoder_outputs={"image": M3DiffImageFeatures(pooler_output=images[2 * row:2 * row + 2])})


def _non_finite(model) -> list[str]:
    return [n for n, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _check_local_model(folder: Path) -> None:
    """A local model folder's faults, each named for a person before transformers meets them."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ModelLoadError(f"{folder} has no config.json: not a model saved with save_pretrained.")
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{cfg} is not valid JSON ({exc}): the folder is damaged; copy or save the model "
                             "again.") from None
    if not isinstance(raw, dict) or not raw.get("model_type"):
        raise ModelLoadError(f"{cfg} names no model_type: not a config written by save_pretrained; copy or save "
                             "the model again.")


def _check_local_weights(folder: Path) -> None:
    if not any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise ModelLoadError(f"{folder} has no model.safetensors (weights are read from safetensors only): "
                             "copy the weights file into it, or save the model again.")


def _as_m3diff(config) -> M3DiffConfig:
    return config if isinstance(config, M3DiffConfig) else M3DiffConfig.from_llava_onevision(config)
