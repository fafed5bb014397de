"""``lbm study``: the careful LBM examination (TRI LBM team, arXiv 2507.05331) end to end.

The question: does pretraining on many tasks and then finetuning beat training from scratch on a
new task, how much task data does it save, and does the advantage grow under distribution shift?

Protocol (:mod:`lbm.study.pipeline`; every stage cached by a content hash of its settings):

1. demonstrations: the scripted experts of the pretraining tasks (one dataset) and of each held-out
   task (one dataset per task), from the demonstration seed space;
2. pretraining: one multitask policy on the pretraining tasks;
3. for each held-out task and data fraction (nested subsets of the task's demos chosen by seed):
   finetune the pretrained policy, and train a from-scratch policy of the same architecture and
   size on exactly the same demos with the same number of steps;
4. evaluation, blind and paired (``lbm.eval``), of every finetuned and from-scratch policy and of
   the pretrained policy zero-shot, on each held-out task under nominal conditions and under the
   profile's distribution shifts, with a number of trials chosen by the power planner;
5. analysis and report (:mod:`lbm.study.analysis`, :mod:`lbm.study.report`): per-task tables with
   intervals and letters, the data-efficiency multiplier, the robustness gap, zero-shot vs
   single-task, and verdicts that state only what the statistics support.

Modules: ``profiles`` (StudyConfig, PROFILES), ``pipeline``, ``analysis``, ``report``, ``commands``.
"""

from lbm.study.analysis import analyze
from lbm.study.pipeline import STUDY_FORMAT, plan_trials, run_study
from lbm.study.profiles import PROFILES, StudyConfig

__all__ = ["PROFILES", "STUDY_FORMAT", "StudyConfig", "analyze", "plan_trials", "run_study"]
