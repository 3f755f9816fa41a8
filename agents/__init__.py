"""LLM agents for turngym envs: engines, agent policies, the batched episode runner.

Depends on ``turngym.envs`` (and ``turngym.errors``); nothing below it imports it.
Importing this package does not import torch (engines load it when built).
"""

from __future__ import annotations

from turngym.agents.factory import make_agent
from turngym.agents.runner import EpisodeRunner
from turngym.agents.types import (
    Completion,
    Prompt,
    SamplingParams,
    Step,
    Trajectory,
    load_trajectories,
    save_trajectories,
)

__all__ = ["Completion", "EpisodeRunner", "Prompt", "SamplingParams", "Step", "Trajectory", "load_trajectories",
           "make_agent", "save_trajectories"]
