"""Random initialisation — the lower-bound row of every MGCA-protocol table.

Nothing is trained: the backbone is initialised (seeded by the pre-training seed) exactly as its
builder does, and exported as an artifact like any method, so it is evaluated by the same tasks.
"""

from __future__ import annotations

from cxrbench.methods import METHODS
from cxrbench.methods.base import PretrainMethod


@METHODS.register("random_init")
class RandomInit(PretrainMethod):
    needs_text = False
    trains = False
