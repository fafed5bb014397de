"""HTML + markdown evaluation report with matplotlib plots.

``write_report(df, out)`` writes ``out/report.html`` (self-contained: plots embedded as base64
PNG), ``out/report.md`` (plots referenced as files beside it), ``out/comparison.json`` (the
schema of :mod:`lbm.eval.compare`) and the PNGs. Plots follow the TRI LBM study's presentation
(arXiv 2507.05331): success with intervals per task and shift, Beta(1+s, 1+f) posterior violins
labelled with compact letters, and data-efficiency curves when records carry ``data_fraction``
(and optionally ``arm``, e.g. finetuned / scratch).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lbm import stats
from lbm.eval.compare import cell_label, compare_records
from lbm.eval.records import cells

# One fixed colour per policy (sorted by name) so every plot of a report agrees.
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
MAX_VIOLIN_CELLS = 24  # beyond this the per-cell violin grid is unreadable; the aggregate plot remains


Section = tuple[str, list[str], list[list[str]]]
"""An extra table for the top of a report: (title, header, rows of cell strings)."""


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (imported only when a report draws)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def palette(names: list[str]) -> dict[str, str]:
    """One palette colour per name, in sorted order: the same name gets the same colour in every plot."""
    return {p: _PALETTE[i % len(_PALETTE)] for i, p in enumerate(sorted(names))}


def plot_success(result: dict, path: Path) -> Path:
    """Dot-and-whisker plot: success rate with its interval per task (rows), policy (colour), shift (panel)."""
    plt = pyplot()

    succ = pd.DataFrame(result["success"])
    shifts = sorted(succ["shift"].unique(), key=lambda s: (s != "none", s))
    tasks = sorted(succ["task"].unique())
    pols = result["policies"]
    colors = palette(pols)
    height = 1.2 + 0.28 * len(tasks) * max(1, len(pols)) ** 0.5
    fig, axes = plt.subplots(1, len(shifts), figsize=(3.6 * len(shifts) + 1.6, height), sharey=True, squeeze=False)
    offsets = np.linspace(-0.3, 0.3, len(pols)) if len(pols) > 1 else np.zeros(1)
    for ax, shift in zip(axes[0], shifts):
        for off, pol in zip(offsets, pols):
            d = succ[(succ["shift"] == shift) & (succ["policy"] == pol)].set_index("task").reindex(tasks)
            y = np.arange(len(tasks)) + off
            ax.errorbar(
                d["rate"],
                y,
                xerr=[d["rate"] - d["lo"], d["hi"] - d["rate"]],
                fmt="o",
                ms=4,
                color=colors[pol],
                capsize=2,
                lw=1,
                label=pol,
            )
        ax.set_title("nominal" if shift == "none" else shift, fontsize=10)
        ax.set_xlim(-0.02, 1.02)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("success rate")
    axes[0][0].set_yticks(np.arange(len(tasks)), tasks, fontsize=8)
    axes[0][0].invert_yaxis()
    s = result["settings"]
    fig.suptitle(f"Success per task ({s['interval']} {100 * s['confidence']:g}% intervals)", fontsize=11)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_violins(result: dict, path: Path, samples: int = 10_000) -> Path | None:
    """Beta(1+s, 1+f) posterior violins per cell (10,000 draws each), with compact letters above."""
    plt = pyplot()

    succ = pd.DataFrame(result["success"])
    cells = result["cells"]
    if len(cells) > MAX_VIOLIN_CELLS:
        return None
    pols = result["policies"]
    colors = palette(pols)
    ncol = min(4, len(cells))
    nrow = int(np.ceil(len(cells) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.0 + 0.75 * len(pols) * ncol + 0.8, 2.9 * nrow), squeeze=False, sharey=True)
    for ax, cell in zip(axes.ravel(), cells):
        d = succ[(succ["task"] == cell["task"]) & (succ["shift"] == cell["shift"])]
        d = d.sort_values(["rate", "policy"], ascending=[False, True])
        draws = [stats.beta_posterior(int(r.successes), int(r.n)).samples(samples, seed=i) for i, r in enumerate(d.itertuples())]
        parts = ax.violinplot(draws, showmeans=False, showextrema=False, widths=0.8)
        for body, pol in zip(parts["bodies"], d["policy"]):
            body.set_facecolor(colors[pol])
            body.set_alpha(0.55)
        x = np.arange(1, len(d) + 1)
        ax.scatter(x, d["post_mean"], color="k", s=10, zorder=3)
        for xi, r in zip(x, d.itertuples()):
            ax.text(xi, 1.03, r.letters, ha="center", va="bottom", fontsize=9, fontweight="bold")
        ax.set_xticks(x, d["policy"], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.13)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_title(cell_label(cell["task"], cell["shift"]), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.ravel()[len(cells) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("success rate")
    fig.suptitle(
        "Posterior of the success rate, Beta(1+s, 1+f); letters: no shared letter = significantly different", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_aggregate(result: dict, path: Path) -> Path:
    """Mean and IQM across cells with stratified bootstrap intervals and across-task letters."""
    plt = pyplot()

    agg = pd.DataFrame(result["aggregate"]["policies"]).sort_values(["mean", "policy"], ascending=[False, True])
    colors = palette(result["policies"])
    fig, axes = plt.subplots(1, 2, figsize=(2.2 + 1.1 * len(agg), 3.3), sharey=True)
    for ax, key, name in ((axes[0], "mean", "mean success"), (axes[1], "iqm", "IQM")):
        x = np.arange(len(agg))
        ax.bar(x, agg[key], color=[colors[p] for p in agg["policy"]], alpha=0.75)
        ax.errorbar(
            x, agg[key], yerr=[agg[key] - agg[f"{key}_lo"], agg[f"{key}_hi"] - agg[key]], fmt="none", color="k", capsize=3, lw=1
        )
        if key == "mean":
            for xi, let in zip(x, agg["letters"]):
                ax.text(xi, 1.03, let, ha="center", fontsize=9, fontweight="bold")
        ax.set_xticks(x, agg["policy"], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.13)
        ax.set_title(f"{name} across {len(result['cells'])} cells", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_data_efficiency(df: pd.DataFrame, path: Path, confidence: float = 0.95) -> Path | None:
    """Mean success across cells vs ``data_fraction`` per ``arm`` (or policy), with stratified Wilson bands."""
    if "data_fraction" not in df.columns:
        return None
    plt = pyplot()

    group = "arm" if "arm" in df.columns else "policy"
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    colors = palette(sorted(df[group].astype(str).unique()))
    for name, g in df.groupby(df[group].astype(str)):
        pts = []
        for frac, gf in g.groupby("data_fraction"):
            # One curve point = one set of policies at a fraction, their cells pooled.
            m = stats.stratified_mean(cells(gf.assign(policy=str(name)), str(name)), confidence)
            pts.append((float(str(frac)), m.value, m.lo, m.hi))
        pts.sort()
        x, y, lo, hi = map(np.array, zip(*pts))
        ax.plot(x, y, "o-", color=colors[name], label=name)
        ax.fill_between(x, lo, hi, color=colors[name], alpha=0.2)
    ax.set_xlabel("fraction of task demonstrations")
    ax.set_ylabel("mean success")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"Data efficiency ({100 * confidence:g}% stratified Wilson bands)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    df: pd.DataFrame,
    out: Path,
    alpha: float = 0.05,
    test: str = "boschloo",
    correction: str = "holm",
    confidence: float = 0.95,
    title: str = "lbm evaluation report",
    sections: Sequence[Section] = (),
    notes: Sequence[str] = (),
    figures_first: Sequence[tuple[str, Path]] = (),
) -> list[Path]:
    """Write report.html (self-contained), report.md, comparison.json and the PNG plots into ``out``.

    ``df`` is a validated records table (:func:`lbm.eval.records.load_records`). Returns the paths
    written. Statistics: :func:`lbm.eval.compare.compare_records`. ``sections`` (title, header,
    rows) are tables a caller such as ``lbm study`` puts first; ``notes`` are extra warnings;
    ``figures_first`` (caption, PNG path) are the caller's plots, shown before the evaluation's.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if "data_fraction" in df.columns:
        # Different data fractions are different policies for the comparison tables.
        name = df["policy"].astype(str) + "@" + df["data_fraction"].astype(str)
        cmp_df = df.assign(policy=name) if df.groupby("policy")["data_fraction"].nunique().max() > 1 else df
    else:
        cmp_df = df
    result = compare_records(cmp_df, test=test, correction=correction, alpha=alpha, confidence=confidence)
    result["warnings"] = [*notes, *result["warnings"]]
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    figures: list[tuple[str, Path]] = [*figures_first, ("Success per task and shift", plot_success(result, out / "success.png"))]
    v = plot_violins(result, out / "posteriors.png")
    if v is not None:
        figures.append(("Posterior violins with compact letters", v))
    figures.append(("Mean and IQM across cells", plot_aggregate(result, out / "aggregate.png")))
    d = plot_data_efficiency(df, out / "data_efficiency.png", confidence)
    if d is not None:
        figures.append(("Data efficiency", d))
    (out / "report.md").write_text(_markdown(result, figures, title, sections))
    (out / "report.html").write_text(_html(result, figures, title, sections))
    return [out / "report.html", out / "report.md", out / "comparison.json", *(p for _, p in figures)]


def _tables(result: dict) -> tuple[list[str], list[list[str]], list[str], list[list[str]], list[str], list[list[str]]]:
    s = result["settings"]
    conf = f"{100 * s['confidence']:g}%"
    h1 = ["task", "shift", "policy", "n", "successes", "rate", f"{conf} {s['interval']}", "posterior mean", "letters"]
    r1 = [
        [
            r["task"],
            r["shift"],
            r["policy"],
            str(r["n"]),
            str(r["successes"]),
            f"{r['rate']:.3f}",
            f"[{r['lo']:.3f}, {r['hi']:.3f}]",
            f"{r['post_mean']:.3f}",
            r["letters"],
        ]
        for r in result["success"]
    ]
    h2 = ["task", "shift", "a", "b", "a − b", f"Newcombe {conf}", "p", f"p ({s['correction']})", "significant", "MDD"]
    r2 = [
        [
            r["task"],
            r["shift"],
            r["a"],
            r["b"],
            f"{r['diff']:+.3f}",
            f"[{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}]",
            f"{r['p']:.4g}",
            f"{r['p_adj']:.4g}",
            "yes" if r["significant"] else "no",
            "-" if r["mdd"] is None else f"{r['mdd']:.3f}",
        ]
        for r in result["pairwise"]
    ]
    h3 = ["policy", "cells", "trials", "mean", f"{conf} CI", "IQM", f"{conf} CI", "letters"]
    agg = sorted(result["aggregate"]["policies"], key=lambda r: (-r["mean"], r["policy"]))
    r3 = [
        [
            r["policy"],
            str(r["cells"]),
            str(r["trials"]),
            f"{r['mean']:.3f}",
            f"[{r['mean_lo']:.3f}, {r['mean_hi']:.3f}]",
            f"{r['iqm']:.3f}",
            f"[{r['iqm_lo']:.3f}, {r['iqm_hi']:.3f}]",
            r["letters"],
        ]
        for r in agg
    ]
    return h1, r1, h2, r2, h3, r3


def _settings_line(result: dict) -> str:
    s = result["settings"]
    return (
        f"{len(result['policies'])} policies, {len(result['cells'])} task/shift cells. Pairwise test: {s['test']}; "
        f"{s['correction']} correction {'within each cell' if s['family'] == 'cell' else 'over all pairs'}; "
        f"family-wise alpha {s['alpha']:g}. Policies that share a letter are not separated; policies that "
        "share no letter differ significantly. Schema " + result["schema_version"] + "."
    )


def _markdown(result: dict, figures: list[tuple[str, Path]], title: str, sections: Sequence[Section] = ()) -> str:
    h1, r1, h2, r2, h3, r3 = _tables(result)

    def table(h, rows):
        return "\n".join(["| " + " | ".join(h) + " |", "|" + "---|" * len(h), *("| " + " | ".join(r) + " |" for r in rows)])

    parts = [f"# {title}", ""]
    for name, header, rows in sections:
        parts += [f"## {name}", "", table(header, rows), ""]
    parts += [_settings_line(result), "", "## Verdicts", "", *(f"- {v}" for v in result["verdicts"]), ""]
    if result["warnings"]:
        parts += ["## Warnings", "", *(f"- **warning:** {w}" for w in result["warnings"]), ""]
    for name, p in figures:
        parts += [f"## {name}", "", f"![{name}]({p.name})", ""]
    parts += ["## Across cells", "", table(h3, r3), "", "## Success per task and shift", "", table(h1, r1), ""]
    if r2:
        parts += ["## Pairwise comparisons", "", table(h2, r2), ""]
    return "\n".join(parts)


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;
color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{padding:3px 8px;border-bottom:1px solid #eee;
text-align:left}th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.sig td{background:#eef7ee}.warn{background:#fff6e0;border-left:4px solid #f0a000;padding:6px 10px;margin:6px 0}
img{max-width:100%;border:1px solid #eee}.muted{color:#666;font-size:13px}
"""


def _html(result: dict, figures: list[tuple[str, Path]], title: str, sections: Sequence[Section] = ()) -> str:
    h1, r1, h2, r2, h3, r3 = _tables(result)
    esc = html.escape

    def table(h, rows, sig_col=None):
        head = "".join(f"<th>{esc(c)}</th>" for c in h)
        body = []
        for r in rows:
            cls = ' class="sig"' if sig_col is not None and r[sig_col] == "yes" else ""
            tds = "".join(f'<td class="num">{esc(c)}</td>' if _numeric(c) else f"<td>{esc(c)}</td>" for c in r)
            body.append(f"<tr{cls}>{tds}</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{_CSS}</style>"
        f"</head><body><h1>{esc(title)}</h1>"
    ]
    for name, header, rows in sections:
        parts += [f"<h2>{esc(name)}</h2>", table(header, rows)]
    parts += [
        f"<p class='muted'>{esc(_settings_line(result))}</p>",
        "<h2>Verdicts</h2><ul>",
        *(f"<li>{esc(v)}</li>" for v in result["verdicts"]),
        "</ul>",
    ]
    parts += [f"<div class='warn'><b>warning:</b> {esc(w)}</div>" for w in result["warnings"]]
    for name, p in figures:
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(f"<h2>{esc(name)}</h2><img alt='{esc(name)}' src='data:image/png;base64,{data}'>")
    parts += ["<h2>Across cells</h2>", table(h3, r3), "<h2>Success per task and shift</h2>", table(h1, r1)]
    if r2:
        parts += ["<h2>Pairwise comparisons</h2>", table(h2, r2, sig_col=8)]
    parts.append("</body></html>")
    return "\n".join(parts)


def _numeric(text: str) -> bool:
    try:
        float(text.replace("[", "").split(",")[0])
        return True
    except ValueError:
        return False
