"""SynthCXR: a deterministic synthetic chest X-ray world written in the official dataset formats."""

from .generate import CORPUS_VERSION, MANIFEST, generate, stale_reason
from .presets import PRESETS, Difficulty, Preset

__all__ = [
    "CORPUS_VERSION",
    "MANIFEST",
    "PRESETS",
    "Difficulty",
    "Preset",
    "generate",
    "stale_reason",
]
