"""The pilot: from-scratch success at candidate demo counts decides the confirmatory design.

A comparison is sensitive only where the baseline is neither at the floor nor at the ceiling (the
careful LBM study tuned its tasks to about 50% success). The pilot trains from-scratch policies on
each candidate number of demos per held-out task, evaluates them on trial seeds disjoint from the
confirmatory evaluation (:data:`PILOT_FIRST_TRIAL` onwards), and :func:`choose_design` picks the
anchor: the largest candidate count at which from-scratch success lies inside the band. The study
then uses that count as its "100%" and every smaller candidate as a data fraction (the few-shot
regime where pretraining should matter), plans its trials from the pilot's rate at the anchor, and
pre-registers all of it. The pilot's rollouts never enter the confirmatory analysis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lbm.stats import proportion_interval

PILOT_FIRST_TRIAL = 100_000
"""Pilot rollouts use evaluation trials from this index on; confirmatory trials start at 0."""


@dataclass(frozen=True)
class PilotChoice:
    """What the pilot chose and why."""

    anchor: int
    """Demo count used as the study's 100%."""
    counts: tuple[int, ...]
    """Demo counts of the confirmatory design, ascending; the last is the anchor."""
    rates: Mapping[int, tuple[int, int]]
    """From-scratch (successes, trials) per candidate count, pooled over the held-out tasks."""
    band: tuple[float, float]
    target_p1: float
    """The pilot's from-scratch rate at the anchor (clipped into the band): the power planner's baseline."""
    inside: bool
    """Whether the anchor's rate lies inside the band (False: every candidate was at the floor or the ceiling)."""
    reason: str

    @property
    def fractions(self) -> tuple[float, ...]:
        return tuple(c / self.anchor for c in self.counts)

    def summary(self) -> dict:
        """What the plan and the analysis keep of the pilot (JSON-ready)."""
        rates = {str(k): list(v) for k, v in self.rates.items()}
        return dict(anchor=self.anchor, counts=list(self.counts), inside=self.inside, reason=self.reason, rates=rates)


def choose_design(rates: Mapping[int, tuple[int, int]], band: tuple[float, float] = (0.2, 0.8)) -> PilotChoice:
    """The confirmatory design from the pilot's from-scratch success per candidate demo count (see the module doc)."""
    if not rates:
        raise ValueError("choose_design: the pilot measured no demo count.")
    low, high = band
    if not 0 <= low < high <= 1:
        raise ValueError(f"choose_design: the band must satisfy 0 <= low < high <= 1, got {band}.")
    counts = sorted(rates)
    rate = {c: rates[c][0] / rates[c][1] for c in counts}
    inside = [c for c in counts if low <= rate[c] <= high]

    def describe(c: int) -> str:
        lo, hi = proportion_interval(rates[c][0], rates[c][1])
        return f"{c} demos: {rates[c][0]}/{rates[c][1]} = {rate[c]:.2f} [{float(lo):.2f}, {float(hi):.2f}]"

    table = "; ".join(describe(c) for c in counts)
    if inside:
        anchor = max(inside)
        why = (
            f"from-scratch success per candidate ({table}); the largest count inside the band "
            f"[{low:.2f}, {high:.2f}] is {anchor}: it is the study's 100%, the smaller counts its fractions."
        )
    elif all(rate[c] > high for c in counts):
        anchor = counts[0]
        why = (
            f"from-scratch success per candidate ({table}) is above the band [{low:.2f}, {high:.2f}] everywhere "
            f"(a ceiling): the smallest count, {anchor}, is used, and comparisons there are insensitive. Pick "
            "harder held-out tasks or fewer demos."
        )
    elif all(rate[c] < low for c in counts):
        anchor = counts[-1]
        why = (
            f"from-scratch success per candidate ({table}) is below the band [{low:.2f}, {high:.2f}] everywhere "
            f"(a floor): the largest count, {anchor}, is used. Train longer, add demos or pick easier tasks."
        )
    else:  # the rate jumps over the band between two counts: the last count below it
        anchor = max(c for c in counts if rate[c] < low)
        why = (
            f"from-scratch success per candidate ({table}) jumps over the band [{low:.2f}, {high:.2f}]: the "
            f"largest count below it, {anchor}, is the study's 100% (the next is at the ceiling)."
        )
    p1 = min(max(rate[anchor], low), high)
    return PilotChoice(anchor, tuple(c for c in counts if c <= anchor), dict(rates), band, p1, anchor in inside, why)
