"""Predict a dataset's captions into a predictions file, resumably: the library behind `m3diff predict`.

``start_run`` opens (or resumes) a predictions file for a list of pairs; ``predict_pairs`` describes
what is still missing in batches, rewriting the file after each batch so that a killed run loses at
most one batch; a later call with the same settings continues where it stopped.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from analysis.inputs import InputError, Predictions, load_predictions
from analysis.localization import SanityCheck, description_maps, encode_maps, model_map_fn, sanity_check
from m3diff.describing import GenerationSettings
from m3diff.images import ImageError, load_image


class ResumeError(ValueError):
    """The file at ``--out`` holds another run: resuming it would mix two runs (the message says how to go on)."""


@dataclass(frozen=True)
class PredictOptions:
    batch_size: int = 32
    settings: GenerationSettings = GenerationSettings()
    maps: bool = False  # store each pair's maps (analysis.localization.description_maps)
    attribution: bool = False  # with maps: add captum's saliency of the whole caption
    sanity_pairs: int = 0  # with maps: run the maps' sanity check on this many pairs once

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.attribution and not self.maps:
            raise ValueError("--attribution adds a map to --maps; pass both")
        if self.sanity_pairs < 0:
            raise ValueError(f"--sanity-pairs must be 0 or more, got {self.sanity_pairs}")


@dataclass
class PredictOutcome:
    predicted: int = 0  # pairs described by this call
    failed: dict[str, str] = field(default_factory=dict)  # id -> why one of its images could not be read
    unexplained: list[str] = field(default_factory=list)  # ids whose caption could not be attributed


def pair_digest(pair) -> str:
    """What a prediction was made from: the bytes of both images (a regenerated set keeps ids and paths)."""
    h = hashlib.sha1()
    for path in (pair.before, pair.after):
        h.update(Path(path).read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def start_run(out: Path, pairs, *, model: str, data: str, split: str | None,
              min_end_probability: float | None, joint_facts: bool = False, restart: bool = False) -> Predictions:
    """The predictions of this run: a fresh file's, or those already in ``out`` when they are of the
    same model, data, split, decoding and images (else ``ResumeError``)."""
    run = Predictions(out, {}, model=model, data=data, split=split, min_end_probability=min_end_probability,
                      joint_facts=joint_facts)
    if not out.exists() or restart:
        return run
    try:
        earlier = load_predictions(out)
    except InputError as exc:
        raise ResumeError(f"{out} exists but is not a predictions file ({exc}); move it away or pick another --out") \
            from None
    check_resumable(earlier, run, pairs)
    run.captions, run.images, run.maps, run.sanity = earlier.captions, earlier.images, earlier.maps, earlier.sanity
    run.changes = earlier.changes
    return run


def check_resumable(earlier: Predictions, now: Predictions, pairs) -> None:
    """One line saying why resuming ``earlier`` (the file on disk) with this run would mix two runs."""
    out = earlier.path
    again = "pass the same --{key} to resume it, --restart to replace it, or pick another --out"
    for key in ("model", "split"):
        was, want = getattr(earlier, key), getattr(now, key)
        if was and was != want:
            raise ResumeError(f"{out} holds predictions of {key} {was!r}, not {want!r}; " + again.format(key=key))
    if earlier.min_end_probability != now.min_end_probability:
        was, want = earlier.min_end_probability, now.min_end_probability
        raise ResumeError(f"{out} holds captions decoded with min_end_probability {was}, not {want}; pass "
                          + ("no --min-end-probability" if was is None else f"--min-end-probability {was}")
                          + " to resume it, --restart to replace it, or pick another --out")
    if earlier.joint_facts != now.joint_facts:
        how = "every change read in one prompt" if earlier.joint_facts else "one prompt per change read"
        raise ResumeError(f"{out} holds captions decoded with {how}; pass "
                          + ("--joint-facts" if earlier.joint_facts else "no --joint-facts")
                          + " to resume it, --restart to replace it, or pick another --out")
    if earlier.data and Path(earlier.data).resolve() != Path(now.data).resolve():
        raise ResumeError(f"{out} holds predictions of data {earlier.data!r}, not {now.data!r}; "
                          + again.format(key="data"))
    changed = [p.id for p in pairs if p.id in earlier.captions and p.id in earlier.images
               and earlier.images[p.id] != pair_digest(p)]
    if changed:
        shown = ", ".join(repr(i) for i in changed[:5]) + (f", ... (+{len(changed) - 5} more)" if len(changed) > 5 else "")
        raise ResumeError(f"{out}: the images of {len(changed)} pair(s) changed since they were predicted ({shown}); "
                          "pass --restart to predict everything again, or pick another --out")


def pending(run: Predictions, pairs, options: PredictOptions) -> list:
    """The pairs still to describe; one predicted before without maps is described again when maps are asked."""
    return [p for p in pairs if p.id not in run.captions or (options.maps and p.id not in run.maps)]


def wants_sanity(run: Predictions, options: PredictOptions) -> bool:
    return options.maps and options.sanity_pairs > 0 and run.sanity is None


def predict_pairs(captioner, run: Predictions, pairs, options: PredictOptions,
                  progress: Callable[[int], None] = lambda n: None) -> PredictOutcome:
    """Describe the pairs ``run`` lacks, saving ``run.path`` after every batch, in the pairs' order.
    A pair whose image cannot be read is skipped (``failed``); the others are still described."""
    order = [p.id for p in pairs]  # the split's order, then rows this run does not cover (e.g. beyond --limit)
    outcome = PredictOutcome()
    todo = pending(run, pairs, options)
    for s in range(0, len(todo), options.batch_size):
        batch = todo[s:s + options.batch_size]
        for p, d in zip(batch, _describe(captioner, batch, options, outcome.failed)):
            if d is None:
                continue
            run.captions[p.id] = d.caption
            run.images[p.id] = pair_digest(p)
            if d.changes is not None:  # a model with a change reader: what it read, scored by `m3diff eval`
                run.changes[p.id] = d.changes.to_json()
            outcome.predicted += 1
            if options.maps:
                run.maps[p.id], attributed = pair_evidence(captioner, p, d, options.attribution)
                if not attributed:
                    outcome.unexplained.append(p.id)
        run.save(run.path, order)
        progress(len(batch))
    if wants_sanity(run, options):
        readable = [p for p in pairs[: options.sanity_pairs] if p.id not in outcome.failed]
        images = [(load_image(p.before), load_image(p.after)) for p in readable]
        run.sanity = sanity_check(captioner.model, images, model_map_fn(captioner.processor))
        run.save(run.path, order)
    return outcome


def _describe(captioner, batch, options: PredictOptions, failed: dict[str, str]) -> list:
    try:
        return captioner.describe_batch([(p.before, p.after) for p in batch], with_trace=options.maps,
                                        settings=options.settings)
    except ImageError as exc:
        if len(batch) == 1:
            failed[batch[0].id] = str(exc)
            return [None]
    # one unreadable image fails its whole batch: find it, describe the others
    return [d for p in batch for d in _describe(captioner, [p], options, failed)]


def pair_evidence(captioner, pair, description, attribution: bool) -> tuple[dict, bool]:
    """One described pair's maps in the predictions file's form, and whether its caption could be
    attributed (True when no attribution was asked for)."""
    named = description_maps(description.trace, description.feature_difference)
    attributed = True
    if attribution:
        from analysis.attribution import explain_caption  # lazy: captum is imported only when asked for

        try:
            named["saliency_caption"] = explain_caption(captioner, pair.before, pair.after, description.caption).patches
        except ValueError:  # no words, or a caption that re-tokenizes differently after the prompt
            attributed = False
    return encode_maps(named), attributed


__all__ = ["PredictOptions", "PredictOutcome", "ResumeError", "SanityCheck", "check_resumable", "pair_digest",
           "pending", "predict_pairs", "start_run", "wants_sanity"]
