"""The app's controlled experiments as plain functions of their inputs (tested without a browser): make a
pair, probe a pair, read a knockout study. app.py lays them out; the work is ``analysis.madepair`` and
``analysis.probe``, run where the model lives (``m3diff.remote.call_on``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.evidence import draw_boxes
from analysis.madepair import make_and_describe, model_size, new_seed, share_query
from analysis.probe import KnockoutStudy, PairProbe, plan_note, probe_pair, twin_row, with_twin
from analysis.render import knockout_table, made_pair_line, made_pair_table, md, probe_table
from m3diff.data.synth.chosen import ImpossiblePair, PairRequest
from m3diff.describing import EMBEDDED_DIR, GenerationSettings
from m3diff.remote import call_on

KNOCKOUT_STUDY = EMBEDDED_DIR / "reports" / "knockout.json"  # the embedded model's, when shipped
KNOCKOUT_HOWTO = ("No knockout study loaded: run `m3diff probe --knockout --data DIR --split test --out FILE.json` "
                  "and upload FILE.json here.")


class ExperimentError(ValueError):
    """Settings an experiment cannot run with; one line for a person (the app shows it as an error)."""


@dataclass(frozen=True)
class MadePairView:
    before: object  # PIL, with the true change boxes drawn
    after: object
    plain_before: object  # PIL, as the model saw them (fed to the Describe tab's inputs)
    plain_after: object
    references: str  # Markdown
    caption: str
    score_line: str
    changes: pd.DataFrame
    seed: int
    link: str  # URL query that remakes the pair
    seconds: float


def make_pair_view(services, types, domain: str, seed, max_new_tokens: int = 96) -> MadePairView:
    """Make the chosen pair at the loaded model's resolution, caption it and score the caption.
    ``seed`` None or blank: a new random seed (returned, so it can be shared)."""
    seed = new_seed() if seed in (None, "") else seed
    try:
        request = PairRequest(tuple(types or ()), domain, int(seed), model_size(services.captioner.info.image_size))
    except (TypeError, ValueError) as exc:  # ImpossiblePair is a ValueError; int("x") too
        raise ExperimentError(str(exc) if isinstance(exc, ImpossiblePair) else
                              f"seed {seed!r} is not a whole number: leave it blank for a new one") from None
    try:
        result = make_and_describe(services.captioner, services.made_pairs, request,
                                   GenerationSettings(max_new_tokens=int(max_new_tokens)))
    except ImpossiblePair as exc:
        raise ExperimentError(str(exc)) from None
    made = result.made
    before_boxes = [b for _, b, _ in made.boxes]
    after_boxes = [a for _, _, a in made.boxes]
    refs = "\n".join(f"{i}. {r}" for i, r in enumerate(made.references, 1))
    return MadePairView(
        draw_boxes(made.before, before_boxes, made.before.size, "before"),
        draw_boxes(made.after, after_boxes, made.after.size, "after"), made.before, made.after,
        f"**References (the generator's)**\n\n{refs}", result.description.caption, made_pair_line(result.score),
        made_pair_table(result.score), request.seed, "?" + share_query(request), result.seconds)


def probe_note(services) -> str:
    info = services.captioner.info
    return plan_note(info.mdp_layers if info.use_mdp else (), services.twin is not None)


def run_probe(services, before, after, max_new_tokens: int = 96, progress=None) -> PairProbe:
    """Every row of the probe (``analysis.probe``), and the twin's when it is loaded. ``before``, ``after``:
    loaded PIL images; ``progress(fraction, what)`` is told before each model call."""
    tick = progress or (lambda fraction, what: None)
    settings = GenerationSettings(max_new_tokens=int(max_new_tokens))
    tick(0.0, "probing: one batched generate and one loss pass")
    probe = call_on(services.captioner, probe_pair, before, after, settings)
    if services.twin is not None:
        tick(0.7, "the no-MDP twin's row")
        probe = with_twin(probe, call_on(services.twin, twin_row, before, after, probe.rows[0].caption, settings))
    tick(1.0, "done")
    return probe


def probe_view(probe: PairProbe) -> tuple[pd.DataFrame, str]:
    said = probe.row("before twice").says_no_change
    note = (f"{len(probe.rows)} rows in {probe.seconds:.1f} s ({probe.generates} batched generate"
            f"{'s' if probe.generates > 1 else ''}). Before twice: "
            + ("says nothing changed ✓" if said else "describes a change ✗ (a model that reads its pair says "
                                                     "nothing changed)"))
    return probe_table(probe), note


def load_knockout(path: str | Path | None) -> KnockoutStudy | None:
    """A knockout study file (``m3diff probe --knockout --out``); the shipped one when ``path`` is None."""
    if path is None:
        return KnockoutStudy.read(KNOCKOUT_STUDY) if KNOCKOUT_STUDY.is_file() else None
    try:
        return KnockoutStudy.read(path)
    except ValueError as exc:
        raise ExperimentError(str(exc).replace(str(Path(path).parent) + "/", "")) from None


def knockout_view(study: KnockoutStudy | None, measure: str = "CIDEr-D") -> tuple[pd.DataFrame, str]:
    if study is None:
        return pd.DataFrame(), KNOCKOUT_HOWTO
    recall = "" if study.full_recall is None else f", change recall {study.full_recall:.1f}%"
    unit = "×100" if measure == "CIDEr-D" else "percentage points"
    note = (f"**{md(study.model)}** on {study.n_pairs} pairs: full model CIDEr-D {study.full_cider:.1f}{recall}. "
            f"Each column: that MDP layer's Score set to 0 (the others renormalised) minus the full model, in "
            f"{unit}, [95% paired bootstrap interval, {study.bootstrap} resamples]; an interval that excludes 0 "
            "is a dependence measured, not read off the Score weights. Per-type CIDEr-D is each type re-scored "
            "as its own corpus.")
    return knockout_table(study, measure), note


__all__ = ["ExperimentError", "MadePairView", "make_pair_view", "probe_note", "run_probe", "probe_view",
           "load_knockout", "knockout_view", "KNOCKOUT_STUDY", "KNOCKOUT_HOWTO"]
