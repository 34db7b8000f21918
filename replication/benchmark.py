"""The standard benchmark a new attribution method is reported on, and its version.

:data:`BENCHMARK_VERSION` changes whenever a change to the experiments, their configs or the metrics below would
change a committed number; every result file records it (``benchmark_version``), and so does every leaderboard,
so that numbers are compared only within one version.

The benchmark (per dataset, default :data:`DATASET`): E1 meta-test accuracy after removing the 40% most harmful
units by the method's scores and retraining (higher is better); E2 area under the found-vs-inspected curve of
flipped-label units (higher is better); E3 Spearman correlation with converged leave-one-out retraining, and LDS
where the results hold it (higher is better). Each is read from the result's aggregate metrics
``<group>.<method>.<leaf>`` whose leaf matches the experiment's pattern in :data:`METRICS`.
"""

from __future__ import annotations

import re
from types import MappingProxyType

BENCHMARK_VERSION = "1"
DATASET = "mnist"
#: experiment -> pattern of the metric leaf (the part after ``<group>.<method>.``) that enters the benchmark
METRICS = MappingProxyType({
    "E1": re.compile(r"(task|support|query)_retrain_acc"),
    "E2": re.compile(r"(task|support|query)_auc"),
    "E3": re.compile(r"(task|support|query)_(converged_spearman|lds)"),
})
#: second components of metric names that are not attribution methods (reference rows and bookkeeping)
NOT_METHODS = frozenset({"full", "gt", "oracle", "ground_truth", "skipped", "configs"})
