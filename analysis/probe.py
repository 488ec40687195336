"""Controlled experiments on one pair and on a data set: what the caption does when the input or the MDP
is changed in one known way.

- ``probe_pair``: one pair, side by side — the original; **swapped** (does it describe the reverse
  change?); the before image **twice** (does it say nothing changed?); the after image **re-encoded** as
  JPEG with light noise (is the caption stable?); each MDP scale **knocked out** (its Score 0 in eq. 8,
  the others renormalised); the difference branch zeroed (**ΔF = 0**). Each row: its caption, a word
  diff against the original, the change in the answer loss of the original caption, the Score per layer.
  All rows are one batched generate and one batched loss pass (``m3diff.mdp.MDPKnockout`` per pair), so
  the probe costs about one describe of a batch, not one describe per row.
- ``knockout_study``: over a data set's pairs, per MDP scale, the change in CIDEr-D (overall and per
  change type) and in change recall per type when that scale is knocked out, each with a paired
  bootstrap interval (``analysis.breakdown``'s resamples for CIDEr-D; the same pairs resampled for
  recall) — which vision layers each change type depends on, measured rather than read off the Scores.

The functions that run a model take the captioner first, so the app runs them in the model's process
(``m3diff.remote.call_on``); their results are plain data. ``m3diff probe`` (grounding checks over a data
set) is ``analysis.grounding``; ``m3diff probe --knockout`` is the study here.
"""
from __future__ import annotations

import difflib
import io
import json
import time
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from analysis.changes import score_caption
from analysis.grounding import says_no_change
from analysis.metrics import CaptionScorer, ScorerConfig
from m3diff.describing import GenerationSettings, MDPKnockout, caption_words

JPEG_QUALITY = 80  # a common web re-encoding: visible to no person, different bytes to the model
NOISE_SIGMA = 2.0  # grey levels: faint sensor noise (the generator's no-change pairs use 1–3)


# ---------------------------------------------------------------------------- one pair
@dataclass(frozen=True)
class ProbeRow:
    name: str  # "original", "swapped", "before twice", "after re-encoded", "layer 4 knocked out", "ΔF = 0", …
    question: str  # what the row asks of the model
    caption: str
    diff: str  # word-level diff against the original caption ("same" when equal)
    loss: float | None  # mean answer loss (per token) of the ORIGINAL caption under this row's input
    loss_change: float | None  # loss / the original row's loss − 1 (None for another model's row)
    layer_scores: dict[int, float] = field(default_factory=dict)  # mean Score per MDP layer, as eq. (8) used it
    says_no_change: bool = False


@dataclass(frozen=True)
class PairProbe:
    rows: tuple[ProbeRow, ...]
    seconds: float
    generates: int  # batched generates run (1 for the model; +1 with the twin's row)

    def row(self, name: str) -> ProbeRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no probe row {name!r}; rows: {', '.join(r.name for r in self.rows)}")


def probe_plan(mdp_layers, with_twin: bool = False) -> list[str]:
    """The rows a probe runs for a model with these MDP layers (empty: no MDP): what the panel announces."""
    rows = ["original", "swapped", "before twice", "after re-encoded"]
    if len(mdp_layers) > 1:  # one scale knocked out of one leaves nothing to weigh
        rows += [f"layer {layer} knocked out" for layer in mdp_layers]
    if mdp_layers:
        rows.append("ΔF = 0")
    return rows + (["no-MDP twin"] if with_twin else [])


def plan_note(mdp_layers, with_twin: bool = False) -> str:
    """One line saying how much a probe costs before it starts (on a 7B model each caption is slow)."""
    rows = probe_plan(mdp_layers, with_twin)
    model_rows = len(rows) - with_twin
    twin = " and 1 caption by the twin" if with_twin else ""
    return (f"Runs {len(rows)} rows: {model_rows} captions in one batched generate{twin}, plus one loss pass "
            f"({', '.join(rows)}).")


def reencode(image: Image.Image, seed: int = 0) -> Image.Image:
    """The image as a JPEG (quality ``JPEG_QUALITY``) with faint Gaussian noise: the same picture to a person."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    a = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), np.float32)
    a = a + np.random.default_rng([seed, 31]).normal(0, NOISE_SIGMA, a.shape)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def word_diff(original: str, other: str) -> str:
    """``other`` against ``original`` word by word: [-removed-] {+added+}; "same" when the words agree."""
    a, b = caption_words(original), caption_words(other)
    if a == b:
        return "same"
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out += a[i1:i2] if i2 - i1 <= 4 else [*a[i1:i1 + 2], "…", *a[i2 - 2:i2]]
            continue
        if i2 > i1:
            out.append("[-" + " ".join(a[i1:i2]) + "-]")
        if j2 > j1:
            out.append("{+" + " ".join(b[j1:j2]) + "+}")
    return " ".join(out)


def caption_losses(captioner, pairs, answers, knockout=None) -> list[tuple[float, int]]:
    """Per pair, the summed cross-entropy of its answer (and end token) given its images under ``knockout``
    (one ``MDPKnockout`` or one per pair), and the token count: ``analysis.grounding.answer_losses`` with
    the MDP ablated for this call only."""
    import torch  # lazy: the web process imports this module for its result types, never torch

    from m3diff.processing import answer_cross_entropy  # lazy: it imports torch

    model = captioner.model
    batch, _ = captioner.encode_pairs(list(pairs), answers=list(answers))
    with torch.inference_mode():
        features = model.model.get_image_features(
            batch["pixel_values"].to(model.dtype), batch["image_sizes"], batch_num_images=batch["batch_num_images"],
            mdp_knockout=knockout if captioner.uses_mdp else None)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       mm_encoder_outputs={"image": features}, use_cache=False).logits
    sums, counts = answer_cross_entropy(logits, batch["labels"])
    return list(zip(sums.tolist(), counts.tolist()))


_QUESTIONS = {
    "original": "the pair as given",
    "swapped": "after, then before: does it describe the reverse change?",
    "before twice": "the before image twice: does it say nothing changed?",
    "after re-encoded": f"the after image as a JPEG (quality {JPEG_QUALITY}) with noise σ={NOISE_SIGMA:g}: "
                        "is the caption stable?",
    "ΔF = 0": "the difference features ΔF (eq. 3) zeroed in every scale",
    "no-MDP twin": "the same pair through the model trained without MDP",
}


def probe_pair(captioner, before, after, settings: GenerationSettings = GenerationSettings(),
               seed: int = 0) -> PairProbe:
    """Every row of ``probe_plan`` but the twin's, in one batched generate and one loss pass. Images: PIL."""
    start = time.perf_counter()
    layers = tuple(captioner.info.mdp_layers) if captioner.uses_mdp else ()
    names = probe_plan(layers)
    inputs = {"original": (before, after), "swapped": (after, before), "before twice": (before, before),
              "after re-encoded": (before, reencode(after, seed))}
    pairs, knockouts = [], []
    for name in names:
        pairs.append(inputs.get(name, (before, after)))
        if name.startswith("layer "):
            knockouts.append(MDPKnockout(scales=(int(name.split()[1]),)))
        else:
            knockouts.append(MDPKnockout(zero_delta=name == "ΔF = 0"))
    per_pair = knockouts if layers else None
    described = captioner.describe_batch(pairs, settings=settings, with_trace=bool(layers), knockout=per_pair)
    original = described[0].caption
    losses = caption_losses(captioner, pairs, [original] * len(pairs), per_pair)
    base = losses[0][0] / max(1, losses[0][1])
    rows = []
    for name, d, (s, n) in zip(names, described, losses):
        loss = s / max(1, n)
        question = _QUESTIONS.get(name) or f"Score of layer {name.split()[1]} set to 0, the other scales renormalised"
        rows.append(ProbeRow(name, question, d.caption, word_diff(original, d.caption), loss,
                             loss / base - 1 if base > 0 else None, dict(d.layer_scores), says_no_change(d.caption)))
    return PairProbe(tuple(rows), time.perf_counter() - start, 1)


def twin_row(twin, before, after, original_caption: str, settings: GenerationSettings = GenerationSettings()) -> ProbeRow:
    """The no-MDP twin's row: its caption of the pair and its loss of the model's caption (no change: another model)."""
    d = twin.describe(before, after, settings=settings, with_trace=False)
    (s, n), = caption_losses(twin, [(before, after)], [original_caption])
    return ProbeRow("no-MDP twin", _QUESTIONS["no-MDP twin"], d.caption, word_diff(original_caption, d.caption),
                    s / max(1, n), None, {}, says_no_change(d.caption))


def with_twin(probe: PairProbe, row: ProbeRow) -> PairProbe:
    return PairProbe(probe.rows + (row,), probe.seconds, probe.generates + 1)


# ---------------------------------------------------------------------------- over a data set
@dataclass(frozen=True)
class KnockoutDelta:
    """One scale knocked out minus the full model, on the same pairs: the change and its paired interval."""

    delta: float
    low: float | None
    high: float | None
    n: int  # pairs (CIDEr-D) or true changes (recall) it is measured on


@dataclass
class KnockoutStudy:
    model: str
    n_pairs: int
    layers: tuple[int, ...]
    full_cider: float  # the unablated model's CIDEr-D on these pairs, x100
    full_recall: float | None  # its change recall (generated data), x100
    cider: dict[int, dict[str, KnockoutDelta]]  # layer → slice ("all" or a change type) → ΔCIDEr-D x100
    recall: dict[int, dict[str, KnockoutDelta]]  # layer → slice → Δ change recall, percentage points
    bootstrap: int = 1000
    seed: int = 0

    def to_json(self) -> dict:
        enc = lambda table: {str(k): {s: asdict(d) for s, d in v.items()} for k, v in table.items()}  # noqa: E731
        return {"kind": "m3diff.knockout/1", "model": self.model, "n_pairs": self.n_pairs, "layers": list(self.layers),
                "full_cider": self.full_cider, "full_recall": self.full_recall, "cider_delta": enc(self.cider),
                "recall_delta": enc(self.recall), "bootstrap": self.bootstrap, "seed": self.seed}

    @classmethod
    def from_json(cls, doc) -> "KnockoutStudy":
        """Read what ``to_json`` wrote; anything else is refused with one line naming the field."""
        if not isinstance(doc, dict) or doc.get("kind") != "m3diff.knockout/1":
            raise ValueError("not a knockout study: write one with `m3diff probe --knockout --out FILE.json`")
        try:
            dec = lambda table: {int(k): {str(s): KnockoutDelta(float(d["delta"]),  # noqa: E731
                                                                None if d["low"] is None else float(d["low"]),
                                                                None if d["high"] is None else float(d["high"]),
                                                                int(d["n"])) for s, d in v.items()}
                                 for k, v in table.items()}
            return cls(str(doc["model"])[:200], int(doc["n_pairs"]), tuple(int(x) for x in doc["layers"]),
                       float(doc["full_cider"]), None if doc["full_recall"] is None else float(doc["full_recall"]),
                       dec(doc["cider_delta"]), dec(doc["recall_delta"]), int(doc["bootstrap"]), int(doc["seed"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"knockout study: field {exc} missing or malformed; write it again with "
                             "`m3diff probe --knockout`") from None

    @classmethod
    def read(cls, path) -> "KnockoutStudy":
        try:
            return cls.from_json(json.loads(open(path, encoding="utf-8").read()))
        except (OSError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"{path}: unreadable ({exc}); write it with `m3diff probe --knockout --out FILE`") from None


def _interval(draws: np.ndarray, confidence: float = 0.95) -> tuple[float | None, float | None]:
    if draws is None or len(draws) == 0:
        return None, None
    a = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(draws, [a, 100 - a])
    return float(lo), float(hi)


def _resamples(n: int, bootstrap: int, seed: int, slice_name: str) -> np.ndarray | None:
    """[B, n] draw counts, the same for the full and the ablated run of one slice (a paired interval)."""
    if bootstrap <= 0 or n < 2:
        return None
    rng = np.random.default_rng([seed, zlib.crc32(f"knockout/{slice_name}/{n}".encode())])
    return rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(float)


def knockout_study(captioner, pairs, *, model_name: str = "", batch_size: int = 8,
                   settings: GenerationSettings = GenerationSettings(), bootstrap: int = 1000, seed: int = 0,
                   progress=None, scorer=None) -> KnockoutStudy:
    """Caption ``pairs`` (DiffPairs with references) with the full model and with each MDP scale knocked
    out, and measure the change. ``scorer``: an ``analysis.metrics.CaptionScorer`` (made here without
    METEOR when None); CIDEr-D per slice is re-scored as its own corpus with the slice's resamples."""
    if not captioner.uses_mdp or len(captioner.info.mdp_layers) < 2:
        raise ValueError("a knockout study needs a model with at least two MDP scales (this one has "
                         f"{len(captioner.info.mdp_layers) if captioner.uses_mdp else 0}); pass an M3Diff model")
    layers = tuple(captioner.info.mdp_layers)
    tick = progress or (lambda n: None)
    runs: dict[int | None, list[str]] = {}
    for layer in (None, *layers):
        knockout = MDPKnockout(scales=() if layer is None else (layer,))
        captions = []
        for s in range(0, len(pairs), batch_size):
            chunk = [(p.before, p.after) for p in pairs[s:s + batch_size]]
            captions += [d.caption for d in captioner.describe_batch(chunk, settings=settings, with_trace=False,
                                                                      knockout=knockout)]
            tick(len(chunk))
        runs[layer] = captions
    own = scorer is None
    scorer = scorer or CaptionScorer(ScorerConfig(meteor=False, spice=False))
    try:
        refs = [list(p.captions) for p in pairs]
        ids = [p.id for p in pairs]
        corpora = {k: scorer.prepare(ids, caps, refs) for k, caps in runs.items()}
    finally:
        if own:
            scorer.close()
    slices = {"all": list(range(len(pairs)))}
    for t in dict.fromkeys(t for p in pairs for t in p.change_types):
        slices[t] = [i for i, p in enumerate(pairs) if t in p.change_types]

    def cider(layer, idx, w=None):
        stats = corpora[layer].cider_stats.subset(np.asarray(idx))
        return 100.0 * stats.corpus(np.ones((1, len(idx))) if w is None else w)

    cider_delta: dict[int, dict[str, KnockoutDelta]] = {layer: {} for layer in layers}
    for name, idx in slices.items():
        w = _resamples(len(idx), bootstrap, seed, name)
        full = cider(None, idx)[0]
        full_draws = None if w is None else cider(None, idx, w)
        for layer in layers:
            d = cider(layer, idx)[0] - full
            lo, hi = (None, None) if w is None else _interval(cider(layer, idx, w) - full_draws)
            cider_delta[layer][name] = KnockoutDelta(float(d), lo, hi, len(idx))

    # change recall: per true change, named (1) or not (0); resampled by pair, as the pairs were drawn
    generated = [p for p in pairs if "regions" in p.extra and "objects" in p.extra]
    recall_delta: dict[int, dict[str, KnockoutDelta]] = {layer: {} for layer in layers}
    full_recall = None
    if generated:
        index = {p.id: i for i, p in enumerate(pairs)}
        hits = {k: [score_caption(caps[index[p.id]], p).truth for p in generated] for k, caps in runs.items()}
        all_hits = [h for row in hits[None] for h in row]
        full_recall = 100.0 * sum(h.recalled for h in all_hits) / len(all_hits) if all_hits else None
        for name in ["all", *[t for t in slices if t != "all"]]:
            # per pair: (true changes of the slice, recalled ones) for each run
            per_pair = {k: np.array([[sum(1 for h in row if name in ("all", h.type)),
                                      sum(h.recalled for h in row if name in ("all", h.type))] for row in rows], float)
                        for k, rows in hits.items()}
            totals = per_pair[None][:, 0]
            if totals.sum() == 0:
                continue
            keep = np.flatnonzero(totals > 0)
            w = _resamples(len(keep), bootstrap, seed, "recall/" + name)
            for layer in layers:
                diff = per_pair[layer][keep, 1] - per_pair[None][keep, 1]  # [n] recalled changes, ablated − full
                d = 100.0 * diff.sum() / totals[keep].sum()
                lo = hi = None
                if w is not None:
                    lo, hi = _interval(100.0 * (w @ diff) / (w @ totals[keep]))
                recall_delta[layer][name] = KnockoutDelta(float(d), lo, hi, int(totals[keep].sum()))
    full_cider = float(cider(None, slices["all"])[0])
    return KnockoutStudy(model_name, len(pairs), layers, full_cider, full_recall, cider_delta, recall_delta,
                         bootstrap, seed)


__all__ = ["ProbeRow", "PairProbe", "probe_pair", "probe_plan", "plan_note", "twin_row", "with_twin", "reencode",
           "word_diff", "caption_losses", "KnockoutDelta", "KnockoutStudy", "knockout_study"]
