"""Retry policy: how many attempts a step gets and how long to wait between them."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ._errors import ConfigError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter (the AWS "full jitter" scheme).

    The wait before attempt ``n + 1`` is a uniformly random value in
    ``[ (1 - jitter) * d, d ]`` where ``d = min(max_delay, initial_delay * multiplier**(n-1))``.
    ``jitter=0`` gives the plain exponential sequence (useful in tests); ``jitter=1``
    spreads retries over the whole window so that many failing workflows do not retry
    in lockstep.

    Args:
        max_attempts: total attempts including the first; 1 means never retry.
        initial_delay: seconds before the second attempt (before jitter).
        max_delay: upper bound on any one delay, in seconds.
        multiplier: growth factor between consecutive delays.
        jitter: fraction of each delay that is randomised, 0.0 to 1.0.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(
                f"RetryPolicy max_attempts must be at least 1, got {self.max_attempts}"
            )
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ConfigError(
                f"RetryPolicy delays must be >= 0, got initial_delay={self.initial_delay}, "
                f"max_delay={self.max_delay}"
            )
        if self.multiplier < 1:
            raise ConfigError(f"RetryPolicy multiplier must be >= 1, got {self.multiplier}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ConfigError(f"RetryPolicy jitter must be between 0 and 1, got {self.jitter}")

    def base_delay(self, attempt: int) -> float:
        """The delay before the attempt after ``attempt``, without jitter."""
        exponent = max(0, attempt - 1)
        # Cap the exponent so a large attempt number cannot overflow the float.
        raw = self.initial_delay * self.multiplier ** min(exponent, 64)
        return float(min(self.max_delay, raw))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``attempt`` failed, before running ``attempt + 1``."""
        base = self.base_delay(attempt)
        if self.jitter == 0 or base == 0:
            return base
        r = (rng or random).random()
        return base * (1.0 - self.jitter * r)

    def allows_another(self, attempt: int) -> bool:
        """True when ``attempt`` (1-based) failed and another attempt is allowed."""
        return attempt < self.max_attempts


NO_RETRY = RetryPolicy(max_attempts=1, initial_delay=0.0, max_delay=0.0, jitter=0.0)
