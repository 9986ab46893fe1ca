"""Pre-training methods: one file per method (``methods/<key>.py``), registered in METHODS."""

from cxrbench.registry import Registry

METHODS: Registry[type] = Registry("method", "cxrbench.methods")
