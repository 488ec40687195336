"""Plotly figures shared by the app (Dashboard, Errors, Describe tabs) and the HTML reports.

Every function takes the analysis' own results (a run's ``analysis.breakdown.Breakdown``, numpy arrays)
and returns a ``plotly.graph_objects.Figure``; nothing here computes a metric.
"""
from __future__ import annotations

import html
from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

from analysis.breakdown import Breakdown
from m3diff.change_types import TYPE_IDS

def text(s) -> str:
    """A report's string as plotly text: plotly acts on <a href>, <b>, <i> and %{…} in labels and hovers,
    and a run name or a slice name may come from a visitor's upload."""
    return html.escape(str(s), quote=False).replace("%{", "%&#123;")


_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def slice_bars(runs: Mapping[str, Breakdown], metric: str = "CIDEr-D", table: str = "per_type",
               title: str | None = None) -> go.Figure:
    """Grouped bars of one metric per slice for one or more runs, with the bootstrap 95% interval.

    ``runs``: run name -> its Breakdown; ``table``: "per_type", "per_domain", "per_source" or
    "per_changes". The hover shows n, so small slices are visible as such.
    """
    names = _slice_order(runs, table)
    fig = go.Figure()
    for k, (run, bd) in enumerate(runs.items()):
        rows = getattr(bd, table)
        y, lo, hi, n = [], [], [], []
        for s in names:
            r = rows.get(s)
            v = None if r is None else r.scores.get(metric)
            ci = None if r is None else r.ci.get(metric)
            y.append(v)
            lo.append(None if v is None or ci is None else v - ci[0])
            hi.append(None if v is None or ci is None else ci[1] - v)
            n.append(0 if r is None else r.n)
        fig.add_bar(
            name=text(run), x=[text(s) for s in names], y=y, marker_color=_COLORS[k % len(_COLORS)], customdata=n,
            error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo, visible=any(v is not None for v in hi)),
            hovertemplate=f"{text(run)}<br>%{{x}}: %{{y:.1f}}<br>n = %{{customdata}}<extra></extra>",
        )
    label = {"per_type": "change type", "per_domain": "domain", "per_source": "source dataset"}.get(table, table)
    fig.update_layout(barmode="group", title=title or f"{metric} by {label} (x100, 95% bootstrap interval)",
                      xaxis_title=label, yaxis_title=metric, legend_title="run", template="plotly_white")
    return fig


def metrics_by_type(runs: Mapping[str, Breakdown], metric: str = "CIDEr-D") -> go.Figure:
    return slice_bars(runs, metric, "per_type")


def metrics_by_domain(runs: Mapping[str, Breakdown], metric: str = "CIDEr-D") -> go.Figure:
    return slice_bars(runs, metric, "per_domain")


def mdp_scores(layer_means: Mapping[int, float], per_channel: Mapping[int, np.ndarray] | None = None,
               title: str = "MDP Score per vision layer") -> go.Figure:
    """Bars of the mean MDP Score (eq. 7) per vision layer; with ``per_channel``, the distribution of
    the channel weights per layer as box plots beside them."""
    layers = sorted(layer_means)
    x = [f"L{i}" for i in layers]
    fig = go.Figure()
    fig.add_bar(x=x, y=[float(layer_means[i]) for i in layers], name="mean over channels",
                marker_color=_COLORS[0], hovertemplate="layer %{x}: %{y:.3f}<extra></extra>")
    if per_channel:
        for i in layers:
            if i in per_channel:
                fig.add_box(y=np.asarray(per_channel[i], dtype=float).ravel(), name=f"L{i}", x=[f"L{i}"] * np.asarray(per_channel[i]).size,
                            marker_color=_COLORS[1], boxpoints=False, showlegend=False, opacity=0.6)
    fig.update_layout(title=title, xaxis_title="vision encoder layer", yaxis_title="score (sigmoid)",
                      yaxis_range=[0, 1], template="plotly_white", showlegend=bool(per_channel))
    return fig


def _slice_order(runs, table):
    seen = []
    for bd in runs.values():
        for s in getattr(bd, table):
            if s not in seen:
                seen.append(s)
    if table == "per_type":
        return [t for t in TYPE_IDS if t in seen] + [s for s in seen if s not in TYPE_IDS]
    return sorted(seen)
