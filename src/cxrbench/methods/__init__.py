"""Pre-training methods: one file per method (``methods/<key>.py``), registered in METHODS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrbench.registry import Registry

if TYPE_CHECKING:
    from cxrbench.methods.base import PretrainMethod

METHODS: Registry[type[PretrainMethod]] = Registry("method", "cxrbench.methods")
