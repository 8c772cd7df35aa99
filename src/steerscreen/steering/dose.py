"""Dose calibration (docs/method.md §2): the strength s at which random directions cost a fixed KL.

``alpha = s * r`` with r the median residual norm at the hook. The calibrated s makes 32 random
unit directions give a mean KL(p_clean || p_steered) of ``target_kl`` (0.25 nats) on the
calibration contexts, within a relative tolerance (5%), so doses are comparable across models,
layers and widths.

The search is a bracketing bisection in log s. Inside a bracket the next point is the log-log
interpolation (KL grows about as s^2 for small doses), kept to the middle 80% of the bracket so
the bracket always shrinks geometrically; before a bracket exists, s steps by the power-law
estimate, clamped to a factor 1.25-4 per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from steerscreen.errors import SteerscreenError


@dataclass(frozen=True)
class Calibration:
    """What the search found (recorded in the manifest)."""

    strength: float
    kl: float  # mean KL at ``strength``
    target_kl: float
    tolerance: float
    converged: bool
    evaluations: list[tuple[float, float]] = field(default_factory=list)  # (s, mean KL)


def calibrate(mean_kl: Callable[[float], float], *, target_kl: float = 0.25,
              tolerance: float = 0.05, s0: float = 0.25, max_evaluations: int = 16,
              log: Callable[[str], None] | None = None) -> Calibration:
    """Find s with ``|mean_kl(s) / target_kl - 1| <= tolerance`` (``mean_kl`` is increasing).

    Raises :class:`SteerscreenError` when no dose reaches the target (a model the hook cannot
    move, or NaN), and returns the closest evaluated s with ``converged=False`` when the
    evaluation budget runs out.
    """
    if not (target_kl > 0 and 0 < tolerance < 1 and s0 > 0):
        raise ValueError("target_kl, tolerance and s0 must be positive (tolerance < 1)")
    say = log or (lambda _m: None)
    lo: tuple[float, float] | None = None  # (log s, log kl) below the target
    hi: tuple[float, float] | None = None
    hist: list[tuple[float, float]] = []
    s = s0
    for _ in range(max_evaluations):
        kl = float(mean_kl(s))
        hist.append((s, kl))
        say(f"dose calibration: s = {s:.4g} -> mean KL {kl:.4g} nats (target {target_kl:g})")
        if not math.isfinite(kl):
            raise SteerscreenError(
                f"steering at s = {s:.4g} gave a non-finite KL ({kl})",
                "check the model and SAE for NaN/Inf, or pass explicit --strengths")
        if abs(kl / target_kl - 1) <= tolerance:
            return Calibration(s, kl, target_kl, tolerance, True, hist)
        point = (math.log(s), math.log(kl) if kl > 0 else -math.inf)
        if kl < target_kl:
            lo = point
        else:
            hi = point
        if lo is not None and hi is not None:
            width = hi[0] - lo[0]
            guess = lo[0] + 0.5 * width
            if math.isfinite(lo[1]) and hi[1] > lo[1]:
                guess = lo[0] + (math.log(target_kl) - lo[1]) * width / (hi[1] - lo[1])
            s = math.exp(min(max(guess, lo[0] + 0.1 * width), hi[0] - 0.1 * width))
        else:
            step = 4.0 if kl <= 0 else math.sqrt(target_kl / kl)
            step = min(max(step, 1.25), 4.0) if kl < target_kl else 1 / min(max(1 / step, 1.25),
                                                                          4.0)
            s *= step
            if s > 1e4:
                raise SteerscreenError(
                    f"even s = {s / step:.4g} (alpha = s x residual norm) moves the output "
                    f"distribution by only {kl:.3g} nats, short of the {target_kl:g} target",
                    "steer at another hook, or pass explicit --strengths")
    best = min(hist, key=lambda h: abs(h[1] / target_kl - 1))
    say(f"dose calibration did not reach {tolerance:.0%} of the target in {max_evaluations} "
        f"evaluations; using s = {best[0]:.4g} (KL {best[1]:.4g})")
    return Calibration(best[0], best[1], target_kl, tolerance, False, hist)
