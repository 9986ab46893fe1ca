"""Losses shared by two or more pre-training methods (InfoNCE, local alignment, prototypes, ...)."""
