"""Choose k verified negatives per positive: random (seeded), hardest (closest to the positive), diverse."""

from __future__ import annotations

import hashlib
import random
from typing import Callable, Sequence

Similarity = Callable[[str, str], float]


def select(positive: str, negatives: Sequence[str], k: int, strategy: str, seed: str,
           similarity: Similarity) -> list[int]:
    """Indices of the chosen negatives, in choice order.

    ``random``: a seeded sample. ``hardest``: highest similarity to the positive. ``diverse``: greedy
    max-min: start from the hardest, then repeatedly add the one least similar to those already chosen
    (ties broken by closeness to the positive).
    """
    n = len(negatives)
    if k >= n:
        order = list(range(n))
    elif strategy == "random":
        rng = random.Random(int(hashlib.sha256(f"{seed}|{positive}".encode()).hexdigest()[:16], 16))
        order = sorted(rng.sample(range(n), k))
    elif strategy == "hardest":
        sims = [similarity(positive, t) for t in negatives]
        order = sorted(range(n), key=lambda i: (-sims[i], i))[:k]
    elif strategy == "diverse":
        sims = [similarity(positive, t) for t in negatives]
        chosen = [max(range(n), key=lambda i: (sims[i], -i))]
        while len(chosen) < k:
            rest = [i for i in range(n) if i not in chosen]
            chosen.append(max(rest, key=lambda i: (-max(similarity(negatives[i], negatives[j]) for j in chosen), sims[i], -i)))
        order = chosen
    else:
        raise ValueError(f"selection strategy: got {strategy!r}, expected 'random', 'hardest' or 'diverse'")
    return order[:k]
