"""What a failing dependency looks like to the layers above the backends.

`Unavailable` is raised for a dependency known to be down (its circuit breaker is open,
SMTP refused the connection): callers pause or answer 503, never 500. Driver errors are
the backends' business: each backend names its driver's base exception here when it is
built (`count_as_unavailable`), so Core can treat "the database or Redis failed" as one
case without importing a driver.
"""

from __future__ import annotations


class Unavailable(ConnectionError):
    """A dependency is down. A ConnectionError: every caller already treats it so."""


_UNAVAILABLE: tuple[type[BaseException], ...] = (OSError,)  # Unavailable is one


def count_as_unavailable(*kinds: type[BaseException]) -> None:
    """From now on, an exception of these kinds means a dependency failed."""
    global _UNAVAILABLE
    _UNAVAILABLE = tuple(dict.fromkeys(_UNAVAILABLE + kinds))


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """The exception kinds that mean a dependency failed (for an `except` clause)."""
    return _UNAVAILABLE
