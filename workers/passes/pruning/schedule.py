"""Gradual pruning: the sparsity grows while the model trains, instead of being cut in one shot.

The polynomial schedule of Zhu & Gupta (2017, "To prune, or not to prune"): at pruning step t of T,
``s(t) = s_f + (s_i − s_f)·(1 − t/T)^exponent`` — fast at first, while the network has redundancy to spare,
slowly at the end. ``prune.magnitude`` re-prunes by magnitude at T evenly spaced optimizer steps over the first
``ramp`` share of training and fine-tunes at the final sparsity for the rest; ``prune.structured`` removes
channels in T stages, each followed by its share of the epochs.
"""

from __future__ import annotations

from pydantic import Field

from workers.passes.training.loop import TrainingParams


class Schedule(TrainingParams):
    """Training on the ``training`` dataset while pruning; ``epochs`` covers the whole schedule."""

    epochs: int = Field(default=8, ge=2, le=1000, description="Passes over the training data, ramp included.")
    initial: float = Field(default=0.0, ge=0, lt=1, description="Sparsity (channel ratio) at the first step.")
    exponent: float = Field(default=3.0, gt=0, le=10, description="Polynomial decay exponent (3 in the paper).")
    steps: int = Field(default=10, ge=2, le=1000, description="Pruning steps from `initial` to the target.")
    ramp: float = Field(default=0.75, gt=0, le=1, description="Share of training over which the sparsity grows; "
                        "the rest fine-tunes at the target.")


def sparsity_at(step: int, final: float, schedule: Schedule) -> float:
    """The target sparsity after pruning step ``step`` (1 … steps)."""
    done = min(step / schedule.steps, 1.0)
    return final + (schedule.initial - final) * (1 - done) ** schedule.exponent
