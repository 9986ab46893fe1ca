"""SynthCXR: a deterministic synthetic chest X-ray world written in the official dataset formats."""

from .generate import generate
from .presets import PRESETS, Difficulty, Preset

__all__ = ["PRESETS", "Difficulty", "Preset", "generate"]
