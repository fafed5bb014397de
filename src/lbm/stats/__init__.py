"""lbm.stats: the statistics every claim of lbm rests on, as pure functions of counts.

Nothing here reads files or knows about rollout records (:mod:`lbm.eval.records` turns records
into counts); every function names its source, and SciPy / statsmodels do the work wherever they
implement the method correctly. Bad arguments raise :class:`lbm.errors.InputError` (a
``ValueError``) naming what was wrong.

=========================  ==========================================================================
module                     what
=========================  ==========================================================================
``intervals``              Wilson / Clopper–Pearson, Beta posterior, Newcombe, stratified Wilson, MOVER
``hypotheses``             Boschloo / Barnard (exact unconditional), exact McNemar, CMH (corrected / exact)
``corrections``            Holm, Bonferroni
``letters``                compact letter display (Piepho 2004)
``aggregates``             across-strata means, IQM, P(A > B), CMH over strata, the stratified bootstrap
``clustered``              training runs as units: stratified permutation test, two-stage bootstrap
``trend``                  stratified logistic trend over a dose, and its departure from log-linearity
``sequential``             group-sequential design with an exact type-I guarantee
``power``                  exact power of the test that is run, sample sizes, detectable differences
=========================  ==========================================================================

Glossary: s, f, n successes, failures, trials of one arm in one cell; cell / stratum: one (task,
shift) combination; Δ = p_A − p_B.
"""

from lbm.stats.aggregates import bootstrap_rates, cmh_over_strata, iqm, probability_of_improvement
from lbm.stats.clustered import RunCells, RunComparison, compare_runs
from lbm.stats.corrections import CORRECTIONS, adjust_pvalues
from lbm.stats.hypotheses import CMH_METHODS, TWO_SAMPLE_TESTS, cmh_test, mcnemar_exact, two_proportion_test
from lbm.stats.intervals import (
    INTERVAL_METHODS,
    BetaPosterior,
    Cells,
    Estimate,
    beta_posterior,
    common_strata,
    mean_difference,
    mover,
    newcombe_interval,
    proportion_interval,
    stratified_mean,
    wilson,
)
from lbm.stats.letters import LETTERS, compact_letter_display, letters
from lbm.stats.power import (
    barnard_rejection_threshold,
    exact_power,
    min_detectable_difference_approx,
    min_detectable_difference_exact,
    samplesize_approx,
    samplesize_exact,
)
from lbm.stats.sequential import SequentialDesign, obrien_fleming_spending, sequential_design, simulate_sequential
from lbm.stats.trend import Trend, dose_trend

__all__ = [
    "CMH_METHODS",
    "CORRECTIONS",
    "INTERVAL_METHODS",
    "LETTERS",
    "TWO_SAMPLE_TESTS",
    "BetaPosterior",
    "RunCells",
    "RunComparison",
    "Trend",
    "Cells",
    "Estimate",
    "SequentialDesign",
    "adjust_pvalues",
    "barnard_rejection_threshold",
    "beta_posterior",
    "bootstrap_rates",
    "cmh_over_strata",
    "cmh_test",
    "common_strata",
    "compact_letter_display",
    "compare_runs",
    "dose_trend",
    "exact_power",
    "iqm",
    "letters",
    "mcnemar_exact",
    "mean_difference",
    "min_detectable_difference_approx",
    "min_detectable_difference_exact",
    "mover",
    "newcombe_interval",
    "obrien_fleming_spending",
    "probability_of_improvement",
    "proportion_interval",
    "samplesize_approx",
    "samplesize_exact",
    "sequential_design",
    "simulate_sequential",
    "stratified_mean",
    "two_proportion_test",
    "wilson",
]
