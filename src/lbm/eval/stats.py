"""The one statistics module: success rates, pairwise tests, letters, aggregates, sequential tests, power.

Everything that turns rollout records into a claim lives here, so a reader can audit one file.
Each public function names its source. SciPy/statsmodels do the heavy lifting wherever they
implement the method; where we write something ourselves a comment says why.

Glossary (paper symbol -> name here)
    s, f, n      successes, failures, trials of one policy in one cell  -> ``successes``, ``failures``, ``n``
    p̂            empirical success rate                               -> ``rate``
    K            number of policies compared in a cell                 -> ``len(policies)``
    m = K(K-1)/2 pairwise comparisons in one family                    -> ``n_pairs``
    Δ = p_A - p_B difference of success rates                          -> ``diff``
    cell         one (task, shift) combination; the unit of a table row

When to use which pairwise test
    * ``boschloo`` (default) / ``barnard``: exact unconditional tests for two independent binomial
      samples (Barnard 1945; Boschloo 1970; Mehrotra, Chan & Berger 2003). They make no pairing
      assumption and control type-I error at every n. Boschloo is uniformly more powerful than
      Fisher's exact test. Use them whenever you compare success *counts*.
    * ``mcnemar``: exact McNemar test for paired binary outcomes (McNemar 1947; exact binomial form,
      Agresti 2013 §11.1). Our evaluations are paired (trial i of a cell uses the same seed for every
      policy), so when outcomes of the two policies on one seed are positively correlated (a hard
      initial condition is hard for both), McNemar uses only the discordant seeds and is more
      powerful. It needs the pairing to be intact (same (task, shift, trial, seed) for both
      policies); :func:`check_pairing` verifies that.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lbm.errors import LbmError, did_you_mean

# Columns every rollout-record table must carry (written by the rollout runner, one row per trial).
REQUIRED_COLUMNS: tuple[str, ...] = (
    "policy",
    "task",
    "shift",
    "trial",
    "seed",
    "success",
    "steps",
    "return",
    "duration_s",
    "failure_reason",
    "latency_ms",
)
# The columns that identify one trial; a duplicate of these is a bookkeeping error upstream.
TRIAL_KEY: tuple[str, ...] = ("policy", "task", "shift", "trial")
# What must be identical across policies for a comparison to be paired.
PAIRING_KEY: tuple[str, ...] = ("task", "shift", "trial", "seed")
CELL: list[str] = ["task", "shift"]

INTERVAL_METHODS = ("wilson", "clopper-pearson")
TESTS = ("boschloo", "barnard", "mcnemar")
CORRECTIONS = ("holm", "bonferroni", "none")


# ---------------------------------------------------------------------------------------------
# Records


def load_records(path: str | Path, require_pairing: bool = True) -> pd.DataFrame:
    """Load and validate rollout records (one row per trial) from a parquet/JSONL file or a folder.

    A folder is searched (recursively) for ``*.parquet`` then ``*.jsonl`` files, which are
    concatenated. Validation: every column of :data:`REQUIRED_COLUMNS` present, at least one trial,
    no duplicate ``(policy, task, shift, trial)``, and, when ``require_pairing``, every policy
    evaluated on the same ``(task, shift, trial, seed)`` set (see :func:`check_pairing`).
    Bad input raises :class:`LbmError` naming what is wrong.

    Source: the paired, blinded protocol of the TRI LBM study (arXiv 2507.05331, §evaluation).
    """
    path = Path(path)
    if not path.exists():
        raise LbmError(f"Rollout records not found at {str(path)!r}. Pass the records file (.parquet/.jsonl) or "
                       "the evaluation output folder written by `lbm eval --out DIR`.")
    if path.is_dir():
        files = sorted(path.rglob("*.parquet")) or sorted(path.rglob("*.jsonl"))
        if not files:
            raise LbmError(f"No *.parquet or *.jsonl rollout records under {str(path)!r}. Run `lbm eval --out "
                           f"{path}` first, or point at the records file.")
    else:
        files = [path]
    frames = []
    for f in files:
        if f.suffix == ".parquet":
            frames.append(pd.read_parquet(f))
        elif f.suffix in (".jsonl", ".json"):
            frames.append(pd.read_json(f, lines=True))
        else:
            raise LbmError(f"Unsupported records format {f.suffix!r} ({f}); use .parquet or .jsonl.")
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return validate_records(df, require_pairing=require_pairing, source=str(path))


def validate_records(df: pd.DataFrame, require_pairing: bool = True, source: str = "records") -> pd.DataFrame:
    """Check a records table (columns, non-empty, no duplicate trials, pairing) and normalize dtypes.

    Returns a copy with ``success`` as bool and ``task``/``shift``/``policy`` as str. Raises
    :class:`LbmError` on any defect; with ``require_pairing=False`` a broken pairing is a
    :class:`UserWarning` naming the cells instead (McNemar then refuses to run).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise LbmError(f"{source} lacks required column(s) {missing}. Rollout records need "
                       f"{list(REQUIRED_COLUMNS)}; were they written by `lbm eval`?")
    if len(df) == 0:
        raise LbmError(f"{source} holds zero trials; there is nothing to compare. Run the evaluation first.")
    df = df.copy()
    for col in ("policy", "task", "shift", "failure_reason"):
        df[col] = df[col].fillna("").astype(str)
    if df["success"].isna().any():
        raise LbmError(f"{source}: {int(df['success'].isna().sum())} trial(s) have no success value; a crashed "
                       "trial must be recorded as success=False with its failure_reason, never left empty.")
    df["success"] = df["success"].astype(bool)
    dup = df.duplicated(list(TRIAL_KEY), keep=False)
    if dup.any():
        cells = df.loc[dup, list(TRIAL_KEY)].drop_duplicates().head(5).to_dict("records")
        raise LbmError(f"{source} has {int(dup.sum())} rows with a duplicate (policy, task, shift, trial), e.g. "
                       f"{cells}. Each trial must be recorded once; remove the duplicates (an interrupted run "
                       "resumed into the same file?) and re-run.")
    problems = check_pairing(df)
    if problems:
        msg = (f"{source}: policies were not evaluated on the same (task, shift, trial, seed) sets, which breaks "
               f"the paired design: {'; '.join(problems[:5])}" + (f"; ... ({len(problems)} cells)" if len(problems) > 5
                                                                  else "") +
               ". Re-run the missing trials with `lbm eval` (it resumes), or compare only complete cells.")
        if require_pairing:
            raise LbmError(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    return df


def check_pairing(df: pd.DataFrame) -> list[str]:
    """Return one message per (task, shift) cell whose policies differ in their (trial, seed) sets.

    An empty list means the design is paired: every policy ran the same trials with the same seeds.
    Source: matched initial conditions of the TRI LBM protocol (arXiv 2507.05331).
    """
    problems = []
    policies = sorted(df["policy"].unique())
    for (task, shift), g in df.groupby(CELL, sort=True):
        sets = {p: set(zip(gp["trial"], gp["seed"])) for p, gp in g.groupby("policy")}
        absent = [p for p in policies if p not in sets]
        union = set().union(*sets.values())
        bad = {p: len(union - s) for p, s in sets.items() if s != union}
        if absent or bad:
            parts = []
            if absent:
                parts.append(f"no trials for {absent}")
            if bad:
                parts.append("missing or re-seeded trials: " + ", ".join(f"{p} ({k})" for p, k in bad.items()))
            problems.append(f"task={task!r} shift={shift!r}: " + "; ".join(parts))
    return problems


# ---------------------------------------------------------------------------------------------
# One proportion


def proportion_interval(successes, n, confidence: float = 0.95, method: str = "wilson") -> tuple[np.ndarray, np.ndarray]:
    """Confidence interval for a binomial proportion; vectorized over ``successes``/``n`` (same shape).

    ``wilson``: Wilson score interval (Wilson 1927; recommended by Brown, Cai & DasGupta 2001).
    ``clopper-pearson``: exact Beta-quantile interval (Clopper & Pearson 1934), conservative.
    Computed by ``statsmodels.stats.proportion.proportion_confint``.
    """
    from statsmodels.stats.proportion import proportion_confint

    if method not in INTERVAL_METHODS:
        raise did_you_mean(method, INTERVAL_METHODS, "interval method")
    _check_confidence(confidence)
    s, n = np.asarray(successes, float), np.asarray(n, float)
    if np.any(n <= 0):
        raise LbmError("A success rate needs at least one trial (n >= 1); a cell with zero trials cannot be reported.")
    lo, hi = proportion_confint(s, n, alpha=1 - confidence, method={"wilson": "wilson", "clopper-pearson": "beta"}[method])
    # statsmodels returns NaN for the degenerate Clopper-Pearson edges; the exact limits there are 0 and 1.
    lo, hi = np.nan_to_num(np.asarray(lo, float), nan=0.0), np.nan_to_num(np.asarray(hi, float), nan=1.0)
    return np.clip(lo, 0, 1), np.clip(hi, 0, 1)


@dataclasses.dataclass(frozen=True)
class BetaPosterior:
    """Beta(1+s, 1+f) posterior of a success rate under a uniform prior."""

    a: float  # 1 + successes
    b: float  # 1 + failures
    mean: float  # (s+1)/(n+2)
    lo: float  # lower end of the equal-tailed credible interval
    hi: float  # upper end of the equal-tailed credible interval

    def samples(self, size: int = 10_000, seed: int = 0) -> np.ndarray:
        """``size`` posterior draws (for violin plots), reproducible from ``seed``."""
        return np.random.default_rng(seed).beta(self.a, self.b, size)


def beta_posterior(successes: int, n: int, confidence: float = 0.95) -> BetaPosterior:
    """Posterior of the success rate with a uniform Beta(1,1) prior: Beta(1+s, 1+f).

    Source: conjugate Bernoulli/Beta model (Gelman et al., *Bayesian Data Analysis*, 3rd ed., §2.4),
    as used for display in the TRI LBM study (violins of 10,000 draws). For display, not testing.
    """
    from scipy.stats import beta

    _check_confidence(confidence)
    if n < 0 or not 0 <= successes <= n:
        raise LbmError(f"Invalid counts: successes={successes}, n={n}; need 0 <= successes <= n.")
    a, b = 1.0 + successes, 1.0 + n - successes
    lo, hi = beta.ppf([(1 - confidence) / 2, (1 + confidence) / 2], a, b)
    return BetaPosterior(a=a, b=b, mean=a / (a + b), lo=float(lo), hi=float(hi))


def success_table(df: pd.DataFrame, confidence: float = 0.95, method: str = "wilson",
                  by: Sequence[str] = ("task", "shift")) -> pd.DataFrame:
    """Per (policy, *by) row: n, successes, rate, interval (``method``), Beta posterior mean and interval.

    Columns: policy, *by, n, successes, rate, lo, hi, post_mean, post_lo, post_hi, failure_reasons
    (dict reason -> count). Sources: see :func:`proportion_interval` and :func:`beta_posterior`.
    """
    keys = ["policy", *by]
    g = df.groupby(keys, sort=True)
    t = g["success"].agg(n="size", successes="sum").reset_index()
    t["successes"] = t["successes"].astype(int)
    t["rate"] = t["successes"] / t["n"]
    t["lo"], t["hi"] = proportion_interval(t["successes"].to_numpy(), t["n"].to_numpy(), confidence, method)
    from scipy.stats import beta

    a, b = 1 + t["successes"], 1 + t["n"] - t["successes"]
    t["post_mean"] = a / (a + b)
    t["post_lo"] = beta.ppf((1 - confidence) / 2, a, b)
    t["post_hi"] = beta.ppf((1 + confidence) / 2, a, b)
    reasons = (df[df["failure_reason"] != ""].groupby(keys)["failure_reason"].value_counts()
               if "failure_reason" in df.columns else pd.Series(dtype=int))
    t["failure_reasons"] = [
        {str(r): int(c) for r, c in reasons.loc[tuple(row)].items()} if tuple(row) in reasons.index.droplevel(-1) else {}
        for row in t[keys].itertuples(index=False)
    ] if len(reasons) else [{} for _ in range(len(t))]
    return t


# ---------------------------------------------------------------------------------------------
# Two proportions


@functools.lru_cache(maxsize=65536)
def _unconditional_p(s1: int, n1: int, s2: int, n2: int, test: str) -> float:
    from scipy.stats import barnard_exact, boschloo_exact

    table = [[s1, s2], [n1 - s1, n2 - s2]]
    fn = boschloo_exact if test == "boschloo" else barnard_exact
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = fn(table, alternative="two-sided").pvalue
    # Both tests return NaN when a column is all successes or all failures on both sides
    # (0/n vs 0/n): the data carry no evidence of a difference, so p = 1.
    return 1.0 if not np.isfinite(p) else float(min(1.0, p))


def two_proportion_test(s1: int, n1: int, s2: int, n2: int, test: str = "boschloo") -> float:
    """Two-sided p-value for H0: p1 = p2 from independent binomial counts.

    ``boschloo``: Boschloo's exact unconditional test (Boschloo 1970), ``scipy.stats.boschloo_exact``.
    ``barnard``: Barnard's exact unconditional test with the pooled-variance statistic (Barnard
    1945; Mehrotra et al. 2003), ``scipy.stats.barnard_exact``. Results are cached per table.
    """
    if test not in ("boschloo", "barnard"):
        raise did_you_mean(test, ("boschloo", "barnard"), "two-sample test")
    for s, n in ((s1, n1), (s2, n2)):
        if n < 1 or not 0 <= s <= n:
            raise LbmError(f"Invalid counts {s}/{n}: a comparison needs n >= 1 trials and 0 <= successes <= n.")
    # Two-sided tests are symmetric in the two samples; canonical order doubles the cache hits.
    if (s1, n1) > (s2, n2):
        s1, n1, s2, n2 = s2, n2, s1, n1
    return _unconditional_p(int(s1), int(n1), int(s2), int(n2), test)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes ``a[i]``, ``b[i]`` (same seed i).

    Only discordant pairs carry information: under H0 each is equally likely to favour A or B, so
    the count favouring A is Binomial(n_discordant, 1/2) (McNemar 1947; Agresti, *Categorical Data
    Analysis*, 3rd ed., §11.1.4). Computed by ``statsmodels.stats.contingency_tables.mcnemar(exact=True)``.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape or a.ndim != 1:
        raise LbmError("McNemar's test needs two equally long outcome vectors paired by seed.")
    n10, n01 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if n10 + n01 == 0:
        return 1.0
    table = [[int(np.sum(a & b)), n10], [n01, int(np.sum(~a & ~b))]]
    return float(mcnemar(table, exact=True).pvalue)


def newcombe_interval(s1: int, n1: int, s2: int, n2: int, confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval for p1 - p2 by Newcombe's hybrid score method (Newcombe 1998, method 10).

    Combines the two Wilson intervals; good coverage for small n. Computed by
    ``statsmodels.stats.proportion.confint_proportions_2indep(method="newcomb")``.
    """
    from statsmodels.stats.proportion import confint_proportions_2indep

    _check_confidence(confidence)
    lo, hi = confint_proportions_2indep(s1, n1, s2, n2, method="newcomb", compare="diff", alpha=1 - confidence)
    return float(max(-1.0, lo)), float(min(1.0, hi))


def adjust_pvalues(pvalues: Sequence[float], method: str = "holm") -> np.ndarray:
    """Family-wise adjusted p-values: Holm (1979) step-down or Bonferroni; ``none`` returns them as is.

    Computed by ``statsmodels.stats.multitest.multipletests``. Holm controls the family-wise error
    rate like Bonferroni and is never less powerful.
    """
    from statsmodels.stats.multitest import multipletests

    if method not in CORRECTIONS:
        raise did_you_mean(method, CORRECTIONS, "correction")
    p = np.asarray(pvalues, float)
    if p.size == 0 or method == "none":
        return p.copy()
    return multipletests(p, method=method)[1]


def cmh_test(tables: Sequence[np.ndarray]) -> float:
    """Two-sided Cochran–Mantel–Haenszel p-value across strata of 2x2 tables [[s1, s2], [f1, f2]].

    Tests a common odds ratio of 1 while letting every stratum (task, shift) have its own base
    rate (Mantel & Haenszel 1959; Agresti, *Categorical Data Analysis*, 3rd ed., §6.4.2). Used for
    the across-task comparison because pooling counts over tasks of different difficulty would
    treat them as one binomial. Computed by ``statsmodels.stats.contingency_tables.StratifiedTable``.
    """
    from statsmodels.stats.contingency_tables import StratifiedTable

    # Strata with no successes or no failures in either arm have zero variance and carry no
    # information; statsmodels would divide by zero on them, so they are dropped first.
    keep = [np.asarray(t, float) for t in tables if np.asarray(t)[0].sum() > 0 and np.asarray(t)[1].sum() > 0]
    if not keep:
        return 1.0
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        p = StratifiedTable(keep).test_null_odds(correction=True).pvalue
    return 1.0 if not np.isfinite(p) else float(p)


# ---------------------------------------------------------------------------------------------
# Compact letter display


def compact_letter_display(policies: Sequence[str], significant: set[frozenset[str]]) -> dict[str, str]:
    """Letters per policy such that two policies share no letter iff they differ significantly.

    ``policies`` must be in display order (best first: the first column is letter ``a``);
    ``significant`` holds the pairs {A, B} that differ. Insert-and-absorb algorithm (Piepho 2004,
    *J. Comput. Graph. Stat.* 13(2):456–466). Written here because neither SciPy nor statsmodels
    has it (TRI's implementation is CC BY-NC and not vendored).
    """
    cols: list[set[str]] = [set(policies)]
    for pair in significant:
        a, b = tuple(pair)
        while any(a in c and b in c for c in cols):
            c = next(c for c in cols if a in c and b in c)
            cols.remove(c)
            new = [c - {a}, c - {b}]
            cols.extend(new)
            # Absorb: a column contained in another adds no information.
            cols = [x for i, x in enumerate(cols)
                    if x and not any((x < y) or (x == y and j < i) for j, y in enumerate(cols) if j != i)]
    rank = {p: i for i, p in enumerate(policies)}
    cols.sort(key=lambda c: sorted(rank[p] for p in c))
    names = _letter_names(len(cols))
    return {p: "".join(names[i] for i, c in enumerate(cols) if p in c) for p in policies}


def _letter_names(k: int) -> list[str]:
    import string

    alphabet = string.ascii_lowercase
    return [alphabet[i] if i < 26 else alphabet[i // 26 - 1] + alphabet[i % 26] for i in range(k)]


def letters(pairwise: pd.DataFrame, rates: dict[str, float], alpha: float = 0.05) -> dict[str, str]:
    """Compact letter display from a pairwise table (columns a, b, p_adj) of one family.

    Policies are ordered by ``rates`` (descending; ties by name); pairs with ``p_adj <= alpha``
    are significant. See :func:`compact_letter_display` (Piepho 2004).
    """
    order = sorted(rates, key=lambda p: (-rates[p], p))
    sig = {frozenset((r.a, r.b)) for r in pairwise.itertuples() if r.p_adj <= alpha}
    return compact_letter_display(order, sig)


# ---------------------------------------------------------------------------------------------
# Pairwise table


def pairwise_table(df: pd.DataFrame, test: str = "boschloo", correction: str = "holm", alpha: float = 0.05,
                   confidence: float = 0.95, family: str = "cell", progress: bool = False) -> pd.DataFrame:
    """Every pair of policies in every (task, shift) cell: counts, difference, Newcombe CI, raw/adjusted p.

    Columns: task, shift, a, b, n_a, s_a, n_b, s_b, rate_a, rate_b, diff (= rate_a - rate_b),
    diff_lo, diff_hi, p, p_adj, significant, mdd. ``a`` is the policy with the higher rate.
    ``family="cell"`` adjusts over the K(K-1)/2 pairs of each cell (the TRI LBM convention, matching
    per-task letters); ``family="study"`` adjusts over all pairs of all cells. ``mdd`` is the
    minimum detectable difference at the realized n (power 0.8, Bonferroni level of the family;
    :func:`min_detectable_difference_approx`). Sources: :func:`two_proportion_test`,
    :func:`mcnemar_exact`, :func:`newcombe_interval`, :func:`adjust_pvalues`.
    """
    if test not in TESTS:
        raise did_you_mean(test, TESTS, "test")
    if family not in ("cell", "study"):
        raise did_you_mean(family, ("cell", "study"), "family")
    if test == "mcnemar" and check_pairing(df):
        raise LbmError("McNemar's test needs paired trials, but the records are not paired (see the pairing "
                       "warning). Use --test boschloo, or complete the missing trials.")
    rows = []
    cells = list(df.groupby(CELL, sort=True))
    it = cells
    if progress:
        from tqdm import tqdm

        it = tqdm(cells, desc="pairwise tests", unit="cell", leave=False)
    for (task, shift), g in it:
        counts = g.groupby("policy")["success"].agg(["size", "sum"])
        outcomes = {p: gp.sort_values(["trial", "seed"])["success"].to_numpy() for p, gp in g.groupby("policy")}
        pols = sorted(counts.index)
        for i, pa in enumerate(pols):
            for pb in pols[i + 1:]:
                (na, sa), (nb, sb) = counts.loc[pa].astype(int), counts.loc[pb].astype(int)
                if sb / nb > sa / na:
                    pa_, pb_, na_, sa_, nb_, sb_ = pb, pa, nb, sb, na, sa
                else:
                    pa_, pb_, na_, sa_, nb_, sb_ = pa, pb, na, sa, nb, sb
                if test == "mcnemar":
                    p = mcnemar_exact(outcomes[pa_], outcomes[pb_])
                else:
                    p = two_proportion_test(sa_, na_, sb_, nb_, test)
                lo, hi = newcombe_interval(sa_, na_, sb_, nb_, confidence)
                rows.append(dict(task=task, shift=shift, a=pa_, b=pb_, n_a=na_, s_a=sa_, n_b=nb_, s_b=sb_,
                                 rate_a=sa_ / na_, rate_b=sb_ / nb_, diff=sa_ / na_ - sb_ / nb_,
                                 diff_lo=lo, diff_hi=hi, p=p))
    t = pd.DataFrame(rows, columns=["task", "shift", "a", "b", "n_a", "s_a", "n_b", "s_b", "rate_a", "rate_b",
                                    "diff", "diff_lo", "diff_hi", "p"])
    if t.empty:
        for c in ("p_adj", "significant", "mdd"):
            t[c] = pd.Series(dtype=float)
        return t
    if family == "cell":
        t["p_adj"] = t.groupby(CELL, sort=False)["p"].transform(lambda p: adjust_pvalues(p.to_numpy(), correction))
        m = t.groupby(CELL, sort=False)["p"].transform("size")
    else:
        t["p_adj"] = adjust_pvalues(t["p"].to_numpy(), correction)
        m = pd.Series(len(t), index=t.index)
    t["significant"] = t["p_adj"] <= alpha
    level = alpha / m if correction != "none" else pd.Series(alpha, index=t.index)
    pooled = (t["s_a"] + t["s_b"]) / (t["n_a"] + t["n_b"])
    t["mdd"] = [min_detectable_difference_approx(int(min(na, nb)), a, baseline=float(pb))
                for na, nb, a, pb in zip(t["n_a"], t["n_b"], level, pooled)]
    return t


# ---------------------------------------------------------------------------------------------
# Multitask aggregates (rliable)


def _per_task_matrix(df: pd.DataFrame, policy: str) -> list[np.ndarray]:
    g = df[df["policy"] == policy].groupby(CELL, sort=True)["success"]
    return [v.to_numpy(float) for _, v in g]


def stratified_bootstrap(df: pd.DataFrame, statistic: str = "mean", reps: int = 2000, confidence: float = 0.95,
                         seed: int = 0) -> pd.DataFrame:
    """Per policy: the across-cell ``mean`` or ``iqm`` of per-cell success rates with a bootstrap CI.

    Rollouts are resampled with replacement *within* each (task, shift) stratum, the statistic is
    recomputed, and the percentile interval reported (Agarwal et al. 2021, "Deep RL at the Edge of
    the Statistical Precipice", NeurIPS, the rliable stratified bootstrap). IQM is the 25 %
    trimmed mean of the per-cell rates (``scipy.stats.trim_mean``). Vectorized in NumPy here
    because rliable is not a dependency: resampling n Bernoulli outcomes with replacement and
    summing is exactly a Binomial(n, p̂) draw, so each stratum costs one binomial draw per rep.
    """
    from scipy.stats import trim_mean

    if statistic not in ("mean", "iqm"):
        raise did_you_mean(statistic, ("mean", "iqm"), "aggregate statistic")
    _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    out = []
    for policy in sorted(df["policy"].unique()):
        cells = _per_task_matrix(df, policy)
        n = np.array([len(c) for c in cells])
        phat = np.array([c.mean() for c in cells])
        boots = rng.binomial(n[None, :], phat[None, :], size=(reps, len(n))) / n[None, :]  # (reps, cells)
        if statistic == "mean":
            point, dist = phat.mean(), boots.mean(axis=1)
        else:
            point, dist = trim_mean(phat, 0.25), trim_mean(boots, 0.25, axis=1)
        lo, hi = np.quantile(dist, [(1 - confidence) / 2, (1 + confidence) / 2])
        out.append(dict(policy=policy, statistic=statistic, value=float(point), lo=float(lo), hi=float(hi),
                        cells=len(n), trials=int(n.sum())))
    return pd.DataFrame(out)


def probability_of_improvement(df: pd.DataFrame, a: str, b: str, reps: int = 2000, confidence: float = 0.95,
                               seed: int = 0) -> dict[str, float]:
    """P(A > B): average over cells of P(X_A > X_B) + ½ P(X_A = X_B) for single rollouts, with bootstrap CI.

    For binary outcomes the per-cell Mann–Whitney probability is p_A(1-p_B) + ½[p_A p_B + (1-p_A)(1-p_B)]
    = ½ (1 + p_A - p_B). Source: Agarwal et al. 2021 (rliable ``probability_of_improvement``),
    with each policy resampled independently within each stratum.
    """
    _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    ca, cb = _per_task_matrix(df, a), _per_task_matrix(df, b)
    if len(ca) != len(cb) or not ca:
        raise LbmError(f"Probability of improvement needs {a!r} and {b!r} evaluated on the same cells.")
    na, nb = np.array([len(c) for c in ca]), np.array([len(c) for c in cb])
    pa, pb = np.array([c.mean() for c in ca]), np.array([c.mean() for c in cb])
    point = float(np.mean(0.5 * (1 + pa - pb)))
    ba = rng.binomial(na, pa, size=(reps, len(na))) / na
    bb = rng.binomial(nb, pb, size=(reps, len(nb))) / nb
    dist = np.mean(0.5 * (1 + ba - bb), axis=1)
    lo, hi = np.quantile(dist, [(1 - confidence) / 2, (1 + confidence) / 2])
    return dict(a=a, b=b, value=point, lo=float(lo), hi=float(hi))


def aggregate(df: pd.DataFrame, test: str = "boschloo", correction: str = "holm", alpha: float = 0.05,
              reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Across all (task, shift) cells: mean and IQM with stratified bootstrap CIs, P(A>B) per pair,
    a pairwise stratified test per pair (CMH; exact McNemar on pooled discordant pairs when
    ``test="mcnemar"``), adjusted over pairs, and the across-task letters.

    Returns ``{"policies": [...], "pairs": [...], "letters": {...}}`` (see the JSON schema in
    :mod:`lbm.eval.compare`). Sources: :func:`stratified_bootstrap`, :func:`probability_of_improvement`,
    :func:`cmh_test`, :func:`mcnemar_exact`, :func:`compact_letter_display`.
    """
    mean = stratified_bootstrap(df, "mean", reps, confidence, seed)
    iqm = stratified_bootstrap(df, "iqm", reps, confidence, seed + 1)
    pols = list(mean["policy"])
    rates = dict(zip(mean["policy"], mean["value"]))
    rows = []
    for i, pa in enumerate(pols):
        for pb in pols[i + 1:]:
            a, b = (pa, pb) if rates[pa] >= rates[pb] else (pb, pa)
            if test == "mcnemar":
                key = ["task", "shift", "trial", "seed"]
                m = df[df.policy == a][key + ["success"]].merge(df[df.policy == b][key + ["success"]], on=key)
                p = mcnemar_exact(m["success_x"].to_numpy(), m["success_y"].to_numpy())
            else:
                tables = []
                for _, g in df[df.policy.isin([a, b])].groupby(CELL):
                    c = g.groupby("policy")["success"].agg(["sum", "size"])
                    if a in c.index and b in c.index:
                        sa, na = c.loc[a]
                        sb, nb = c.loc[b]
                        tables.append(np.array([[sa, sb], [na - sa, nb - sb]]))
                p = cmh_test(tables)
            poi = probability_of_improvement(df, a, b, reps, confidence, seed + 2)
            rows.append(dict(a=a, b=b, diff=rates[a] - rates[b], p=p, poi=poi["value"], poi_lo=poi["lo"],
                             poi_hi=poi["hi"]))
    padj = adjust_pvalues([r["p"] for r in rows], correction)
    for r, q in zip(rows, padj):
        r["p_adj"] = float(q)
        r["significant"] = bool(q <= alpha)
    pw = pd.DataFrame(rows, columns=["a", "b", "diff", "p", "p_adj", "significant", "poi", "poi_lo", "poi_hi"])
    let = letters(pw, rates, alpha) if len(pols) else {}
    policies = []
    for (_, rm), (_, ri) in zip(mean.iterrows(), iqm.iterrows()):
        policies.append(dict(policy=rm.policy, cells=int(rm.cells), trials=int(rm.trials), mean=rm.value,
                             mean_lo=rm.lo, mean_hi=rm.hi, iqm=ri.value, iqm_lo=ri.lo, iqm_hi=ri.hi,
                             letters=let.get(rm.policy, "")))
    return dict(policies=policies, pairs=rows, letters=let,
                test="mcnemar" if test == "mcnemar" else "cmh")


# ---------------------------------------------------------------------------------------------
# Exact unconditional machinery shared by the sequential design and the power planner


def _null_grid(points: int = 201) -> np.ndarray:
    # The composite null p_A = p_B = π is covered by a grid in π; denser near 0 and 1, where the
    # binomial changes fastest (a sin² map of a uniform grid).
    u = np.linspace(0, np.pi / 2, points)
    return np.clip(np.sin(u) ** 2, 1e-9, 1 - 1e-9)


def _binom_pmf_matrix(n: int, ps: np.ndarray) -> np.ndarray:
    from scipy.stats import binom

    return binom.pmf(np.arange(n + 1)[None, :], n, ps[:, None])  # (P, n+1)


def _pooled_z(n: int) -> np.ndarray:
    """|Z| of the pooled two-proportion statistic for every table (x, y) with n trials per arm: (n+1, n+1)."""
    x = np.arange(n + 1)[:, None] / n
    y = np.arange(n + 1)[None, :] / n
    pbar = (x + y) / 2
    var = pbar * (1 - pbar) * 2 / n
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(y - x) / np.sqrt(var)
    return np.nan_to_num(z, nan=0.0)


def _threshold(z: np.ndarray, mass: np.ndarray, budget: np.ndarray) -> float:
    """Smallest |z| threshold c such that, for every null point, mass{|Z| >= c} <= budget.

    ``z``: (S,) statistic per state; ``mass``: (P, S) probability of reaching each state (still
    running) under each null point; ``budget``: (P,) type-I error still allowed per null point.
    """
    order = np.argsort(-z, kind="stable")
    zs = z[order]
    cum = np.cumsum(mass[:, order], axis=1)  # (P, S): mass of the states with |z| >= zs[j]
    # Ties must be rejected together: evaluate only at the last index of each run of equal z.
    last = np.r_[np.nonzero(np.diff(zs))[0], len(zs) - 1]
    ok = np.all(cum[:, last] <= budget[:, None] + 1e-12, axis=0) & (zs[last] > 0)
    if not ok[0]:
        return math.inf
    # cum is increasing along the sorted axis, so the feasible prefixes form a prefix of `last`.
    k = np.argmin(ok) - 1 if not ok.all() else len(ok) - 1
    return float(zs[last[k]])


def barnard_rejection_threshold(n: int, alpha: float = 0.05, grid: int = 201) -> float:
    """|Z| threshold of the two-sided exact unconditional (Barnard, pooled-z) test with n per arm.

    Tables with |Z_pooled| >= threshold are rejected; the worst-case type-I error over the null
    grid is <= alpha (Barnard 1945; Suissa & Shuster 1985). Computed by exact enumeration.
    """
    pm = _binom_pmf_matrix(n, _null_grid(grid))
    mass = (pm[:, :, None] * pm[:, None, :]).reshape(len(pm), -1)
    return _threshold(_pooled_z(n).ravel(), mass, np.full(len(pm), alpha))


def exact_power(p1: float, p2: float, n: int, alpha: float = 0.05, grid: int = 201) -> float:
    """Exact power of the two-sided exact unconditional (Barnard pooled-z) test with n trials per arm.

    Sum over the rejection region of the product of the two binomial pmfs (no simulation error).
    Boschloo's test has the same or a slightly larger rejection region, so this is a (tight) lower
    bound for it. Source: Suissa & Shuster (1985), *JRSS A* 148:317–327.
    """
    c = barnard_rejection_threshold(n, alpha, grid)
    z = _pooled_z(n)
    pm = _binom_pmf_matrix(n, np.array([p1, p2]))
    return float(np.sum((pm[0][:, None] * pm[1][None, :])[z >= c]))


# ---------------------------------------------------------------------------------------------
# Sequential testing


def obrien_fleming_spending(t: np.ndarray, alpha: float) -> np.ndarray:
    """Lan–DeMets O'Brien–Fleming-type alpha spending α(t) = 2 − 2Φ(z_{1−α/2}/√t), t in (0, 1].

    Source: Lan & DeMets (1983), *Biometrika* 70:659–663. Spends almost nothing early, so an early
    stop needs overwhelming evidence and the final look keeps nearly the full α.
    """
    from scipy.stats import norm

    t = np.asarray(t, float)
    return 2 - 2 * norm.cdf(norm.ppf(1 - alpha / 2) / np.sqrt(t))


@dataclasses.dataclass(frozen=True)
class SequentialDesign:
    """A two-policy group-sequential design: look after ``looks[k]`` paired trials per policy.

    ``thresholds[k]`` is the |pooled Z| at or beyond which look k stops and declares the
    better policy; ``spent[k]`` the cumulative α allowed by then; ``worst_type1`` the exact
    worst-case type-I error of the whole design over the null grid.
    """

    n_max: int  # declared maximum number of trials per policy
    alpha: float  # two-sided family-wise type-I error of the design
    looks: tuple[int, ...]  # trials per policy at each analysis, increasing, last == n_max
    thresholds: tuple[float, ...]  # |Z| stopping boundary per look (inf = cannot stop there)
    spent: tuple[float, ...]  # cumulative alpha-spending α(t_k) per look
    worst_type1: float  # exact max over the null grid of P(stop for a difference at any look)

    def decide(self, successes_a: int, successes_b: int, trials: int) -> str:
        """``"A"``/``"B"`` (significantly better, stop), ``"continue"``, or ``"no difference"`` at n_max.

        ``trials`` must be one of :attr:`looks` (trials per policy so far).
        """
        if trials not in self.looks:
            raise LbmError(f"The design analyses only after {list(self.looks)} trials per policy, not {trials}. "
                           "Looking at other times voids the type-I guarantee.")
        k = self.looks.index(trials)
        z = _pooled_z(trials)[successes_a, successes_b]
        if z >= self.thresholds[k]:
            return "A" if successes_a > successes_b else "B"
        return "no difference" if trials == self.n_max else "continue"

    def to_dict(self) -> dict:
        """Plain-JSON form of the design (for pre-registration next to the records)."""
        return dataclasses.asdict(self)


def sequential_design(n_max: int, looks: int = 5, alpha: float = 0.05, grid: int = 201,
                      progress: bool = False) -> SequentialDesign:
    """Group-sequential exact unconditional design with Lan–DeMets O'Brien–Fleming spending.

    Method (derived here; not STEP's code): two policies run paired trials; after
    n_k = round(k·n_max/looks) trials per policy compute the pooled two-proportion |Z|. The joint
    distribution of the success counts (x, y) of the still-running comparison is propagated
    *exactly* from look to look (binomial convolution per arm, mass of stopped states removed)
    under every null point p_A = p_B = π of a dense grid. At look k the boundary c_k is the
    smallest |Z| value such that, for *every* π, the cumulative probability of having stopped for
    a difference is <= α(t_k), the O'Brien–Fleming-type spending at t_k = n_k/n_max (Lan &
    DeMets 1983). By induction the probability of ever rejecting under any grid null is <= α,
    an exact finite-sample guarantee (not an asymptotic one). Between grid points the error is a
    smooth polynomial of π; the tests check it by simulation off the grid. Boundaries are
    non-randomized, so the design is conservative, like every exact test on discrete data.

    Independence of the two arms is assumed; with paired seeds, positively correlated outcomes
    make the difference less variable, so the test stays valid (conservative).
    With ``looks=1`` this is Barnard's exact unconditional test. Cost: O(looks·grid·n_max²).
    """
    if n_max < 2:
        raise LbmError(f"n_max={n_max}: a sequential comparison needs a maximum of at least 2 trials per policy.")
    if not 1 <= looks <= n_max:
        raise LbmError(f"looks={looks} must be between 1 and n_max={n_max}.")
    _check_alpha(alpha)
    ns = sorted({int(round(n_max * (k + 1) / looks)) for k in range(looks)})
    spend = obrien_fleming_spending(np.array(ns) / n_max, alpha)
    nulls = _null_grid(grid)
    rejected = np.zeros(len(nulls))  # cumulative stopping probability per null point
    dist = np.ones((len(nulls), 1, 1))  # P(x, y, still running) per null point: (P, n+1, n+1)
    prev = 0
    thresholds = []
    it = enumerate(ns)
    if progress:
        from tqdm import tqdm

        it = tqdm(list(it), desc="sequential design", unit="look", leave=False)
    for k, n in it:
        dist = _advance(dist, _binom_pmf_matrix(n - prev, nulls), n)
        z = _pooled_z(n)
        c = _threshold(z.ravel(), dist.reshape(len(nulls), -1), spend[k] - rejected)
        thresholds.append(c)
        stop = z >= c
        rejected = rejected + dist[:, stop].sum(axis=1)
        dist = dist * ~stop
        prev = n
    return SequentialDesign(n_max=n_max, alpha=alpha, looks=tuple(ns), thresholds=tuple(thresholds),
                            spent=tuple(float(s) for s in spend), worst_type1=float(rejected.max()))


def _advance(dist: np.ndarray, step: np.ndarray, n: int) -> np.ndarray:
    """Add m = n - prev Binomial(m, π) successes to each arm: (P, prev+1, prev+1) -> (P, n+1, n+1).

    T[π, x, x+i] = step[π, i] is the per-arm transition, so the new joint law is Tᵀ · dist · T.
    """
    prev = dist.shape[1] - 1
    trans = np.zeros((dist.shape[0], prev + 1, n + 1))
    for x in range(prev + 1):
        trans[:, x, x:x + n - prev + 1] = step
    return np.matmul(np.matmul(trans.transpose(0, 2, 1), dist), trans)


def simulate_sequential(design: SequentialDesign, p_a: float, p_b: float, reps: int = 10_000,
                        seed: int = 0) -> dict[str, float]:
    """Monte-Carlo operating characteristics of a design: P(stop for A), P(stop for B), mean trials used.

    Vectorized over ``reps`` independent comparisons (binomial increments between looks).
    """
    rng = np.random.default_rng(seed)
    xa = np.zeros(reps, int)
    xb = np.zeros(reps, int)
    running = np.ones(reps, bool)
    used = np.full(reps, design.n_max)
    win_a = np.zeros(reps, bool)
    win_b = np.zeros(reps, bool)
    prev = 0
    for n, c in zip(design.looks, design.thresholds):
        xa += rng.binomial(n - prev, p_a, reps)
        xb += rng.binomial(n - prev, p_b, reps)
        z = _pooled_z(n)[xa, xb]
        stop = running & (z >= c)
        win_a |= stop & (xa > xb)
        win_b |= stop & (xb > xa)
        used[stop] = n
        running &= ~stop
        prev = n
    return dict(p_a_wins=float(win_a.mean()), p_b_wins=float(win_b.mean()),
                p_reject=float((win_a | win_b).mean()), mean_trials=float(used.mean()))


# ---------------------------------------------------------------------------------------------
# Power


def samplesize_approx(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Trials per policy for a two-sided test by the arcsine approximation with Fleiss's continuity correction.

    n₀ = 2((z_{1−α/2} + z_{power}) / h)² with Cohen's h = |2 asin √p1 − 2 asin √p2| (Cohen 1988, §6),
    then n = n₀/4 · (1 + √(1 + 4/(n₀|p1−p2|)))² (Fleiss, Tytun & Ury 1980), which moves the normal
    answer toward what an exact test on discrete counts needs. :func:`samplesize_exact` gives the
    exact answer; this is its starting point.
    """
    from scipy.stats import norm

    _check_alpha(alpha)
    _check_probability(power, "power")
    _check_probability(p1, "p1")
    _check_probability(p2, "p2")
    if p1 == p2:
        raise LbmError("p1 equals p2: no finite number of trials detects a zero difference. Choose p2 != p1.")
    h = abs(2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p2)))
    n0 = 2 * ((norm.ppf(1 - alpha / 2) + norm.ppf(power)) / h) ** 2
    d = abs(p1 - p2)
    return int(math.ceil(n0 / 4 * (1 + math.sqrt(1 + 4 / (n0 * d))) ** 2))


def samplesize_exact(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8, max_n: int = 2000) -> int:
    """Smallest n per policy whose *exact* power (:func:`exact_power`, Barnard pooled-z) reaches ``power``.

    Exact power is not monotone in n (discreteness), so the answer is the first n at which the
    target is met, found by scanning upward from below the approximation. Source: Suissa &
    Shuster (1985); scan strategy as in Chan (1998). For n beyond ``max_n`` the approximation is returned.
    """
    start = samplesize_approx(p1, p2, alpha, power)
    if start > max_n:
        return start
    # The Fleiss correction overshoots the exact unconditional test a little; bisection on a
    # smoothed criterion then a short linear scan finds the first n that meets the target.
    lo, hi = max(2, int(start * 0.6)), start
    while exact_power(p1, p2, hi, alpha) < power:
        lo, hi = hi, int(hi * 1.3) + 1
        if hi > max_n:
            return samplesize_approx(p1, p2, alpha, power)
    while hi - lo > 8:
        mid = (lo + hi) // 2
        if exact_power(p1, p2, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid
    for n in range(lo, hi + 1):
        if exact_power(p1, p2, n, alpha) >= power:
            return n
    return hi


def min_detectable_difference_approx(n: int, alpha: float = 0.05, power: float = 0.8, baseline: float = 0.5) -> float:
    """Smallest p2 − p1 (p1 = ``baseline``, going toward 0.5 first) detectable with n per policy.

    Arcsine approximation: h = (z_{1−α/2} + z_{power}) √(2/n) (Cohen 1988, §6). Fast; used for the
    underpowered warnings. The direction with more room is taken, so it is the optimistic MDD.
    """
    from scipy.stats import norm

    if n < 1:
        return 1.0
    h = (norm.ppf(1 - alpha / 2) + norm.ppf(power)) * math.sqrt(2 / n)
    phi = 2 * math.asin(math.sqrt(min(max(baseline, 0.0), 1.0)))
    best = 1.0
    for target in (phi + h, phi - h):
        if 0 <= target <= math.pi:
            best = min(best, abs(math.sin(target / 2) ** 2 - baseline))
    return float(best)


def min_detectable_difference_exact(n: int, alpha: float = 0.05, power: float = 0.8, baseline: float = 0.5) -> float:
    """Smallest increase over ``baseline`` whose exact power (:func:`exact_power`) reaches ``power`` with n per policy.

    Bisection on p2 in (baseline, 1]; returns ``1 - baseline`` (or nan if even p2 = 1 is not
    detectable). Source: Suissa & Shuster (1985).
    """
    if exact_power(baseline, 1.0 - 1e-12, n, alpha) < power:
        return float("nan")
    lo, hi = baseline, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if exact_power(baseline, mid, n, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return float(hi - baseline)


# ---------------------------------------------------------------------------------------------


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise LbmError(f"alpha={alpha} must be strictly between 0 and 1 (e.g. 0.05).")


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise LbmError(f"confidence={confidence} must be strictly between 0 and 1 (e.g. 0.95).")


def _check_probability(p: float, name: str) -> None:
    if not 0 < p < 1:
        raise LbmError(f"{name}={p} must be strictly between 0 and 1.")
