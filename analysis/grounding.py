"""Does the model read its images? Grounding checks for any captioner and any dataset with references.

A caption model can write fluent, frequent sentences while ignoring its input; caption metrics alone
do not show it. These checks do:

- **distinct captions**: the share of pairs whose (greedy) caption no other pair got; on generated data
  beside its ceiling, the share a describer reaches that says everything the references can say
  (pairs whose references state the same facts, e.g. two "the light is darker now" pairs or two
  no-change pairs, cannot be told apart in words);
- **answer loss** of each pair's reference with its own images, with the images of a random other
  pair, and with the images of another pair **of the same scene** — the honest "blind" gap: a
  random swap changes the whole scene, so a model that only recognises the backdrop passes it,
  while the same-scene swap keeps the backdrop and changes only what the caption is about;
- **identical images**: what the model says for a before image given twice (share of answers that
  say nothing changed).

A model that ignores its images has gaps near 0 and few distinct captions; ``GroundingChecks.flags``
names each check that fails its target.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

# What "nothing changed" sounds like in our references and in Spot-the-Diff's ("there is no difference")
_NO_CHANGE = re.compile(
    r"\b(no (visible |apparent )?(differences?|changes?)|nothing (has |was )?(been )?"
    r"(changed|different|moved|altered|added|removed)|(are|is|look|looks) (exactly )?(the same|identical)|"
    r"the same (scene|picture|image)|identical|unchanged|(cannot|can't|can not) see any change)\b",
    re.IGNORECASE,
)
# "... Nothing else changed." closes a caption that did describe a change; "nothing changed except
# the light" describes one
_ONLY_THE_REST = re.compile(r"\b(else|other|rest|apart from|otherwise|besides|except|but)\b", re.IGNORECASE)


def says_no_change(caption: str) -> bool:
    """Whether a caption says the two images do not differ: every sentence says so, and none is the
    closing remark of a caption that described a change ("nothing else changed")."""
    sentences = [s for s in re.split(r"[.!?;]+", caption or "") if s.strip()]
    return bool(sentences) and all(_NO_CHANGE.search(s) and not _ONLY_THE_REST.search(s) for s in sentences)


@dataclass(frozen=True)
class GroundingTargets:
    """What a model that reads its pair must reach (issue targets of the embedded model)."""

    distinct_share: float = 0.9
    same_scene_gap: float = 0.25  # loss with same-scene swapped images ≥ 25% above the true loss
    no_change_share: float = 0.9


@dataclass
class GroundingChecks:
    model: str
    n_pairs: int
    distinct_share: float
    loss_true: float
    loss_random_swap: float
    loss_same_scene_swap: float | None  # None when no scene of the set has two pairs
    loss_true_same_scene: float | None  # the true loss of the pairs that have a same-scene partner
    n_same_scene: int
    n_identical: int
    no_change_share: float | None  # None when no identical pairs were asked for
    distinct_ceiling: float | None = None  # the same share for the pairs' facts (generated data only)
    targets: GroundingTargets = field(default_factory=GroundingTargets)
    examples: list[dict] = field(default_factory=list)

    @property
    def random_gap(self) -> float:
        return self.loss_random_swap / self.loss_true - 1

    @property
    def same_scene_gap(self) -> float | None:
        if self.loss_same_scene_swap is None:
            return None
        return self.loss_same_scene_swap / self.loss_true_same_scene - 1

    @property
    def flags(self) -> list[str]:
        """One line per failed check (empty: the model passes every check it was given)."""
        t, out = self.targets, []
        if self.distinct_share < t.distinct_share:
            ceiling = "" if self.distinct_ceiling is None else f" (a describer stating the references' facts: " \
                                                               f"{self.distinct_ceiling:.0%})"
            out.append(f"distinct captions {self.distinct_share:.0%} < {t.distinct_share:.0%}{ceiling}")
        gap = self.same_scene_gap
        if gap is None:
            out.append("no same-scene swap possible (no scene has two pairs): grounding unmeasured")
        elif gap < t.same_scene_gap:
            out.append(f"same-scene swap raises the answer loss by {gap:+.1%} < {t.same_scene_gap:+.0%}")
        if self.no_change_share is not None and self.no_change_share < t.no_change_share:
            out.append(f"says 'no change' for {self.no_change_share:.0%} of identical pairs < {t.no_change_share:.0%}")
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(random_gap=self.random_gap, same_scene_gap=self.same_scene_gap, flags=self.flags,
                 passed=not self.flags)
        return d


def unique_share(keys) -> float:
    """The share of items whose key no other item has (the rule of the distinct-captions check)."""
    seen = Counter(keys)
    return sum(1 for k in keys if seen[k] == 1) / max(1, len(keys))


def swaps(pairs, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For each pair, the index of a random other pair, and of another pair of the same scene (-1: none)."""
    n = len(pairs)
    rng = np.random.default_rng([seed, 7])
    random = (np.arange(n) + rng.integers(1, max(2, n), size=n)) % max(1, n)  # never the pair itself
    by_scene: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_scene.setdefault(p.scene or f"#{i}", []).append(i)
    same = np.full(n, -1)
    for members in by_scene.values():
        if len(members) < 2:
            continue
        for j, i in enumerate(members):
            others = members[:j] + members[j + 1:]
            same[i] = others[int(rng.integers(len(others)))]
    return random, same


def answer_losses(captioner, images: list[tuple], answers: list[str], batch_size: int = 16) -> list[tuple[float, int]]:
    """Per pair, the summed cross-entropy of its answer (and end token) given its images, and the token count."""
    import torch  # lazy, with the model's modules: the web process reads grounding reports without torch

    from m3diff.processing import answer_cross_entropy  # lazy: it imports torch

    model = captioner.model
    out = []
    for s in range(0, len(images), batch_size):
        batch, _ = captioner.encode_pairs(images[s:s + batch_size], answers=answers[s:s + batch_size])
        with torch.inference_mode():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           pixel_values=batch["pixel_values"].to(model.dtype), image_sizes=batch["image_sizes"],
                           batch_num_images=batch["batch_num_images"], use_cache=False).logits
        sums, counts = answer_cross_entropy(logits, batch["labels"])
        out += list(zip(sums.tolist(), counts.tolist()))
    return out


def _mean(per_pair: list[tuple[float, int]], rows) -> float:
    """Per-token mean over the chosen pairs."""
    return sum(per_pair[i][0] for i in rows) / sum(per_pair[i][1] for i in rows)


def reference_answer(captioner, pair) -> str:
    """The answer whose loss the checks compare: the pair's first reference."""
    return pair.captions[0]


def check_grounding(captioner, pairs, *, model_name: str = "", identical: int = 100, batch_size: int = 16,
                    max_new_tokens: int = 128, seed: int = 0, targets: GroundingTargets = GroundingTargets(),
                    progress=None, loss_fn=answer_losses, facts=None) -> GroundingChecks:
    """Run every check on ``pairs`` (DiffPairs with images, references and scenes).

    ``loss_fn(captioner, images, answers, batch_size) -> [(summed loss, tokens)] per pair`` scores
    references given image pairs; the default runs the captioner's model on its answer tokens.
    ``facts``: per pair, a hashable key of what its references can say (the generator's ``pair_facts``),
    for the distinct-captions ceiling; None where the data does not know it.
    """
    from m3diff.describing import GenerationSettings  # lazy: torch, as above

    if len(pairs) < 2:
        raise ValueError(f"grounding checks need at least 2 pairs, got {len(pairs)}")
    if facts is not None and len(facts) != len(pairs):
        raise ValueError(f"facts for {len(facts)} pairs, but {len(pairs)} pairs to check")
    tick = progress or (lambda what, n: None)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    true_images = [(p.before, p.after) for p in pairs]
    captions = []
    for s in range(0, len(pairs), batch_size):
        chunk = true_images[s:s + batch_size]
        captions += [d.caption for d in captioner.describe_batch(chunk, with_trace=False, settings=settings)]
        tick("describe", len(chunk))
    distinct = unique_share(captions)

    answers = [reference_answer(captioner, p) for p in pairs]
    random, same = swaps(pairs, seed)
    everyone = range(len(pairs))
    loss_true = loss_fn(captioner, true_images, answers, batch_size)
    tick("loss", len(pairs))
    loss_random = loss_fn(captioner, [true_images[j] for j in random], answers, batch_size)
    tick("loss", len(pairs))
    has_same = [i for i in everyone if same[i] >= 0]
    loss_same = own_same = None
    if has_same:
        # compared with the true loss of the same pairs, so both means cover the same captions
        swapped = loss_fn(captioner, [true_images[same[i]] for i in has_same], [answers[i] for i in has_same],
                          batch_size)
        loss_same, own_same = _mean(swapped, range(len(has_same))), _mean(loss_true, has_same)
    tick("loss", len(pairs))

    no_change, n_identical = None, min(identical, len(pairs))
    if n_identical:
        twice = [(p.before, p.before) for p in pairs[:n_identical]]
        said = []
        for s in range(0, n_identical, batch_size):
            said += [d.caption for d in captioner.describe_batch(twice[s:s + batch_size], with_trace=False,
                                                                 settings=settings)]
            tick("identical", len(twice[s:s + batch_size]))
        no_change = sum(map(says_no_change, said)) / n_identical
    examples = [{"id": p.id, "caption": c, "reference": p.captions[0]} for p, c in list(zip(pairs, captions))[:5]]
    return GroundingChecks(
        model=model_name, n_pairs=len(pairs), distinct_share=distinct, loss_true=_mean(loss_true, everyone),
        loss_random_swap=_mean(loss_random, everyone), loss_same_scene_swap=loss_same,
        loss_true_same_scene=own_same,
        n_same_scene=len(has_same), n_identical=n_identical, no_change_share=no_change,
        distinct_ceiling=None if facts is None else unique_share(facts), targets=targets,
        examples=examples,
    )


