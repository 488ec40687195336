"""The change zoom's reader trained on its own: the stage before a model gets its zoom (ours).

Inside a captioning run the zoom's reader never learned to read a sign's word: a pair's change window
holds a sign about one time in eight, some 4 a step, where a reader needs tens of thousands of sign
windows, and each step costs a whole LLM pass. Alone it costs none (docs/training.md, "A change zoom"):

    pairs (train split, the generator's objects) → the processor's pixels, once, kept in memory
    → each step: windows at the change of random pairs (where the model will look), at random signs
      and at random other objects, each moved by up to ``jitter`` px → the reader → its heads (the
      kind, colour, word, heading and pose of the object in the window) → cross-entropy → AdamW
    → OUT/reader.safetensors (``zoom.*``: the reader; ``heads.*``: its heads) and OUT/reader.json

``model.zoom_from`` in a recipe then gives a model this reader (its output projection at zero, so the
model starts describing exactly as without it) and the training heads these heads.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from m3diff.processing import IGNORE_INDEX

WEIGHTS = "reader.safetensors"
SUMMARY = "reader.json"


@dataclass
class ReaderStage:
    data: str  # a dataset folder whose pairs carry the generator's objects (`m3diff synth`)
    processor: str  # a model folder: its processor sets the pixels the reader sees (size, normalisation)
    crop: int = 64
    width: int = 128
    pairs: int = 8000  # pairs of the train split held in memory
    steps: int = 5000
    lr: float = 1.0e-3
    warmup_steps: int = 100
    sign_windows: int = 48
    object_windows: int = 32
    change_pairs: int = 16
    jitter: int = 8
    log_every: int = 25
    eval_data: str | None = None  # a folder whose test split scores the reader at its change windows
    eval_pairs: int = 300
    seed: int = 0

    def __post_init__(self):
        for key in ("steps", "pairs", "sign_windows", "object_windows", "change_pairs", "log_every", "eval_pairs"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.crop % 8 or self.width % 32:
            raise ValueError(f"crop must be a multiple of 8 and width of 32, got {self.crop} and {self.width}")
        if self.lr <= 0 or self.jitter < 0 or self.warmup_steps < 0:
            raise ValueError(f"lr must be > 0, jitter and warmup_steps >= 0 (got {self.lr}, {self.jitter}, "
                             f"{self.warmup_steps})")


@dataclass
class Images:
    """Pairs as the reader sees them: ``pixels`` [2P, 3, H, W] float16 (before₀, after₀, …) and
    ``objects`` [2P, K, 10] (training.auxiliary.zoom_objects: box, changed, classes)."""

    pixels: torch.Tensor
    objects: torch.Tensor

    def __len__(self) -> int:
        return len(self.pixels) // 2


def load_images(folder: str, split: str, processor, geometry, limit: int, progress: bool = True,
                chunk: int = 64) -> Images:
    """The first ``limit`` pairs of ``split`` that carry the generator's objects."""
    from PIL import Image
    from tqdm.auto import tqdm

    from m3diff.data.readers import read_dataset
    from training.auxiliary import zoom_objects
    from training.data import Sample

    pairs = [Sample(p.id, str(p.before), str(p.after), "", regions=tuple(p.extra.get("regions") or ()),
                    objects=p.extra["objects"])
             for p in read_dataset(folder, split=split).pairs if p.extra.get("objects")][:limit]
    if not pairs:
        raise ValueError(f"{folder} ({split}) has no pairs with the generator's objects: the reader learns from them")
    pixels, objects = [], []
    for i in tqdm(range(0, len(pairs), chunk), desc=f"load {split}", unit_scale=chunk, disable=not progress,
                  leave=False):
        part = pairs[i : i + chunk]
        values = processor.encode_pairs([(p.before, p.after) for p in part])["pixel_values"]
        pixels.append((values[:, 0] if values.dim() == 5 else values).to(torch.float16))
        for p in part:
            with Image.open(p.before) as im:  # the header only
                w, h = im.size
            objects += [zoom_objects(p, image, geometry, w, h) for image in ("before", "after")]
    return Images(torch.cat(pixels), torch.stack(objects))


def change_windows(zoom, images: Images, pairs: torch.Tensor, jitter: int, generator=None):
    """Both images' windows at the change of ``pairs`` (the window the model reads, moved by up to
    ``jitter`` px) → crops [2n, 3, c, c] and the classes of what each holds [2n, 5]."""
    from training.auxiliary import object_in_window

    before, after = images.pixels[2 * pairs].float(), images.pixels[2 * pairs + 1].float()
    boxes = zoom.locate(before, after)
    if jitter:
        centres = (boxes[:, :2] + boxes[:, 2:]).float() / 2
        centres += (torch.rand(centres.shape, generator=generator) * 2 - 1) * jitter
        boxes = zoom._boxes(centres, *before.shape[-2:])
    crops = torch.stack([zoom._cut(before, boxes), zoom._cut(after, boxes)], 1).flatten(0, 1)
    targets = torch.stack([object_in_window(images.objects[2 * pairs + k], boxes) for k in (0, 1)], 1).flatten(0, 1)
    return crops, targets


def object_windows(zoom, images: Images, index: torch.Tensor, n: int, jitter: int, generator=None):
    """Windows centred on ``n`` objects drawn from ``index`` [m, 2] (image, row) → crops and classes."""
    pick = index[torch.randint(len(index), (n,), generator=generator)]
    rows = images.objects[pick[:, 0], pick[:, 1]]
    centres = torch.stack([(rows[:, 0] + rows[:, 2]) / 2, (rows[:, 1] + rows[:, 3]) / 2], 1)
    centres += (torch.rand(centres.shape, generator=generator) * 2 - 1) * jitter
    crops, _ = zoom.windows(images.pixels[pick[:, 0]].float(), centres)
    return crops, rows[:, 5:].long()


@torch.no_grad()
def reading_accuracy(zoom, heads, images: Images, batch: int = 64) -> dict[str, dict]:
    """Per field, what the reader gets right in the windows at each pair's change (eval mode, no
    jitter): {field: {"correct", "asked", "accuracy"}} — only where the window holds such an object."""
    from training.auxiliary import ZOOM_FIELDS, ZOOM_SIZES

    was = zoom.training, heads.training
    zoom.eval(), heads.eval()
    correct = torch.zeros(len(ZOOM_FIELDS), dtype=torch.long)
    asked = torch.zeros(len(ZOOM_FIELDS), dtype=torch.long)
    for i in range(0, len(images), batch):
        pairs = torch.arange(i, min(i + batch, len(images)))
        crops, targets = change_windows(zoom, images, pairs, jitter=0)
        logits = heads.out(zoom.read(crops)).float().split(ZOOM_SIZES, -1)
        for f, (part, target) in enumerate(zip(logits, targets.unbind(1))):
            # kind and colour: only windows that hold an object (class 0 is "none")
            keep = (target != IGNORE_INDEX) & ((target != 0) if f < 2 else True)
            correct[f] += int((part.argmax(-1)[keep] == target[keep]).sum())
            asked[f] += int(keep.sum())
    zoom.train(was[0]), heads.train(was[1])
    return {name: {"correct": int(c), "asked": int(a), "accuracy": round(float(c) / float(a), 4) if a else None}
            for name, c, a in zip(ZOOM_FIELDS, correct, asked)}


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))  # cosine to a tenth


def train_reader(stage: ReaderStage, out, progress: bool = True, minutes: float | None = None) -> dict:
    """Train the reader as ``stage`` says; ``minutes``: stop early (and save) when that much time has
    passed. Returns the summary written to OUT/reader.json."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from m3diff.processing import PairProcessor
    from m3diff.zoom import ChangeZoom
    from training.auxiliary import ZOOM_FIELDS, ModelGrid, ZoomHeads, reading_losses

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(stage.seed)
    generator = torch.Generator().manual_seed(stage.seed)
    processor = PairProcessor.from_pretrained(stage.processor)
    side = int(processor.image_processor.size["height"])
    # the geometry maps boxes to the processor's pixels; the grid itself is not used here
    geometry = ModelGrid(side, side // max(1, math.isqrt(processor.num_image_tokens)))
    train = load_images(stage.data, "train", processor, geometry, stage.pairs, progress)
    test = (load_images(stage.eval_data, "test", processor, geometry, stage.eval_pairs, progress)
            if stage.eval_data else None)

    # every object of the held pairs, and the signs among them (what a word is read from)
    present = ~torch.isnan(train.objects[..., 0])
    every = torch.nonzero(present)
    word = train.objects[..., 5 + ZOOM_FIELDS.index("word")]
    signs = torch.nonzero(present & (word != IGNORE_INDEX))
    if len(signs) == 0:
        raise ValueError(f"{stage.data}: no signs among the first {stage.pairs} training pairs")

    zoom = ChangeZoom(1, crop=stage.crop, width=stage.width)  # its output projection belongs to the model
    heads = ZoomHeads(stage.width)
    params = [p for n, p in zoom.named_parameters() if not n.startswith("out.")] + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, stage.steps, stage.warmup_steps))

    log_path = out / "log.csv"
    columns = ["step", "seconds", "loss", *ZOOM_FIELDS]
    start = time.monotonic()
    step = 0
    with open(log_path, "w", newline="") as f:
        log = csv.DictWriter(f, columns)
        log.writeheader()
        bar = tqdm(total=stage.steps, desc="reader", disable=not progress)
        for step in range(1, stage.steps + 1):
            pairs = torch.randint(len(train), (stage.change_pairs,), generator=generator)
            parts = [change_windows(zoom, train, pairs, stage.jitter, generator),
                     object_windows(zoom, train, signs, stage.sign_windows, stage.jitter, generator),
                     object_windows(zoom, train, every, stage.object_windows, stage.jitter, generator)]
            crops = torch.cat([c for c, _ in parts])
            targets = torch.cat([t for _, t in parts])
            losses = reading_losses(heads, zoom.read(crops), targets)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update()
            if step % stage.log_every == 0 or step == stage.steps:
                row = {"step": step, "seconds": round(time.monotonic() - start, 1), "loss": round(float(loss.detach()), 4),
                       **{k: round(float(v.detach()), 4) for k, v in losses.items()}}
                log.writerow(row)
                f.flush()
                bar.set_postfix(loss=row["loss"], word=row["word"])
            if minutes is not None and time.monotonic() - start > 60 * minutes:
                break
        bar.close()

    seconds = time.monotonic() - start
    tensors = {f"zoom.{k}": v.detach().contiguous() for k, v in zoom.state_dict().items() if not k.startswith("out.")}
    tensors.update({f"heads.{k}": v.detach().contiguous() for k, v in heads.state_dict().items()})
    save_file(tensors, str(out / WEIGHTS), metadata={"crop": str(stage.crop), "width": str(stage.width)})
    summary = {"stage": asdict(stage), "steps_done": step, "minutes": round(seconds / 60, 1),
               "threads": torch.get_num_threads(),
               "test_accuracy": reading_accuracy(zoom, heads, test) if test is not None else None}
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@dataclass(frozen=True)
class Reader:
    """A reader trained alone: its window, its width and its weights (``zoom.*`` and ``heads.*``)."""

    crop: int
    width: int
    zoom: dict
    heads: dict


def load_reader(folder) -> Reader:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no {WEIGHTS}: train one with `m3diff train-reader`")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(str(path))
    return Reader(int(meta["crop"]), int(meta["width"]),
                  {k[5:]: v for k, v in tensors.items() if k.startswith("zoom.")},
                  {k[6:]: v for k, v in tensors.items() if k.startswith("heads.")})


def install_reader(zoom, reader: Reader) -> None:
    """Give a model's change zoom the reader's weights; its output projection starts at zero, so the
    model describes exactly as it did before."""
    missing, unexpected = zoom.load_state_dict(reader.zoom, strict=False)
    if unexpected or [k for k in missing if not k.startswith("out.")]:
        raise ValueError(f"the reader does not fit this model's zoom (missing {missing}, unexpected {unexpected})")
    zoom.reset_output()
