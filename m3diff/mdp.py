"""Multi-scale Differential Perception (MDP), equations (1)–(8) of the OmniDiff paper (Sec. 4.2).

For each scale i (a vision-tower layer) and the token features F1, F2 [B, N, d] of the two images:

    (1) λ1 = σ(W_m [F1 ‖ F2]),  λ2 = σ(W_m [F2 ‖ F1])         ‖ on channels, W_m shared
    (2) F̂k = Fk ⊙ λk
    (3) ΔF = W_p [F̂1 ‖ F̂2 ‖ (F̂1 − F̂2)]                       ‖ on channels
    (4) ΔF_sa = SA(ΔF)
    (5) ΔF_ca = MLP(CA(q = ΔF_sa, kv = [F1 ‖ F2 ‖ ΔF_sa]))     ‖ on tokens
    (6) F̃k = CA(q = Fk, kv = [Fk ‖ ΔF_ca])                     ‖ on tokens
    (7) Score_i = σ(MLP(Mean_tokens([F̃1 ‖ F̃2 ‖ ΔF])))          a d-dim channel weight
    (8) F'k = Σ_i Score_i ⊙ F̃k_i

Decisions where the paper is silent (see shared/PAPER.md §3):
- "MDP has two stacked transformer layers": eqs (1)–(6) form one layer (`MDPLayer`); ``depth`` of
  them are stacked per scale, the F̃1, F̃2 of one feeding the next. Eq. (7) reads the last layer's
  F̃k and ΔF. Every scale has its own weights.
- Like every transformer layer, (4)–(6) use pre-LayerNorms and residual connections, and the MLP of
  (5) is residual around the cross-attention's output.
- Score's last bias starts at logit(1/L) so that at initialisation eq. (8) is the mean over the L
  scales: a freshly added MDP hands the projector features of the usual magnitude.

Ablations (``MDPKnockout``, one per call or one per pair, never stored on the module so concurrent
calls cannot see each other's): a scale knocked out gets Score 0 in eq. (8) and the remaining scales are
renormalised channel-wise so the total weight Σ_i Score_i stays what the model computed; ``zero_delta``
replaces ΔF of eq. (3) by zeros in every layer of every scale (eqs. 4–7 then read no difference).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init

from m3diff.describing import MDPKnockout, PairTrace


class MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim))


class Attention(nn.Module):
    """Multi-head attention that returns head-averaged weights only when asked (tracing is free otherwise)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, query, key_value, need_weights: bool = False, eager: bool = False):
        # need_weights takes MultiheadAttention's explicit path (matmuls and a softmax) instead of fused
        # SDPA; ``eager`` takes it without returning them: with the embedded model's 32-wide heads and
        # 64-192 tokens a CPU training step is faster that way (benchmarks/bench_train_settings.py)
        out, weights = self.attn(query, key_value, key_value, need_weights=need_weights or eager,
                                 average_attn_weights=True)
        return out, weights if need_weights else None  # [B, Nq, d], [B, Nq, Nkv] or None


class MDPLayer(nn.Module):
    """One MDP transformer layer: equations (1)–(6)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.W_m = nn.Linear(2 * dim, dim, bias=False)  # eq. (1), shared by both orders
        self.W_p = nn.Linear(3 * dim, dim, bias=False)  # eq. (3)
        self.norm_sa = nn.LayerNorm(dim)
        self.SA = Attention(dim, num_heads)  # eq. (4)
        self.norm_ca_q = nn.LayerNorm(dim)
        self.norm_ca_kv = nn.LayerNorm(dim)
        self.CA_delta = Attention(dim, num_heads)  # eq. (5)
        self.norm_mlp = nn.LayerNorm(dim)
        self.MLP = MLP(dim, int(dim * mlp_ratio))  # eq. (5)
        self.norm_img_q = nn.LayerNorm(dim)
        self.norm_img_kv = nn.LayerNorm(dim)
        self.CA_image = Attention(dim, num_heads)  # eq. (6), shared by k = 1, 2

    def gates(self, F1, F2):
        """Eq. (1): λ1, λ2 in (0, 1), [B, N, d] each; swapping the images swaps them."""
        return torch.sigmoid(self.W_m(torch.cat([F1, F2], -1))), torch.sigmoid(self.W_m(torch.cat([F2, F1], -1)))

    def delta(self, F1, F2):
        """Eqs. (1)–(3): the difference features ΔF [B, N, d]."""
        l1, l2 = self.gates(F1, F2)
        H1, H2 = F1 * l1, F2 * l2  # eq. (2)
        return self.W_p(torch.cat([H1, H2, H1 - H2], -1))  # eq. (3)

    def forward(self, F1, F2, with_trace: bool = False, eager: bool = False, delta_keep=None):
        """``delta_keep``: [B, 1, 1], 0 where a pair's ΔF is zeroed (an ablation; None: none is)."""
        N = F1.shape[1]
        dF = self.delta(F1, F2)  # [B, N, d]
        if delta_keep is not None:
            dF = dF * delta_keep.to(dF.dtype)  # a bf16 model stays bf16
        x = self.norm_sa(dF)
        dF_sa = dF + self.SA(x, x, eager=eager)[0]  # eq. (4)
        kv = self.norm_ca_kv(torch.cat([F1, F2, dF_sa], 1))  # [B, 3N, d]
        ca, w5 = self.CA_delta(self.norm_ca_q(dF_sa), kv, need_weights=with_trace, eager=eager)
        h = dF_sa + ca
        dF_ca = h + self.MLP(self.norm_mlp(h))  # eq. (5)
        outs, w6 = [], []
        for Fk in (F1, F2):
            kv = self.norm_img_kv(torch.cat([Fk, dF_ca], 1))  # [B, 2N, d]
            a, w = self.CA_image(self.norm_img_q(Fk), kv, need_weights=with_trace, eager=eager)
            outs.append(Fk + a)  # eq. (6)
            w6.append(w)
        maps = None
        if with_trace:
            # eq. (5): how much the difference queries draw from each patch of image 1 and image 2
            eq5 = torch.stack([w5[:, :, :N].mean(1), w5[:, :, N : 2 * N].mean(1)], 1)  # [B, 2, N]
            # eq. (6): how much each patch of image k draws from the difference tokens
            eq6 = torch.stack([w[:, :, N:].sum(-1) for w in w6], 1)  # [B, 2, N]
            maps = (eq5, eq6)
        return outs[0], outs[1], dF, maps


class Score(nn.Module):
    """Eq. (7): a per-scale channel weight in (0, 1)^d from the mean token of [F̃1 ‖ F̃2 ‖ ΔF].

    The MLP's output bias is a parameter of this module so that transformers' weight initialisation
    reaches it (it skips modules that own no parameters) and can set it to logit(1/L).
    """

    def __init__(self, dim: int, num_scales: int):
        super().__init__()
        self.num_scales = num_scales
        self.fc1 = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim, dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(dim))
        self.reset_bias()

    def reset_bias(self):
        # logit(1/L): eq. (8) starts as the mean over scales (see the module docstring)
        value = -math.log(self.num_scales - 1) if self.num_scales > 1 else 4.0
        with torch.no_grad():
            init.constant_(self.bias, value)  # transformers' init: leaves a bias loaded from a checkpoint alone

    def forward(self, F1t, F2t, dF):
        pooled = torch.cat([F1t, F2t, dF], 1).mean(1)  # Mean_tokens, [B, d]
        return torch.sigmoid(self.fc2(self.act(self.fc1(pooled))) + self.bias)  # [B, d]


class MDPScale(nn.Module):
    """The MDP at one scale: ``depth`` stacked layers (eqs. 1–6) and its Score (eq. 7)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, depth: int, num_scales: int):
        super().__init__()
        self.layers = nn.ModuleList(MDPLayer(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.score = Score(dim, num_scales)

    def forward(self, F1, F2, with_trace: bool = False, eager: bool = False, delta_keep=None):
        for layer in self.layers:
            F1, F2, dF, maps = layer(F1, F2, with_trace=with_trace, eager=eager, delta_keep=delta_keep)
        return F1, F2, self.score(F1, F2, dF), dF, maps


def _knockout_masks(knockout, batch: int, layer_ids: tuple[int, ...], device):
    """(keep [B, L] 1/0 per pair and scale, delta_keep [B, 1, 1]) or (None, None) when nothing is ablated."""
    per_pair = [knockout] * batch if knockout is None or isinstance(knockout, MDPKnockout) else list(knockout)
    if len(per_pair) != batch:
        raise ValueError(f"{len(per_pair)} knockouts for a batch of {batch} pairs; give one, or one per pair")
    per_pair = [k or MDPKnockout() for k in per_pair]
    if not any(k.active for k in per_pair):
        return None, None
    for k in per_pair:
        unknown = [s for s in k.scales if s not in layer_ids]
        if unknown:
            raise ValueError(f"cannot knock out layer(s) {unknown}: the MDP scales are layers {list(layer_ids)}")
        if len(k.scales) == len(layer_ids):
            raise ValueError(f"knocking out every MDP scale ({list(layer_ids)}) leaves eq. (8) nothing to weigh; "
                             "keep at least one")
    keep = torch.tensor([[0.0 if l in k.scales else 1.0 for l in layer_ids] for k in per_pair], device=device)
    delta_keep = torch.tensor([0.0 if k.zero_delta else 1.0 for k in per_pair], device=device)[:, None, None]
    return keep, (delta_keep if any(k.zero_delta for k in per_pair) else None)


@dataclass
class MDPTrace:
    """What the MDP saw, batched and detached on the CPU. ``g`` is the patch-grid side (N = g²).

    scores:      [B, L, d]    eq. (7) per scale (L = number of MDP scales): the weights eq. (8) applied,
                              so 0 for a knocked-out scale and the others renormalised
    delta_norm:  [B, L, g, g] per-patch L2 norm of ΔF, eq. (3), of each scale's last layer
    attn_eq5:    [B, L, 2, g, g] attention of the difference queries onto image 1 / image 2 patches
    attn_eq6:    [B, L, 2, g, g] attention of each image's patches onto the difference tokens
    """

    layers: tuple[int, ...]
    scores: torch.Tensor
    delta_norm: torch.Tensor
    attn_eq5: torch.Tensor
    attn_eq6: torch.Tensor

    @property
    def score_means(self) -> torch.Tensor:
        return self.scores.mean(-1)  # [B, L]

    def pair(self, b: int) -> PairTrace:
        """One pair's trace as plain numpy, keyed by vision layer, for the pipeline and everything after it."""
        by_layer = lambda t: {l: t[b, i].numpy() for i, l in enumerate(self.layers)}  # noqa: E731
        return PairTrace(
            layers=tuple(self.layers),
            score_mean={l: float(self.score_means[b, i]) for i, l in enumerate(self.layers)},
            score=by_layer(self.scores), delta_norm=by_layer(self.delta_norm),
            attn_eq5=by_layer(self.attn_eq5), attn_eq6=by_layer(self.attn_eq6),
        )


class MultiScaleDifferentialPerception(nn.Module):
    """MDP: hidden states of L vision layers for both images of each pair → fused F'1, F'2 (eq. 8)."""

    def __init__(self, dim: int, layers, num_heads: int, mlp_ratio: float = 4.0, depth: int = 2):
        super().__init__()
        self.layer_ids = tuple(int(i) for i in layers)
        L = len(self.layer_ids)
        self.scales = nn.ModuleList(MDPScale(dim, num_heads, mlp_ratio, depth, L) for _ in range(L))

    def forward(self, hidden_1, hidden_2, with_trace: bool = False, eager: bool = False,
                knockout: MDPKnockout | Sequence[MDPKnockout | None] | None = None):
        """``hidden_k``: one [B, N, d] tensor per scale for image k. Returns F'1, F'2 [B, N, d] and a trace.
        ``eager``: explicit attention instead of fused SDPA (the model's ``attn_implementation``).
        ``knockout``: an ablation for every pair, or one per pair (see ``MDPKnockout``)."""
        keep, delta_keep = _knockout_masks(knockout, hidden_1[0].shape[0], self.layer_ids, hidden_1[0].device)
        outs, scores, norms, eq5, eq6 = [], [], [], [], []
        for scale, F1, F2 in zip(self.scales, hidden_1, hidden_2, strict=True):
            F1t, F2t, score, dF, maps = scale(F1, F2, with_trace=with_trace, eager=eager, delta_keep=delta_keep)
            outs.append((F1t, F2t))
            scores.append(score)  # [B, d]
            if with_trace:
                norms.append(dF.norm(dim=-1))
                eq5.append(maps[0])
                eq6.append(maps[1])
        if keep is not None:
            raw = torch.stack(scores, 1)  # [B, L, d]
            kept = raw * keep[:, :, None].to(raw.dtype)
            # renormalised so each channel's total weight is the model's own (eq. 8 has no softmax to do it)
            kept = kept * (raw.sum(1, keepdim=True) / kept.sum(1, keepdim=True).clamp_min(1e-12))
            scores = list(kept.unbind(1))
        fused_1 = fused_2 = 0
        for (F1t, F2t), score in zip(outs, scores):
            w = score.unsqueeze(1)  # [B, 1, d]
            fused_1 = fused_1 + w * F1t  # eq. (8)
            fused_2 = fused_2 + w * F2t
        mdp_trace = None
        if with_trace:
            B, N = hidden_1[0].shape[:2]
            g = math.isqrt(N)
            grid = lambda t: t.detach().float().cpu().reshape(*t.shape[:-1], g, g)  # noqa: E731
            mdp_trace = MDPTrace(
                layers=self.layer_ids,
                scores=torch.stack(scores, 1).detach().float().cpu(),
                delta_norm=grid(torch.stack(norms, 1)),
                attn_eq5=grid(torch.stack(eq5, 1)),
                attn_eq6=grid(torch.stack(eq6, 1)),
            )
        return fused_1, fused_2, mdp_trace


__all__ = ["MultiScaleDifferentialPerception", "MDPLayer", "MDPScale", "Score", "MDPTrace", "MDPKnockout"]
