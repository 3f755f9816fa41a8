"""A test-only env for learning tests: walk right along a corridor of 1-2 cells (sparse reward at the end).

Loaded by path from the trainer tests (``load_corridor()``) and registered as
``turngym-test/Corridor-v0``. Its vocabulary fits the word-level tokenizer of
``word_tokenizer()``, so a tiny random model samples "right" often enough
(about 1 token in 18) for GRPO to find a signal within a few iterations.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from turngym.envs.core import TextEnv, Transition

ENV_ID = "turngym-test/Corridor-v0"
WORDS = ["left", "right", "stay", "jump", "you", "are", "at", "of", "go", ".", "0", "1", "2", "3"]


class CorridorEnv(TextEnv):
    """Walk right to the end of a corridor."""

    def splits(self) -> dict[str, int]:
        return {"train": 64, "test": 16}

    def load_task(self, split: str, index: int) -> dict[str, Any]:
        return {"length": 1 + (index % 2)}

    def validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        if int(task.get("length", 0)) < 1:
            raise ValueError("corridor task needs length >= 1")
        return {"length": int(task["length"])}

    def _start(self, task: dict[str, Any]) -> str:
        self.length = task["length"]
        self.pos = 0
        return self._describe()

    def _describe(self) -> str:
        return f"you are at {self.pos} of {self.length} ."

    @property
    def instruction(self) -> str:
        return "go right"

    def _apply(self, action: str) -> Transition:
        word = (action.strip().split() or [""])[0].lower()
        if word == "right":
            self.pos += 1
        elif word == "left":
            self.pos = max(0, self.pos - 1)
        else:
            return Transition(self._describe(), valid=False)
        done = self.pos >= self.length
        return Transition(self._describe(), valid=True, reward=1.0 if done else 0.0, terminated=done)

    @property
    def won(self) -> bool:
        return self.pos >= self.length

    def state_key(self) -> str:
        return f"{self.pos}/{self.length}"

    def _get_state(self) -> Any:
        return {"pos": self.pos, "length": self.length}

    def _set_state(self, state: Any) -> None:
        self.pos, self.length = int(state["pos"]), int(state["length"])

    def oracle_action(self) -> str:
        return "right"

    def admissible_actions(self) -> list[str] | None:
        return ["left", "right"]

    def progress(self) -> float | None:
        return min(1.0, self.pos / self.length)


def register() -> str:
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point=CorridorEnv, max_episode_steps=4)
    return ENV_ID


def word_tokenizer():
    """A word-level tokenizer over ``WORDS`` with ChatML special tokens and template."""
    from turngym.testing import word_chat_tokenizer

    return word_chat_tokenizer(["system", "user", "assistant", "\n", *WORDS])


def tiny_policy(tokenizer, seed: int = 0):
    from turngym.testing import tiny_llama

    return tiny_llama(tokenizer, hidden=32, intermediate=64, max_positions=256, init=0.02, seed=seed, eval_mode=False)
