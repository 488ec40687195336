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

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from m3diff.change_types import TYPE_IDS
from m3diff.facts import COLORS, DETAILS, HEADINGS, HORIZONTAL, KINDS, POSES, VERTICAL, WORDS, facts_of_record
from m3diff.pipeline import EMBEDDED_DIR, EMBEDDED_TWIN_DIR, DiffCaptioner
from m3diff.reader import DOMAINS, OBJECT_HEADS, SIDES, SIZE_NAMES, ChangeReader, ReaderConfig

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
    batch = {k: torch.stack([t[k] for t in targets]) for k in targets[0] if k != "words"}
    batch["words"] = [(i, k, box, word) for i, t in enumerate(targets) for k, box, word in t["words"]]
    batch["before"], batch["after"] = torch.stack(befores), torch.stack(afters)
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


def train_reader(data: Path, out: Path, settings: ReaderTraining = ReaderTraining(), cfg: ReaderConfig = ReaderConfig(),
                 resume: bool = False, stop_at: int | None = None, progress: bool = True) -> Path:
    """Train a reader on ``data``'s train split into ``out`` (``reader.safetensors`` + ``reader.json``);
    kill-safe: a checkpoint every ``checkpoint_every`` steps, ``resume`` goes on from the latest."""
    torch.set_num_threads(settings.threads)
    out.mkdir(parents=True, exist_ok=True)
    records = read_split(data, "train")
    torch.manual_seed(settings.seed)
    reader = ChangeReader(cfg)
    opt = torch.optim.AdamW(reader.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    def lr_at(step):
        if step < settings.warmup:
            return (step + 1) / settings.warmup
        p = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
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
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reader.parameters(), 1.0)
        opt.step()
        sched.step()
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


def save_reader(reader: ChangeReader, folder: Path) -> None:
    save_file({k: v.contiguous() for k, v in reader.state_dict().items()}, folder / "reader.safetensors")
    (folder / "reader.json").write_text(json.dumps(reader.cfg.to_dict(), indent=1) + "\n", encoding="utf-8")


def load_reader(folder: Path) -> ChangeReader:
    cfg = ReaderConfig.from_dict(json.loads((folder / "reader.json").read_text(encoding="utf-8")))
    reader = ChangeReader(cfg)
    reader.load_state_dict(load_file(folder / "reader.safetensors"))
    return reader.eval()


def attach_reader(model_dir: str | Path, reader_dir: Path, out: Path, dtype: str = "float16") -> Path:
    """A captioning model (``model_dir``: a folder, or "embedded" / "embedded-twin") with the trained
    reader of ``reader_dir`` put into it, saved to ``out`` in ``dtype`` (float16: as the embedded
    models ship)."""
    named = {"embedded": EMBEDDED_DIR, "embedded-twin": EMBEDDED_TWIN_DIR}
    captioner = DiffCaptioner.from_pretrained(str(named.get(str(model_dir), model_dir)), dtype=getattr(torch, dtype))
    reader = load_reader(reader_dir)
    model = captioner.model
    model.config.change_reader = reader.cfg.to_dict()
    model.change_reader = reader.to(dtype=model.dtype, device=model.device)
    captioner.save_pretrained(out)
    return out
