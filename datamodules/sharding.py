"""Evaluation splits under DDP: every window on exactly one rank, none repeated, and no rank without a batch.

torch's ``DistributedSampler`` (what Lightning puts into every loader under DDP) pads a split to a multiple of the
number of ranks by repeating windows, and the metrics then count those windows twice. ``EvalShardSampler`` gives
rank r the windows r, r + R, r + 2R, ... instead. A rank whose share is empty (fewer windows than ranks) gets one
*placeholder*: a window with every target masked out, which adds nothing to any metric. It keeps that rank in step
with the others, which would otherwise skip the evaluation loop and with it the collective calls at its end (the
metrics' reduction, the checkpoint callback's broadcast), and wait for ever.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler


def placeholder(index: int) -> int:
    """The sampler index of window ``index`` with its targets masked out (``WindowDataset.collate`` reads it)."""
    return -1 - index


class EvalShardSampler(DistributedSampler):
    """Rank ``rank``'s share of an evaluation split of ``len(dataset)`` windows, in order, without padding.

    A ``DistributedSampler`` subclass, so Lightning keeps it instead of injecting its own padded one.

    Args:
        dataset: the split's dataset (only its length is read).
        num_replicas: R, the number of ranks (>= 1).
        rank: this rank, 0 <= rank < R.

    Raises:
        ValueError: a rank outside [0, R).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        n = len(dataset)
        self.indices = list(range(rank, n, num_replicas))
        if not self.indices and n > 0:  # fewer windows than ranks: a masked copy of the first window
            self.indices = [placeholder(0)]
        self.num_samples = len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples
