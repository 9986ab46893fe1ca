"""Downstream tasks: one file per task (``tasks/<dataset>_<kind>.py``), registered in TASKS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrbench.registry import Registry

if TYPE_CHECKING:
    from cxrbench.tasks.base import Task

TASKS: Registry[type[Task]] = Registry("task", "cxrbench.tasks")
