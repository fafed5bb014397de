"""Episode datasets (LeRobot v3 layout), training windows, mixtures, normalization, audits, demos."""

from lbm.data.dataset import DatasetWriter, EpisodeDataset
from lbm.data.generate import GenerateSummary, generate_demos
from lbm.data.mixture import Mixture
from lbm.data.normalize import (
    DegenerateStatsError,
    FeatureStats,
    Normalizer,
    StatsAccumulator,
    compute_dataset_stats,
    load_stats,
    save_stats,
)
from lbm.data.windows import WindowDataset, collate_windows

__all__ = [
    "DatasetWriter",
    "DegenerateStatsError",
    "EpisodeDataset",
    "FeatureStats",
    "GenerateSummary",
    "Mixture",
    "Normalizer",
    "StatsAccumulator",
    "WindowDataset",
    "collate_windows",
    "compute_dataset_stats",
    "generate_demos",
    "load_stats",
    "save_stats",
]
