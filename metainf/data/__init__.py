"""Datasets and fixed, seeded task pools."""

from metainf.data.tasks import ClassImages, TaskPool, sample_task_pool

__all__ = ["ClassImages", "TaskPool", "sample_task_pool"]
