"""Downstream tasks: one file per task (``tasks/<dataset>_<kind>.py``), registered in TASKS."""

from cxrbench.registry import Registry

TASKS: Registry[type] = Registry("task", "cxrbench.tasks")
