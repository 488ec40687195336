"""Training samples, the deterministic order they are read in, and the collator.

Samples are the question-answer records of ``m3diff data mix`` (one JSONL line each); a dataset folder
given to ``--data`` goes through the same ``build_mixture`` in memory. The order is a pure function
of (seed, epoch), and global step ``s`` always reads the same ``global_batch`` samples, split the same
way into per-device micro-batches — which is what makes a resumed run and a run on more processes
read exactly what an uninterrupted single-process run reads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m3diff.data.record import DiffPair


@dataclass(frozen=True)
class Sample:
    id: str
    before: str
    after: str
    answer: str


def load_samples(sources: list[str], every_caption: bool, seed: int) -> list[Sample]:
    """Samples of every source: FILE.jsonl (a mixture) or DIR[:FORMAT][:WEIGHT] (its train split)."""
    from m3diff.data.mixture import build_mixture, parse_source
    from m3diff.data.readers import read_dataset

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
        samples.append(Sample(str(r["id"]), r["before"], r["after"], r["answer"]))
    if not samples:
        raise ValueError(f"no training samples in {', '.join(sources)}")
    return samples


def load_val_pairs(sources: list[str], val: str | None, limit: int) -> list[DiffPair]:
    """The first ``limit`` pairs of the val split of ``val`` (or of the first source folder)."""
    from m3diff.data.mixture import parse_source
    from m3diff.data.readers import read_dataset

    if limit == 0:
        return []
    spec = val or next((s for s in sources if not s.endswith(".jsonl")), None)
    if spec is None:
        return []
    src = parse_source(spec)
    try:
        pairs = read_dataset(src.path, src.format, split="val").pairs
    except Exception:  # a source without a val split: evaluation is skipped, training goes on
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
    """Samples → model inputs with ``labels`` on the answer tokens only (PairProcessor.encode_pairs)."""

    def __init__(self, processor, instruction: str | None = None):
        self.processor = processor
        self.instruction = instruction

    def __call__(self, samples: list[Sample]):
        return self.processor.encode_pairs(
            [(s.before, s.after) for s in samples], answers=[s.answer for s in samples],
            instruction=self.instruction,
        )
