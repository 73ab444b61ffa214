"""Zipf-like key skew (pure): a few hot products get most of the traffic, like real catalogues."""

from __future__ import annotations

import random
from itertools import accumulate


class ZipfSampler:
    """Draws ids first..last where the id of rank r (first = rank 1) has weight 1 / r**s.

    s = 0 is uniform; s = 1 sends about 8% of 100k-id traffic to the hottest id. Low ids are
    the hot ones, so the first page of every category holds hot products too.
    """

    def __init__(self, first: int, last: int, s: float, rng: random.Random | None = None) -> None:
        if last < first:
            raise ValueError("empty id range")
        self.first = first
        self.count = last - first + 1
        self._rng = rng or random.Random()
        self._cum = (
            None if s == 0 else list(accumulate(1.0 / rank**s for rank in range(1, self.count + 1)))
        )

    def __call__(self) -> int:
        if self._cum is None:
            return self.first + self._rng.randrange(self.count)
        return self.first + self._rng.choices(range(self.count), cum_weights=self._cum)[0]

    def share_of_top(self, n: int) -> float:
        """The expected share of draws that hit the n hottest ids."""
        if self._cum is None:
            return min(n, self.count) / self.count
        return float(self._cum[min(n, self.count) - 1] / self._cum[-1])
