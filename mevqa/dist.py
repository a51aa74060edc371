"""Which process am I, among those `accelerate launch` / torchrun started: the one home of that question
for eval, cross-validation and spotting (training asks accelerate's own `Accelerator`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's share of a run under `accelerate launch` / torchrun (eval, cv, spot): whole groups
    (a clip's questions stay together for the shared prefix), round-robin; each process appends to its
    own part file and the main process merges them."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls, device: str = "auto") -> Shard:
        if int(os.environ.get("WORLD_SIZE", "1")) < 2:
            return cls()
        from accelerate import PartialState  # only under a launcher: alone, accelerate is ~1 s of imports

        from mevqa.models.loading import pick_device

        # starts the process group (gloo on CPU, nccl on GPUs); without cpu=True a CPU run stays 1 process
        state = PartialState(cpu=pick_device(device) == "cpu")
        return cls(state.process_index, state.num_processes)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def take(self, groups: list[list[T]]) -> list[T]:
        """This process's groups (round-robin), flattened: a group (a clip's questions) stays whole."""
        return [r for g in groups[self.rank :: self.world] for r in g]

    def part(self, out: Path) -> Path:
        return out / (f"predictions.rank{self.rank}.jsonl" if self.world > 1 else "predictions.jsonl")

    def device(self, device: str) -> str:
        """Under several processes each takes its own GPU (`auto` would put them all on cuda:0)."""
        if self.world < 2 or device != "auto":
            return device
        from accelerate import PartialState

        return str(PartialState().device)

    def barrier(self) -> None:
        if self.world > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()
