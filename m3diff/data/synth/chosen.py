"""One generated pair with the change types a person chose: the app's "Make a pair", a controlled experiment.

    made = make_pair(PairRequest(types=("color", "ocr"), domain="photo", seed=7, size=128))
    made.record     # as ``m3diff synth`` writes it: captions (references), change_types, regions (true boxes), objects
    made.before, made.after   # PIL images, byte for byte the same for the same request

The pair is drawn by the same scene builder, change appliers, renderers and caption grammar as
``m3diff synth`` (``generator.Worker``); only the plan differs: the types are the person's, not
the data set's schedule, and everything random comes from ``default_rng([seed, CHOSEN_STREAM, …])``
so a made pair never coincides with a pair of a generated data set by accident.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from m3diff.change_types import DISTRACTORS, TYPE_IDS
from m3diff.data.synth.captions import write_captions
from m3diff.data.synth.changes import apply_changes, base_scene, populate
from m3diff.data.synth.generator import DOMAINS, SynthConfig, Worker, _Plan, describe

NO_CHANGE = "no change"  # what a person picks for a pair whose two images show the same scene
CHOSEN_STREAM = 4_000_037  # a stream id no data set uses (generator.py: [seed, index], [seed, 1_000_003, …])
MAX_TYPES = 4  # the generator's own largest pair (N_CHANGES_P)
ATTEMPTS = 20  # scenes tried before a choice is called impossible


class ImpossiblePair(ValueError):
    """Settings no pair can have; the message says why and what to choose instead, in one line."""


@dataclass(frozen=True)
class PairRequest:
    """``types``: one to four of the 12 change type ids, or none for a no-change pair (the same scene,
    re-encoded or with sensor noise); ``size``: the side in pixels (the model's resolution, 64–512)."""

    types: tuple[str, ...] = ()
    domain: str = "render"
    seed: int = 0
    size: int = 128
    references: int = 3

    def __post_init__(self):
        types = tuple(dict.fromkeys(str(t) for t in self.types))
        if NO_CHANGE in types and len(types) > 1:
            raise ImpossiblePair(f"'{NO_CHANGE}' cannot go with {', '.join(t for t in types if t != NO_CHANGE)}: "
                                 f"choose '{NO_CHANGE}' alone or only change types")
        object.__setattr__(self, "types", tuple(t for t in types if t != NO_CHANGE))
        unknown = [t for t in self.types if t not in TYPE_IDS]
        if unknown:
            raise ImpossiblePair(f"unknown change type(s) {unknown}: choose from {', '.join(TYPE_IDS)}")
        if len(self.types) > MAX_TYPES:
            raise ImpossiblePair(f"{len(self.types)} change types chosen: a generated pair holds at most {MAX_TYPES}; "
                                 "drop some")
        if self.domain not in DOMAINS:
            raise ImpossiblePair(f"unknown domain {self.domain!r}: choose {' or '.join(DOMAINS)}")
        if not 64 <= int(self.size) <= 512:
            raise ImpossiblePair(f"size {self.size} px: the generator draws 64 to 512 px; choose a size in that range")
        if not 0 <= int(self.seed) < 2**63:
            raise ImpossiblePair(f"seed {self.seed}: choose a whole number from 0 to 2^63 - 1")

    @property
    def no_change(self) -> bool:
        return not self.types


@dataclass(frozen=True)
class MadePair:
    request: PairRequest
    record: dict  # the generator's record: id, captions, change_types, domain, scene, regions, objects
    before: Image.Image
    after: Image.Image

    @property
    def references(self) -> list[str]:
        return list(self.record["captions"])

    @property
    def boxes(self) -> list[tuple[str, list | None, list | None]]:
        """(type, before box, after box) per true change; a box is [x0, y0, x1, y1] in pixels, None where the
        change has no object in that image (an addition before, a disappearance after, camera and light)."""
        return [(r["type"], r["before"], r["after"]) for r in self.record["regions"]]


class _ChosenWorker(Worker):
    """A generator worker whose one pair has the request's types (everything else as ``m3diff synth`` does)."""

    def __init__(self, request: PairRequest):
        super().__init__(SynthConfig(seed=int(request.seed), pairs=1, size=int(request.size),
                                     references=request.references), None)
        self.request = request

    def _plan(self, index: int) -> _Plan:
        req = self.request
        d = DOMAINS.index(req.domain)
        rng = np.random.default_rng([req.seed, CHOSEN_STREAM, d, *(TYPE_IDS.index(t) for t in req.types)])
        scenes = [s for (domain, _), members in self.catalog.items() if domain == req.domain for s in members]
        s = sorted(scenes)[int(rng.integers(len(scenes)))]
        scene_id = f"{req.domain}-{s:03d}"
        tile = self.tiles[s] if req.domain == "photo" else None
        # semantic changes first, as the generator plans them (apply_changes applies camera and light last)
        types = [t for t in req.types if t not in DISTRACTORS] + [t for t in req.types if t in DISTRACTORS]
        for _ in range(ATTEMPTS):
            spec_rng = np.random.default_rng([req.seed, 1_000_003, d, s])  # the scene's fixed backdrop
            before = populate(base_scene(req.domain, scene_id, spec_rng, rng, tile), types or ["viewpoint"], rng)
            if req.no_change:
                after, changes = before, []
                break
            after, changes = apply_changes(before, types, rng)
            if {c.type for c in changes} == set(types):
                break
        else:
            missing = sorted(set(types) - {c.type for c in changes})
            raise ImpossiblePair(f"no {req.domain} scene of seed {req.seed} took all of {', '.join(types)} "
                                 f"({', '.join(missing)} found no object to change) in {ATTEMPTS} tries: "
                                 "choose fewer types or another seed")
        unchanged = np.random.default_rng([req.seed, CHOSEN_STREAM, d, 17])
        pid = f"made-{req.domain}-{req.seed}-{'+'.join(req.types) or 'none'}"
        return _Plan(pid, "test", req.domain, scene_id, before, after, changes, rng, unchanged, req.no_change)


def make_pair(request: PairRequest) -> MadePair:
    """The pair the request names: a pure function of it (same request, same bytes). Raises
    ``ImpossiblePair`` (one line: why, and what to choose) for settings no pair can have."""
    _, record, before, after = _ChosenWorker(request).make(0)
    return MadePair(request, record, before, after)


__all__ = ["PairRequest", "MadePair", "ImpossiblePair", "make_pair", "MAX_TYPES", "NO_CHANGE"]


def dataset_references(cfg: SynthConfig, indices) -> list[list[str]]:
    """The references of pairs ``indices`` of the data set ``cfg`` generates, without drawing a picture (the
    drawing consumes no random numbers, so they are the data set's own); no-change pairs are left out (their
    references are drawn after their picture's perturbation). What a made pair's CIDEr-D takes its document
    frequencies from."""
    worker, out = Worker(cfg, None), []
    for index in indices:
        plan = worker._plan(index)
        if plan.no_change:
            continue
        changes = describe(plan.before, plan.after, plan.changes)
        semantic = [c for c in changes if c.type not in DISTRACTORS]
        out.append(write_captions(semantic or changes, plan.domain, plan.rng, cfg.references,
                                  backdrop=plan.before.floor if plan.domain == "render" else plan.before.photo))
    return out
