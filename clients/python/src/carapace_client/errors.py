"""Errors raised by the client: every refusal of the hub carries its code."""

from __future__ import annotations


class CarapaceError(Exception):
    """The hub refused something, or the connection could not carry it.

    `code` is the hub's error code (`bad_request`, `forbidden`, `rate_limited`, ...) or one of
    the client's own: `disconnected` (the connection ended before the reply), `closed` (the
    hub closed the session for good), `timeout` (no reply in time).
    """

    def __init__(self, code: str, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


class RateLimited(CarapaceError):
    """`rate_limited` that the agent was told not to wait out (or that asked for too long)."""


class Disconnected(CarapaceError):
    """The connection ended while a command waited for its reply; it may or may not have run."""

    def __init__(self, message: str = "the connection ended before the reply") -> None:
        super().__init__("disconnected", message)


class Closed(CarapaceError):
    """The agent stopped for good: the hub closed with a code that forbids reconnecting
    (1002, 1007, 1009, 4000, 4001, 4003), refused the API key, or `close()` was called."""

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__("closed", message)
        self.close_code = close_code
