"""Training the change reader (``m3diff.reader``) against the generator's true changes.

Each generated record says what changed (``changes``: ``m3diff.facts.ChangeFact`` per change). Slot
*t* of the reader is the change of type *t*, so every target is a plain classification or box
regression on its slot: whether the change is there (all twelve slots, every pair), and, for the
slots whose change is there, the object as it was and as it is, counts, the camera or light
detail and the boxes, and a map per type and image of where the change is. The word reader is
trained on crops of every sign in either image, cut from the true box jittered by about a tenth of
its size, as the predicted box will be at inference.

It trains alone (no language model: a step costs a fifth of a captioning step) and is then put into
a captioning model (``m3diff reader attach``): the language model learns to copy the facts in its own
training run, reading the true facts (``training/train.py`` with ``facts: true``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from analysis.detection import changed_object
from m3diff.change_types import TYPE_IDS
from m3diff.describing import shipped_or_path
from m3diff.facts import (
    COLORS, DETAILS, HEADINGS, HORIZONTAL, KINDS, POSES, VERTICAL, WORDS, ChangeFact, facts_of_record, said,
)
from m3diff.pipeline import DiffCaptioner
from m3diff.reader import (
    DOMAINS, OBJECT_HEADS, SIDES, SIZE_NAMES, ChangeReader, ReaderConfig, centred_boxes, ordered_boxes,
)
from training.schedule import lr_lambda

IGNORE = -100
_VOCAB = {"kind": KINDS, "color": COLORS, "size": SIZE_NAMES, "h": HORIZONTAL, "direction": HEADINGS, "pose": POSES}


@dataclass(frozen=True)
class ReaderTraining:
    steps: int = 3000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    box_jitter: float = 0.12
    seed: int = 0
    checkpoint_every: int = 200
    threads: int = 1


def _v_index(v: str) -> int:
    for names in VERTICAL.values():
        if v in names:
            return names.index(v)
    raise ValueError(f"unknown vertical cell {v!r}")


def record_targets(record: dict, width: int, height: int, grid: int = 16) -> dict:
    """The reader's targets of one generated record (image pixels ``width`` × ``height``; the
    reader's token grid ``grid`` × ``grid``: ReaderConfig.image_size // 8)."""
    n = len(TYPE_IDS)
    t = {"present": torch.zeros(n), "detail": torch.full((n,), IGNORE, dtype=torch.long),
         "before_count": torch.full((n,), IGNORE, dtype=torch.long), "after_count": torch.full((n,), IGNORE, dtype=torch.long),
         "boxes": torch.zeros(n, 2, 4), "box_mask": torch.zeros(n, 2)}
    for side in ("before", "after"):
        for name in OBJECT_HEADS:
            t[f"{side}_{name}"] = torch.full((n,), IGNORE, dtype=torch.long)
    t["maps"] = torch.zeros(grid * grid, n, 2)
    t["domain"] = torch.tensor(DOMAINS.index(record["domain"]) if record.get("domain") in DOMAINS else IGNORE)
    words = []  # (side index, box 0..1, word index)
    scale = np.array([width, height, width, height], np.float32)
    for fact in facts_of_record(record) or []:
        slot = TYPE_IDS.index(fact.type)
        t["present"][slot] = 1.0
        if fact.type in ("viewpoint", "illumination"):
            t["detail"][slot] = DETAILS.index(fact.detail)
            t["maps"][:, slot, :] = 1.0  # the whole picture changed
        if fact.type == "counting":
            t["before_count"][slot] = min(fact.n_before, len(range(7)) - 1)
            t["after_count"][slot] = min(fact.n_after, 6)
        for k, (side, obj, box) in enumerate((("before", fact.before, fact.box_before), ("after", fact.after, fact.box_after))):
            if obj is None or not SIDES[fact.type][k]:
                continue
            for name in OBJECT_HEADS:
                if name == "v":
                    t[f"{side}_v"][slot] = _v_index(obj.v)
                    continue
                value = getattr(obj, name)
                if value:
                    t[f"{side}_{name}"][slot] = _VOCAB[name].index(value)
            if box is not None:
                t["boxes"][slot, k] = torch.from_numpy(np.asarray(box, np.float32) / scale)
                x0, y0, x1, y1 = (np.asarray(box, np.float32) / scale * grid).tolist()
                cells = torch.zeros(grid, grid)
                cells[int(y0):max(int(y0) + 1, math.ceil(y1)), int(x0):max(int(x0) + 1, math.ceil(x1))] = 1.0
                t["maps"][:, slot, k] = torch.maximum(t["maps"][:, slot, k], cells.flatten())
                t["box_mask"][slot, k] = 1.0
    # every sign drawn in either image teaches the word reader, changed or not: twice the crops
    for k, side in enumerate(("before", "after")):
        for o in (record.get("objects") or {}).get(side, []):
            if o.get("kind") == "sign" and o.get("text") in WORDS:
                words.append((k, (np.asarray(o["box"], np.float32) / scale).tolist(), WORDS.index(o["text"])))
    t["words"] = words
    t["size"] = torch.tensor([width, height])
    return t


def load_pair(folder: Path, record: dict, side: int = 128) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Both images as the processor normalises them ([-1, 1]), at the reader's ``side`` pixels."""
    out = []
    for key in ("before", "after"):
        with Image.open(folder / record[key]) as im:
            size = im.size
            im = im.convert("RGB")
            if im.size != (side, side):
                im = im.resize((side, side), Image.BILINEAR)
            out.append(torch.from_numpy(np.asarray(im, np.float32)).permute(2, 0, 1) / 127.5 - 1)
    return out[0], out[1], size


def collate(folder: Path, records: list[dict], side: int = 128) -> dict:
    befores, afters, targets = [], [], []
    for r in records:
        b, a, (w, h) = load_pair(folder, r, side)
        befores.append(b)
        afters.append(a)
        targets.append(record_targets(r, w, h, grid=side // 8))
    batch = {k: torch.stack([t[k] for t in targets]) for k in targets[0] if k not in ("words", "size")}
    batch["words"] = [(i, k, box, word) for i, t in enumerate(targets) for k, box, word in t["words"]]
    batch["before"], batch["after"] = torch.stack(befores), torch.stack(afters)
    batch["sizes"] = [(int(t["size"][0]), int(t["size"][1])) for t in targets]
    return batch


def jitter(boxes: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Boxes (0..1) moved and resized by up to ``amount`` of their size, as a predicted box may be."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0.02)
    centre = (boxes[:, 2:] + boxes[:, :2]) / 2 + (torch.rand(wh.shape, generator=gen) * 2 - 1) * amount * wh
    wh = wh * (1 + (torch.rand(wh.shape, generator=gen) * 2 - 1) * amount) * 1.1
    return torch.cat([centre - wh / 2, centre + wh / 2], 1).clamp(0, 1)


def reader_loss(reader: ChangeReader, batch: dict, out: dict, gen: torch.Generator | None = None,
                box_jitter: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    parts = {"present": F.binary_cross_entropy_with_logits(out["present"], batch["present"]),
             # changed cells are a few in a hundred: weighted up so that a map of zeros is not a good answer
             "maps": F.binary_cross_entropy_with_logits(out["maps"], batch["maps"], pos_weight=torch.tensor(4.0)) * 4,
             "domain": F.cross_entropy(out["domain"], batch["domain"], ignore_index=IGNORE)}
    for key in (*(f"{s}_{n}" for s in ("before", "after") for n in OBJECT_HEADS), "before_count", "after_count", "detail"):
        target = batch[key]
        if (target != IGNORE).any():
            parts[key] = F.cross_entropy(out[key].flatten(0, 1), target.flatten(), ignore_index=IGNORE)
    mask = batch["box_mask"]
    if mask.sum() > 0:
        l1 = (out["boxes"] - batch["boxes"]).abs().sum(-1)
        parts["boxes"] = (l1 * mask).sum() / mask.sum()
    if batch["words"]:
        idx = torch.tensor([(i, k, word) for i, k, _, word in batch["words"]])
        images = torch.where(idx[:, 1, None, None, None] == 0, batch["before"][idx[:, 0]], batch["after"][idx[:, 0]])
        boxes = torch.tensor([box for _, _, box, _ in batch["words"]])
        if gen is not None and box_jitter:
            boxes = jitter(boxes, box_jitter, gen)
        logits = reader.words(images, boxes)
        parts["word"] = F.cross_entropy(logits, idx[:, 2])
        parts["word_acc"] = (logits.argmax(-1) == idx[:, 2]).float().mean()
    loss = sum(v for k, v in parts.items() if not k.endswith("_acc"))
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def read_split(folder: Path, split: str) -> list[dict]:
    with open(folder / f"{split}.json", encoding="utf-8") as f:
        records = json.load(f)
    records = [r for r in records if "changes" in r]
    if not records:
        raise ValueError(f"{folder}/{split}.json has no records with true changes: generate it with this version of `m3diff synth`")
    return records


def update(loss: torch.Tensor, params: list, opt: torch.optim.Optimizer, sched) -> None:
    """One optimizer step of the reader's trainings: gradients of ``loss``, clipped to norm 1, then the
    optimizer's and the schedule's step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()


def train_reader(data: Path, out: Path, settings: ReaderTraining = ReaderTraining(), cfg: ReaderConfig = ReaderConfig(),
                 resume: bool = False, stop_at: int | None = None, progress: bool = True,
                 start: str | Path | None = None) -> Path:
    """Train a reader on ``data``'s train split into ``out`` (``reader.safetensors`` + ``reader.json``);
    kill-safe: a checkpoint every ``checkpoint_every`` steps, ``resume`` goes on from the latest.
    ``start``: go on training a trained reader (a ``load_reader`` folder; its config replaces ``cfg``)
    on a schedule of its own; its shape reader, which this loss does not train, is kept as it is."""
    torch.set_num_threads(settings.threads)
    out.mkdir(parents=True, exist_ok=True)
    records = read_split(data, "train")
    torch.manual_seed(settings.seed)
    if start is not None:
        reader = load_reader(start).train()
        cfg = reader.cfg
    else:
        reader = ChangeReader(cfg)
    trained = [p for name, p in reader.named_parameters() if not name.startswith("shapes.")]
    opt = torch.optim.AdamW(trained, lr=settings.lr, weight_decay=settings.weight_decay)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(settings.steps, settings.warmup, 0.05))
    step = 0
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        reader.load_state_dict(state["reader"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = state["step"]
    gen = torch.Generator().manual_seed(settings.seed + step)
    per_epoch = len(records) // settings.batch
    last = min(settings.steps, stop_at or settings.steps)
    log = open(out / "log.jsonl", "a", encoding="utf-8")
    bar = tqdm(total=last, initial=step, disable=not progress, desc="reader", unit="step")
    start = time.perf_counter()
    while step < last:
        epoch, pos = divmod(step, per_epoch)
        order = np.random.default_rng([settings.seed, epoch]).permutation(len(records))
        batch = collate(data, [records[i] for i in order[pos * settings.batch:(pos + 1) * settings.batch]], cfg.image_size)
        reader.train()
        result = reader(batch["before"], batch["after"], true_maps=batch["maps"] if step % 2 == 0 else None)
        loss, parts = reader_loss(reader, batch, result, gen, settings.box_jitter)
        update(loss, trained, opt, sched)
        step += 1
        bar.update(1)
        if step % 10 == 0:
            log.write(json.dumps({"step": step, "loss": float(loss), "seconds": round(time.perf_counter() - start, 1),
                                  **{k: round(v, 4) for k, v in parts.items()}}) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{float(loss):.3f}", word=f"{parts.get('word_acc', float('nan')):.2f}")
        if step % settings.checkpoint_every == 0 or step == last:
            torch.save({"reader": reader.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step},
                       out / "checkpoint.tmp")
            (out / "checkpoint.tmp").replace(ckpt)
    bar.close()
    save_reader(reader, out)
    return out


# -- the shape reader: an object's kind, heading and pose from a crop of its box ----------------------
def shape_targets(record: dict, width: int, height: int) -> list[tuple[int, list[float], int, int, int]]:
    """(side index, box 0..1, kind, heading, pose) of every object drawn in either image, changed or
    not; the heading and pose are IGNORE where the object has none."""
    scale = np.array([width, height, width, height], np.float32)
    out = []
    for k, side in enumerate(("before", "after")):
        for o in (record.get("objects") or {}).get(side, []):
            if o.get("kind") not in KINDS or not o.get("box"):
                continue
            out.append((k, (np.asarray(o["box"], np.float32) / scale).tolist(), KINDS.index(o["kind"]),
                        HEADINGS.index(o["direction"]) if o.get("direction") in HEADINGS else IGNORE,
                        POSES.index(o["pose"]) if o.get("pose") in POSES else IGNORE))
    return out


def shape_batch(batch: dict, records: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images [N, 3, S, S] (each object's own image), true boxes [N, 4] and targets [N, 3] of every
    object in the records' pairs (``batch``: their ``collate``)."""
    images, boxes, targets = [], [], []
    for i, r in enumerate(records):
        w, h = batch["sizes"][i]
        for k, box, *target in shape_targets(r, w, h):
            images.append(batch["before" if k == 0 else "after"][i])
            boxes.append(box)
            targets.append(target)
    return torch.stack(images), torch.tensor(boxes), torch.tensor(targets)


def slot_boxes(reader: ChangeReader, batch: dict) -> torch.Tensor:
    """The boxes the reader's slots predict, centred on their maps as ``ChangeReader.read`` centres
    them ([B, 12, 2, 4], 0..1): what the shape and word readers are handed at inference."""
    with torch.no_grad():
        out = reader(batch["before"], batch["after"])
    return centred_boxes(out["maps"].float().sigmoid(), ordered_boxes(out["boxes"].float()), reader.cfg.image_size // 8)


def predicted_crops(batch: dict, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The changed objects once more, at their slots' predicted ``boxes``: images, boxes, targets."""
    images, crops, targets = [], [], []
    for k, side in enumerate(("before", "after")):
        kinds = batch[f"{side}_kind"]
        for i, t in ((batch["box_mask"][:, :, k] > 0) & (kinds != IGNORE)).nonzero().tolist():
            images.append(batch[side][i])
            crops.append(boxes[i, t, k])
            targets.append([int(kinds[i, t]), int(batch[f"{side}_direction"][i, t]), int(batch[f"{side}_pose"][i, t])])
    if not images:
        return torch.zeros(0, 3, *batch["before"].shape[2:]), torch.zeros(0, 4), torch.zeros(0, 3, dtype=torch.long)
    return torch.stack(images), torch.stack(crops), torch.tensor(targets)


def word_crops(batch: dict, records: list[dict], boxes: torch.Tensor | None, gen: torch.Generator,
               box_jitter: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every sign in either image at its jittered true box and, with ``boxes`` (the slots' predicted
    ones), each changed sign at its slot's box: images, boxes and word indices for the word reader."""
    images, crops, words = [], [], []
    for i, k, box, word in batch["words"]:
        images.append(batch["before" if k == 0 else "after"][i])
        crops.append(torch.tensor(box))
        words.append(word)
    if crops:
        crops = list(jitter(torch.stack(crops), box_jitter, gen))
    if boxes is not None:
        for i, r in enumerate(records):
            for fact in facts_of_record(r) or []:
                for k, obj in enumerate((fact.before, fact.after)):
                    if obj is not None and obj.kind == "sign" and obj.text in WORDS and SIDES[fact.type][k]:
                        images.append(batch["before" if k == 0 else "after"][i])
                        crops.append(boxes[i, TYPE_IDS.index(fact.type), k])
                        words.append(WORDS.index(obj.text))
    if not images:
        return torch.zeros(0, 3, *batch["before"].shape[2:]), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    return torch.stack(images), torch.stack(crops), torch.tensor(words)


def train_shapes(data: Path, reader_dir: Path, out: Path, steps: int = 1500, batch: int = 16, lr: float = 2e-3,
                 crop: int = 32, box_jitter: float = 0.12, seed: int = 0, threads: int = 1,
                 checkpoint_every: int = 200, resume: bool = False, predicted: bool = False,
                 words: bool = False, progress: bool = True) -> Path:
    """Add a shape reader (``m3diff.reader.ShapeReader``, ``crop`` px) to the trained reader of
    ``reader_dir`` and train it alone, the rest of the reader unchanged, on every object of ``data``'s
    train split, its true box jittered as a predicted box will be; saved as a whole reader in ``out``.
    ``predicted``: each changed object is also cropped at the box its slot predicts, as at inference;
    ``words``: the word reader trains on too, on every sign's jittered box (and, with ``predicted``, at
    the changed signs' predicted boxes). Kill-safe as ``train_reader``."""
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    base = load_reader(reader_dir)
    if base.shapes is not None:  # a reader that has one: its shape reader trains on
        reader = base
    else:
        torch.manual_seed(seed)  # the shape reader's first weights
        reader = ChangeReader(dataclasses.replace(base.cfg, shape_crop=crop))
        missing, unexpected = reader.load_state_dict(base.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("shapes.") for k in missing), (missing, unexpected)
    records = read_split(data, "train")
    trained = [*reader.shapes.parameters(), *(reader.words.parameters() if words else ())]
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, max(1, steps // 20), 0.05))
    step = 0
    ckpt = out / "shapes-checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        reader.shapes.load_state_dict(state["shapes"])
        reader.words.load_state_dict(state["words"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = state["step"]
    per_epoch = len(records) // batch
    log = open(out / "shapes-log.jsonl", "a", encoding="utf-8")
    bar = tqdm(total=steps, initial=step, disable=not progress, desc="shapes", unit="step")
    cpu_start = time.process_time()  # CPU seconds of this sitting, for comparing designs at equal CPU time
    reader.eval()
    reader.shapes.train()
    if words:
        reader.words.train()
    while step < steps:
        epoch, pos = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(records))
        chunk = [records[i] for i in order[pos * batch:(pos + 1) * batch]]
        pairs = collate(data, chunk, reader.cfg.image_size)
        images, boxes, targets = shape_batch(pairs, chunk)
        gen = torch.Generator().manual_seed(seed * 100003 + step)
        boxes = jitter(boxes, box_jitter, gen)
        predicted_boxes = slot_boxes(reader, pairs) if predicted else None
        if predicted:
            more = predicted_crops(pairs, predicted_boxes)
            images, boxes, targets = (torch.cat([a, b]) for a, b in zip((images, boxes, targets), more))
        logits = reader.shapes(images, boxes)
        parts = {name: F.cross_entropy(logits[name], targets[:, j], ignore_index=IGNORE)
                 for j, name in enumerate(("kind", "direction", "pose")) if (targets[:, j] != IGNORE).any()}
        if words:
            w_images, w_boxes, w_targets = word_crops(pairs, chunk, predicted_boxes, gen, box_jitter)
            if len(w_targets):
                parts["word"] = F.cross_entropy(reader.words(w_images, w_boxes), w_targets)
        loss = sum(parts.values())
        update(loss, trained, opt, sched)
        step += 1
        bar.update(1)
        if step % 10 == 0:
            kind_acc = float((logits["kind"].argmax(-1) == targets[:, 0]).float().mean())
            log.write(json.dumps({"step": step, "cpu_s": round(time.process_time() - cpu_start, 1),
                                  "loss": round(float(loss.detach()), 4), "kind_acc": round(kind_acc, 4),
                                  **{k: round(float(v.detach()), 4) for k, v in parts.items()}}) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", kind=f"{kind_acc:.2f}")
        if step % checkpoint_every == 0 or step == steps:
            torch.save({"shapes": reader.shapes.state_dict(), "words": reader.words.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "step": step}, out / "shapes-checkpoint.tmp")
            (out / "shapes-checkpoint.tmp").replace(ckpt)
    bar.close()
    save_reader(reader, out)
    return out


def save_reader(reader: ChangeReader, folder: Path) -> None:
    save_file({k: v.contiguous() for k, v in reader.state_dict().items()}, folder / "reader.safetensors")
    (folder / "reader.json").write_text(json.dumps(reader.cfg.to_dict(), indent=1) + "\n", encoding="utf-8")


def load_reader(folder: str | Path) -> ChangeReader:
    """A reader from the ``--out`` folder of ``m3diff reader train``, or the one inside a captioning
    model's folder ("embedded" / "embedded-twin" name the shipped ones), in float32."""
    folder = shipped_or_path(folder)
    if (folder / "reader.json").is_file():
        reader = ChangeReader(ReaderConfig.from_dict(json.loads((folder / "reader.json").read_text(encoding="utf-8"))))
        reader.load_state_dict(load_file(folder / "reader.safetensors"))
        return reader.eval()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8")) if (folder / "config.json").is_file() else {}
    if not config.get("change_reader"):
        raise ValueError(f"{folder} holds no change reader (neither reader.json nor a model with one)")
    reader = ChangeReader(ReaderConfig.from_dict(config["change_reader"]))
    weights = load_file(folder / "model.safetensors")
    reader.load_state_dict({k.removeprefix("change_reader."): v.float() for k, v in weights.items()
                            if k.startswith("change_reader.")})
    return reader.eval()


def attach_reader(model_dir: str | Path, reader_dir: Path, out: Path, dtype: str = "float16") -> Path:
    """A captioning model (``model_dir``: a folder, or "embedded" / "embedded-twin") with the trained
    reader of ``reader_dir`` put into it, saved to ``out`` in ``dtype`` (float16: as the embedded
    models ship)."""
    captioner = DiffCaptioner.from_pretrained(str(shipped_or_path(model_dir)), dtype=getattr(torch, dtype))
    reader = load_reader(reader_dir)
    model = captioner.model
    model.config.change_reader = reader.cfg.to_dict()
    model.change_reader = reader.to(dtype=model.dtype, device=model.device)
    captioner.save_pretrained(out)
    return out


# -- the threshold from which a change counts as read ------------------------------------------------
@dataclass(frozen=True)
class ThresholdPoint:
    threshold: float
    recall: float
    precision: float

    @property
    def f1(self) -> float:
        total = self.recall + self.precision
        return 2 * self.recall * self.precision / total if total else 0.0


@dataclass(frozen=True)
class Calibration:
    """The calibrated threshold and the curve it was chosen from (on ``pairs`` pairs of ``data``)."""

    threshold: float
    curve: tuple[ThresholdPoint, ...]
    data: str
    pairs: int

    def to_json(self) -> dict:
        return {"threshold": self.threshold, "data": self.data, "pairs": self.pairs,
                "curve": [{"threshold": p.threshold, "recall": round(p.recall, 4), "precision": round(p.precision, 4),
                           "f1": round(p.f1, 4)} for p in self.curve]}


def threshold_curve(truths: list[list[ChangeFact]], readings: list[list[ChangeFact]],
                    thresholds: tuple[float, ...]) -> tuple[ThresholdPoint, ...]:
    """Recall and precision, at each threshold, of the changes a caption says (``said``: the camera or
    light change only when nothing else changed), a read change counting as right when a true change
    has its type (``analysis.detection`` matches by type) and the object it touched is named right
    (kind and colour, ``changed_object``): what the caption's change recall asks of a named change.
    ``readings``: every slot's change, read at threshold 0."""
    points = []
    for th in thresholds:
        right = true_n = read_n = 0
        for truth, reading in zip(truths, readings):
            said_true = {c.type: c for c in said(truth)}
            said_read = said([c for c in reading if c.confidence >= th])
            right += sum(c.type in said_true and changed_object(c) == changed_object(said_true[c.type]) for c in said_read)
            true_n += len(said_true)
            read_n += len(said_read)
        points.append(ThresholdPoint(th, right / true_n if true_n else 0.0, right / read_n if read_n else 0.0))
    return tuple(points)


def calibrate_threshold(model_dir: str | Path, data: Path, split: str = "val", pairs: int | None = None,
                        out: Path | None = None, batch: int = 32, progress: bool = True) -> Calibration:
    """Choose the reader's threshold on ``data``'s ``split`` (generated pairs with their true changes,
    none of them trained on) as the one with the best F1 of the changes a caption says, their objects
    named right (``threshold_curve``), and write it into
    the model's config (in ``out``, a copy of the model folder; in place when ``out`` is None or the same)."""
    model_dir = shipped_or_path(model_dir)
    captioner = DiffCaptioner.from_pretrained(str(model_dir))
    if not captioner.reads_changes:
        raise ValueError(f"{model_dir} has no change reader: put one in with `m3diff reader attach`")
    records = read_split(data, split)[:pairs]
    truths, readings = [], []
    for i in tqdm(range(0, len(records), batch), disable=not progress, desc="calibrate", unit="batch"):
        chunk = records[i:i + batch]
        read = captioner.read_changes([(data / r["before"], data / r["after"]) for r in chunk], threshold=0.0)
        truths += [facts_of_record(r) for r in chunk]
        readings += [list(reading.changes) for reading in read]
    curve = threshold_curve(truths, readings, tuple(round(0.05 * k, 2) for k in range(1, 20)))
    best = max(curve, key=lambda p: (round(p.f1, 6), p.threshold))  # a tie keeps the higher threshold
    calibration = Calibration(best.threshold, curve, str(data), len(records))
    out = model_dir if out is None else Path(out)
    if out.resolve() != model_dir.resolve():
        shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config["change_reader"]["threshold"] = best.threshold
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out / "reader_calibration.json").write_text(json.dumps(calibration.to_json(), indent=1) + "\n", encoding="utf-8")
    return calibration
