"""Corpus metrics for many weighted resamples of a subset at once (for bootstrap intervals).

A bootstrap resample is a vector of counts w (how often each pair was drawn). Re-running
pycocoevalcap a thousand times per slice would take minutes, so each metric is rewritten here in
terms of per-pair sufficient statistics, and a batch of resamples becomes a few matrix products:

- BLEU: corpus BLEU depends only on the summed lengths and n-gram match counts.
- METEOR: the jar's aggregate is its scoring formula applied to the summed SCORE statistics
  (Meteor 1.5, ``-l en -norm``: alpha 0.85, beta 0.2, gamma 0.6, delta 0.75, module weights
  1.0/0.6/0.8/0.6); tests check it against the jar.
- CIDEr-D: the document frequencies are recomputed from each resample's references (a pair drawn
  twice counts twice, as it would if pycocoevalcap were given it twice), so the idf weights change
  per resample; every term of pycocoevalcap's cosine is linear in the squared idf weights.
- ROUGE-L and SPICE: means of per-pair scores.
With all weights equal to one each function reproduces pycocoevalcap's number (tests: to 1e-9).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse

_TINY, _SMALL = 1e-15, 1e-9  # pycocoevalcap's BleuScorer constants


def bleu(stats: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Corpus BLEU-1..4 per resample. stats [N, 10], weights [B, N] -> [B, 4] (not x100)."""
    tot = weights @ stats  # [B, 10]
    testlen, reflen = tot[:, 0], tot[:, 1]
    guess, correct = tot[:, 2:6], tot[:, 6:10]
    ratio = (correct + _TINY) / (guess + _SMALL)  # [B, 4]
    cum = np.cumprod(ratio, axis=1)
    out = cum ** (1.0 / np.arange(1, 5))
    lr = (testlen + _TINY) / (reflen + _SMALL)
    bp = np.where(lr < 1, np.exp(1 - 1 / np.minimum(lr, 1)), 1.0)
    return out * bp[:, None]


METEOR_PARAMS = dict(alpha=0.85, beta=0.20, gamma=0.60, delta=0.75, weights=(1.0, 0.60, 0.80, 0.60))


def parse_meteor_stats(lines: list[str]) -> np.ndarray:
    """The jar's SCORE answers as a [N, 23] array."""
    arr = np.array([[float(x) for x in line.split()] for line in lines], dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 23:
        raise ValueError(f"unexpected METEOR statistics shape {arr.shape}; expected [N, 23] (Meteor 1.5)")
    return arr


def meteor(stats: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Aggregate METEOR per resample from the summed SCORE statistics. stats [N, 23] -> [B]."""
    p = METEOR_PARAMS
    s = weights @ stats  # [B, 23]
    t_len, r_len, t_fun, r_fun = s[:, 0], s[:, 1], s[:, 2], s[:, 3]
    stages = s[:, 4:20].reshape(-1, 4, 4)  # [B, stage, (test content, ref content, test fn, ref fn)]
    w = np.asarray(p["weights"])
    d = p["delta"]
    t_m = (w * (d * stages[:, :, 0] + (1 - d) * stages[:, :, 2])).sum(1)
    r_m = (w * (d * stages[:, :, 1] + (1 - d) * stages[:, :, 3])).sum(1)
    t_wl = d * (t_len - t_fun) + (1 - d) * t_fun
    r_wl = d * (r_len - r_fun) + (1 - d) * r_fun
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(t_wl > 0, t_m / t_wl, 0.0)
        rec = np.where(r_wl > 0, r_m / r_wl, 0.0)
        fmean = np.where((prec > 0) & (rec > 0), prec * rec / (p["alpha"] * prec + (1 - p["alpha"]) * rec), 0.0)
        chunks, t_wm, r_wm = s[:, 20], s[:, 21], s[:, 22]
        avg_m = (t_wm + r_wm) / 2
        frag = np.where((t_wm == t_len) & (r_wm == r_len) & (chunks == 1), 0.0,
                        np.where(avg_m > 0, chunks / avg_m, 0.0))
    return fmean * (1 - p["gamma"] * frag ** p["beta"])


@dataclass
class CiderStats:
    """pycocoevalcap's CIDEr-D (n=4, sigma=6) as sparse matrices over one n-gram vocabulary."""

    presence: sparse.csr_matrix  # [N, V] 1 where the n-gram occurs in any reference of the pair
    a_num: sparse.csr_matrix  # [R*4, V] min(h, r) * r for every (reference, order)
    a_ref: sparse.csr_matrix  # [R*4, V] r^2
    a_hyp: sparse.csr_matrix  # [N*4, V] h^2
    ref_item: np.ndarray  # [R] the pair each reference belongs to
    penalty: np.ndarray  # [R] Gaussian length penalty of (hypothesis, reference)
    n_refs: np.ndarray  # [N]

    @classmethod
    def build(cls, crefs: list, ctest: list, sigma: float = 6.0) -> "CiderStats":
        vocab: dict = {}
        col = lambda g: vocab.setdefault(g, len(vocab))  # noqa: E731
        pres_r, pres_c = [], []
        num_r, num_c, num_v, ref_r, ref_c, ref_v = [], [], [], [], [], []
        hyp_r, hyp_c, hyp_v = [], [], []
        ref_item, penalty, n_refs = [], [], []
        r = 0
        for i, (refs, hyp) in enumerate(zip(crefs, ctest)):
            seen = set()
            # pycocoevalcap's "length" counts bigrams (its n == 1 is the second order); kept as is
            h_len = sum(c for g, c in hyp.items() if len(g) == 2)
            for g, c in hyp.items():
                hyp_r.append(4 * i + len(g) - 1), hyp_c.append(col(g)), hyp_v.append(float(c) ** 2)
            for ref in refs:
                for g, c in ref.items():
                    j = col(g)
                    seen.add(j)
                    ref_r.append(4 * r + len(g) - 1), ref_c.append(j), ref_v.append(float(c) ** 2)
                    hc = hyp.get(g, 0)
                    if hc:
                        num_r.append(4 * r + len(g) - 1), num_c.append(j), num_v.append(float(min(hc, c) * c))
                r_len = sum(c for g, c in ref.items() if len(g) == 2)
                penalty.append(math.exp(-((h_len - r_len) ** 2) / (2 * sigma ** 2)))
                ref_item.append(i)
                r += 1
            n_refs.append(len(refs))
            pres_r.extend([i] * len(seen)), pres_c.extend(seen)
        n, v = len(crefs), len(vocab)
        mk = lambda rows, cols, vals, shape: sparse.csr_matrix((vals, (rows, cols)), shape=shape)  # noqa: E731
        return cls(
            presence=mk(pres_r, pres_c, np.ones(len(pres_r)), (n, v)),
            a_num=mk(num_r, num_c, num_v, (4 * r, v)),
            a_ref=mk(ref_r, ref_c, ref_v, (4 * r, v)),
            a_hyp=mk(hyp_r, hyp_c, hyp_v, (4 * n, v)),
            ref_item=np.asarray(ref_item), penalty=np.asarray(penalty), n_refs=np.asarray(n_refs),
        )

    def subset(self, idx) -> "CiderStats":
        """The statistics of a subset of pairs, columns cut to the n-grams the subset uses."""
        idx = np.asarray(idx)
        ref_rows = np.flatnonzero(np.isin(self.ref_item, idx))
        rows4 = (4 * ref_rows[:, None] + np.arange(4)).ravel()
        hyp4 = (4 * idx[:, None] + np.arange(4)).ravel()
        pres, a_hyp = self.presence[idx], self.a_hyp[hyp4]
        cols = np.union1d(pres.indices, a_hyp.indices)
        pos = {int(k): j for j, k in enumerate(idx)}
        new_item = np.array([pos[int(k)] for k in self.ref_item[ref_rows]], dtype=int)
        return CiderStats(
            presence=pres[:, cols], a_num=self.a_num[rows4][:, cols], a_ref=self.a_ref[rows4][:, cols],
            a_hyp=a_hyp[:, cols], ref_item=new_item, penalty=self.penalty[ref_rows], n_refs=self.n_refs[idx],
        )

    def per_pair(self, weights: np.ndarray) -> np.ndarray:
        """Per-pair CIDEr-D under each resample's document frequencies. weights [B, N] -> [B, N].

        Weights are draw counts (integers), so every document frequency is an integer <= the number
        of documents and the squared idf weight is a table look-up.
        """
        weights = np.atleast_2d(np.asarray(weights, dtype=float))
        totals = weights.sum(1)
        if not np.allclose(totals, totals[0]) or not np.allclose(weights, np.round(weights)):
            raise ValueError("resample weights must be integer draw counts with the same total")
        total = int(round(totals[0]))
        k = np.arange(total + 1)
        table = (np.log(float(total)) - np.log(np.maximum(1.0, k))) ** 2  # squared idf by df
        df = self.presence.T @ weights.T  # [V, B]
        w2 = table[np.rint(df).astype(np.intp)]  # [V, B]
        b = weights.shape[0]
        n_r = len(self.ref_item)
        num = np.asarray(self.a_num @ w2).reshape(n_r, 4, b)  # [R, 4, B]
        nref = np.sqrt(np.asarray(self.a_ref @ w2)).reshape(n_r, 4, b)
        nhyp = np.sqrt(np.asarray(self.a_hyp @ w2)).reshape(-1, 4, b)[self.ref_item]  # [R, 4, B]
        denom = nhyp * nref
        val = np.where(denom != 0, num / np.where(denom != 0, denom, 1.0), num)
        val = val.mean(1) * self.penalty[:, None]  # [R, B]
        per_item = np.zeros((len(self.n_refs), b))
        np.add.at(per_item, self.ref_item, val)
        return (per_item / self.n_refs[:, None] * 10.0).T

    def corpus(self, weights: np.ndarray, batch: int = 64) -> np.ndarray:
        """Corpus CIDEr-D per resample. weights [B, N] -> [B] (not x100)."""
        weights = np.atleast_2d(np.asarray(weights, dtype=float))
        out = np.empty(weights.shape[0])
        for s in range(0, weights.shape[0], batch):  # bounds the dense [batch, V] idf matrix
            w = weights[s:s + batch]
            out[s:s + batch] = (w * self.per_pair(w)).sum(1) / w.sum(1)
        return out
