"""Forward flux sampling (FFS) of a rare transition: a particle in a double well crossing its barrier.

Overdamped Langevin dynamics in V(x) = h (x^2 - 1)^2 at kT = 1: state A is x < A_EDGE, state B is
x > B_EDGE, and the barrier (h kT) makes A -> B rare. FFS splits the transition at interfaces
lambda_0 < ... < lambda_n = B_EDGE: the flux of trajectories leaving A through lambda_0 (`flux`),
then for each interface the probability that a trajectory started there reaches the next one
before falling back to A (`trials`, fired from the end points the previous stage collected). The
rate is flux x the product of those probabilities (`rate`); `first_passage` measures it by brute
force to compare. Every stage is a generation of jobs, each started from the last one's results.

>>> f = flux(seed=1, steps=20_000)
>>> f["crossings"] > 0 and len(f["configs"]) == f["crossings"]
True
>>> t = trials([f], stage=0, seed=2, n=5)
>>> t["tries"], 0 <= t["successes"] <= 5
(5, True)
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

HEIGHT = 4.0  # the barrier, in kT
DT = 1e-3
A_EDGE, B_EDGE = -0.9, 0.9
INTERFACES = (-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, B_EDGE)  # lambda_0 .. lambda_n


def _step(x: float, rng: random.Random) -> float:
    force = -4.0 * HEIGHT * x * (x * x - 1.0)
    return x + force * DT + math.sqrt(2.0 * DT) * rng.gauss(0.0, 1.0)


def flux(seed: int, steps: int = 200_000) -> dict[str, Any]:
    """Run in A for `steps` steps (sent back to A's minimum on reaching B); count the first
    crossings of lambda_0 after each visit to A, and keep where each crossing landed."""
    rng, x, armed = random.Random(seed), -1.0, True
    configs: list[float] = []
    for _ in range(steps):
        x = _step(x, rng)
        if x >= B_EDGE:
            x, armed = -1.0, True
        elif x < A_EDGE:
            armed = True
        elif armed and x >= INTERFACES[0]:
            configs.append(x)
            armed = False
    return {"time": steps * DT, "crossings": len(configs), "configs": configs}


def trials(previous: Sequence[dict[str, Any]], stage: int, seed: int, n: int = 20) -> dict[str, Any]:
    """`n` trajectories, each from an end point the previous stage collected (at interface
    `stage`), run until they reach interface `stage + 1` (a success: where it landed is kept) or
    fall back into A."""
    starts = [c for result in previous for c in result["configs"]]
    rng, target = random.Random(seed), INTERFACES[stage + 1]
    configs: list[float] = []
    for _ in range(n if starts else 0):
        x = rng.choice(starts)
        while A_EDGE <= x < target:
            x = _step(x, rng)
        if x >= target:
            configs.append(x)
    return {"tries": n if starts else 0, "successes": len(configs), "configs": configs}


def first_passage(seed: int, samples: int = 10) -> list[float]:
    """Brute force: `samples` times from A's minimum to B (no FFS)."""
    rng, times = random.Random(seed), []
    for _ in range(samples):
        x, t = -1.0, 0
        while x < B_EDGE:
            x, t = _step(x, rng), t + 1
        times.append(t * DT)
    return times


def rate(fluxes: Sequence[dict[str, Any]], stages: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """The FFS estimate: the flux through lambda_0 per unit time in A, each stage's crossing
    probability, and their product, the rate A -> B."""
    phi = sum(f["crossings"] for f in fluxes) / sum(f["time"] for f in fluxes)
    probabilities = [sum(r["successes"] for r in stage) / max(1, sum(r["tries"] for r in stage)) for stage in stages]
    return {"flux": phi, "probabilities": probabilities, "rate": phi * math.prod(probabilities)}
