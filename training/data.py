"""Training samples, the deterministic order they are read in, and the collator.

Samples are the question-answer records of ``m3diff data mix`` (one JSONL line each); a dataset folder
given to ``--data`` goes through the same ``build_mixture`` in memory. The order is a pure function
of (seed, epoch), and global step ``s`` always reads the same ``global_batch`` samples, split the same
way into per-device micro-batches — which is what makes a resumed run and a run on more processes
read exactly what an uninterrupted single-process run reads.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from m3diff.data.layout import DatasetError
from m3diff.data.mixture import build_mixture, parse_source
from m3diff.data.readers import read_dataset
from m3diff.data.record import DiffPair
from m3diff.data.synth.captions import NOUNS
from m3diff.facts import ChangeFact
from m3diff.processing import facts_instruction
from training.auxiliary import collate_targets, pair_targets


@dataclass(frozen=True)
class Sample:
    id: str
    before: str
    after: str
    answer: str
    instruction: str | None = None  # None: the recipe's (the difference-captioning prompt)
    change_types: tuple[str, ...] = ()
    regions: tuple = ()  # the generator's ground truth (training/auxiliary.py); empty for real data
    objects: dict | None = None
    changes: tuple | None = None  # the generator's true changes (m3diff.facts); None for real data


def load_samples(sources: list[str], every_caption: bool, seed: int) -> list[Sample]:
    """Samples of every source: FILE.jsonl (a mixture) or DIR[:FORMAT][:WEIGHT] (its train split)."""
    records: list[dict] = []
    folders = []
    for spec in sources:
        if spec.endswith(".jsonl") and Path(spec).is_file():
            with open(spec, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise ValueError(f"{spec}, line {n}: not JSON ({exc.msg})") from None
        else:
            src = parse_source(spec)
            folders.append((src, read_dataset(src.path, src.format, split="train")))
    if folders:
        records += build_mixture(folders, seed=seed, every_caption=every_caption, shuffle=False)
    samples = []
    for r in records:
        if not r.get("before") or not r.get("after") or not r.get("answer"):
            raise ValueError(f"sample {r.get('id')!r} has no images or no answer; rebuild the mixture with images")
        samples.append(Sample(str(r["id"]), r["before"], r["after"], r["answer"],
                              change_types=tuple(r.get("change_types") or ()),
                              regions=tuple(r.get("regions") or ()), objects=r.get("objects"),
                              changes=tuple(r["changes"]) if r.get("changes") is not None else None))
    if not samples:
        raise ValueError(f"no training samples in {', '.join(sources)}")
    return samples


def load_val_pairs(sources: list[str], val: str | None, limit: int) -> list[DiffPair]:
    """The first ``limit`` pairs of the val split of ``val`` (or of the first source folder)."""
    if limit == 0:
        return []
    spec = val or next((s for s in sources if not s.endswith(".jsonl")), None)
    if spec is None:
        return []

    src = parse_source(spec)
    try:
        pairs = read_dataset(src.path, src.format, split="val").pairs
    except DatasetError as exc:  # no usable val split: said once, training goes on without evaluation

        print(f"warning: no validation during training: {exc}", file=sys.stderr)
        return []
    return pairs[:limit]


class StepSampler:
    """Which samples each process reads at each optimizer step.

    Step ``s`` reads ``order(epoch)[pos * G : (pos + 1) * G]`` (G = global batch, the last partial batch
    of an epoch is dropped); that slice is cut into ``G / per_device`` micro-batches, and process ``r``
    of ``P`` takes micro-batches ``r, r + P, r + 2P, …`` — so one process with accumulation A·P reads
    the same micro-batches as P processes with accumulation A.
    """

    def __init__(self, n: int, global_batch: int, per_device: int, seed: int):
        if n < global_batch:
            raise ValueError(f"{n} training samples are fewer than one global batch of {global_batch}")
        self.n, self.G, self.b, self.seed = n, global_batch, per_device, seed
        self.steps_per_epoch = n // global_batch

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def micro_batches(self, step: int, rank: int, world: int) -> list[list[int]]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        idx = self.order(epoch)[pos * self.G : (pos + 1) * self.G]
        micro = [idx[i : i + self.b].tolist() for i in range(0, self.G, self.b)]
        return micro[rank::world]


class Collator:
    """Samples → model inputs with ``labels`` on the answer tokens only (PairProcessor.encode_pairs);
    with ``geometry`` also the grounding targets (``batch["targets"]``) of samples that have them."""

    def __init__(self, processor, instruction: str | None = None, geometry=None, facts: bool = False):
        self.processor = processor
        self.instruction = instruction
        self.geometry = geometry
        self.facts = facts

    def instruction_of(self, s: Sample) -> str | None:
        if s.instruction:
            return s.instruction
        if self.facts and s.changes is not None:
            return facts_instruction(self.instruction, [ChangeFact.from_json(c) for c in s.changes])
        return self.instruction

    def __call__(self, samples: list[Sample]):
        batch = self.processor.encode_pairs(
            [(s.before, s.after) for s in samples], answers=[s.answer for s in samples],
            instruction=[self.instruction_of(s) for s in samples],
        )
        if self.geometry is not None:
            targets = []
            for s in samples:
                if s.objects is None:
                    targets.append(None)
                    continue
                with Image.open(s.before) as im:  # reads the header only
                    w, h = im.size
                targets.append(pair_targets(s, self.geometry, w, h))
            batch["targets"] = collate_targets(targets)
        return batch


# -- scene descriptions: the alignment task (ours) -------------------------------------------------
SCENE_INSTRUCTIONS = (
    "List every object in the first image: its size, colour, shape and where it is.",
    "List every object in the second image: its size, colour, shape and where it is.",
)
_COLUMNS = ("left", "middle", "right")
_ROWS = ("top", "middle", "bottom")


def _where(box, width: int, height: int) -> str:
    col = _COLUMNS[min(2, int(3 * (box[0] + box[2]) / 2 / width))]
    row = _ROWS[min(2, int(3 * (box[1] + box[3]) / 2 / height))]
    if row == col == "middle":
        return "in the middle"
    if row == "middle":
        return f"on the {col}"
    return f"at the {row}" if col == "middle" else f"at the {row} {col}"


def scene_description(objects: list[dict], width: int, height: int) -> str:
    """'A small red cube at the top left, a large blue ball in the middle, a white sign on the right and
    a person in green at the bottom.' — every object of one image, read top to bottom, then left to right."""
    entries = []
    for o in objects:
        if o["kind"] == "figure":
            what = f"a person in {o['color']}"
        elif o["kind"] == "sign":
            what = "a white sign"
        else:
            what = f"a {o['size']} {o['color']} {NOUNS[o['kind']][0]}"
        box = o["box"]
        entries.append((int(3 * (box[1] + box[3]) / 2 / height), box[0], f"{what} {_where(box, width, height)}"))
    parts = [text for *_, text in sorted(entries, key=lambda e: e[:2])]  # stable: ties keep record order
    if not parts:
        return "There are no objects."
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[:1].upper() + text[1:] + "."


def scene_samples(samples: list[Sample], share: float, seed: int) -> list[Sample]:
    """``share`` × len(samples) scene-description samples (the alignment task that teaches the LLM
    to read image tokens, as LLaVA's first stage does), drawn from the pairs that carry object ground
    truth, each about one image of its pair."""
    pairs: dict = {}
    for s in samples:
        if s.objects is not None:
            pairs.setdefault((s.before, s.after), s)
    if share <= 0 or not pairs:
        return []
    rng = np.random.default_rng([seed, 31])
    keys = sorted(pairs)
    out = []
    for i in rng.integers(len(keys), size=int(round(share * len(samples)))):
        s = pairs[keys[int(i)]]
        which = int(rng.integers(2))
        objects = s.objects["before" if which == 0 else "after"]
        with Image.open(s.before if which == 0 else s.after) as im:  # the header only
            w, h = im.size
        out.append(Sample(f"{s.id}#scene{which}", s.before, s.after,
                          scene_description(objects, w, h), instruction=SCENE_INSTRUCTIONS[which],
                          change_types=s.change_types, regions=s.regions, objects=s.objects))
    return out
