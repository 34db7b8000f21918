"""The paper's published numbers, as data, with provenance.

Source: the only numeric results available for Ren et al. (arXiv 2501.15963, ICLR 2026) are in a third-party paper
note ([PN]: GitHub ``zhaoyang97/Paper-Notes-en``, ``docs/ICLR2026/optimization/
evaluating_data_influence_in_meta_learning.md``), copied in ``/work/shared/reference/paper-meta-influence.md`` §5.3
(main table), §5.4 (MNIST detection ablation, values read off a figure, approximate) and §6 (runtimes, the same
numbers as the RT column). The paper's own text was not available. Hardware, shots, ways and backbone are not
stated in any source, so our runtimes and accuracies are compared in shape, not expected to match.

A result table row refers to a target with ``"paper_ref": "<target id>"``; the report then shows the target's
values beside our columns of the same name (``acc``, ``runtime_s``, ...). Only measured values ever go in our
columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

PN_MAIN = ("[PN] main table, ICLR version: accuracy after removing the 40% most harmful data (tasks or "
           "instances) and retraining (Retrain rows) or editing the model by the IF (IF rows); RT in seconds")
PN_DETECTION = ("[PN] MNIST harmful-data detection ablation, 'MNIST with 80% tasks having flipped labels'; "
                "values are approximate (read off a figure) and the noise protocol is not stated")


@dataclass(frozen=True)
class PaperTarget:
    """One row of a paper table: ``values[dataset][metric]``, from ``source``."""

    experiment: str
    label: str
    values: Mapping[str, Mapping[str, float]]
    source: str
    approximate: bool = False


def _main(label: str, omniglot: tuple[float, float], mini: tuple[float, float]) -> PaperTarget:
    return PaperTarget(
        experiment="E1",
        label=label,
        values={
            "omniglot": {"acc": omniglot[0], "runtime_s": omniglot[1]},
            "miniimagenet": {"acc": mini[0], "runtime_s": mini[1]},
        },
        source=PN_MAIN,
    )


PAPER_TARGETS: Mapping[str, PaperTarget] = MappingProxyType({
    "main/task/retrain": _main("Task-level: Retrain (GT)", (0.7908, 316.74), (0.3071, 682.56)),
    "main/task/task_if": _main("Task-level: Task-IF", (0.7804, 65.69), (0.2668, 74.63)),
    "main/task/direct_if": _main("Task-level: Direct-IF", (0.5422, 7.46), (0.2214, 10.24)),
    "main/task/ekfac_if": _main("Task-level: EKFAC IF", (0.4872, 631.90), (0.1868, 1937.42)),
    # [PN]'s TRAK and TracIn Mini-ImageNet cells are nearly identical: possibly a transcription error in [PN].
    "main/task/trak": _main("Task-level: TRAK", (0.3076, 1022.52), (0.2592, 1154.17)),
    "main/task/tracin": _main("Task-level: TracIn", (0.7690, 375.42), (0.2592, 1154.16)),
    "main/instance/retrain_train": _main("Instance-level: Retrain (Train)", (0.7852, 251.76), (0.3263, 392.24)),
    "main/instance/instance_if_train": _main("Instance-level: Instance-IF (Train)", (0.7686, 4.49), (0.2854, 7.17)),
    "main/instance/retrain_val": _main("Instance-level: Retrain (Val)", (0.7895, 260.48), (0.3222, 358.49)),
    "main/instance/instance_if_val": _main("Instance-level: Instance-IF (Val)", (0.7790, 5.53), (0.2767, 7.47)),
    # The "~45% found at 95% inspected" random value in [PN] is self-contradictory (random inspection of 95%
    # finds ~95%); it is left out.
    "detection/influence": PaperTarget(
        experiment="E2",
        label="Detection: influence-score ordering",
        values={"mnist": {"test_acc_at_25": 0.625, "found_at_40": 1.0}},
        source=PN_DETECTION,
        approximate=True,
    ),
    "detection/random": PaperTarget(
        experiment="E2",
        label="Detection: random ordering",
        values={"mnist": {"test_acc_at_25": 0.55, "found_at_40": 0.40}},
        source=PN_DETECTION,
        approximate=True,
    ),
})


def targets_for(experiment: str, dataset: str) -> dict[str, PaperTarget]:
    """The targets of one experiment that have values for ``dataset``."""
    return {key: t for key, t in PAPER_TARGETS.items() if t.experiment == experiment and dataset in t.values}
