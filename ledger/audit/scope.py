"""`--account`: the one way every audit command narrows itself to one account.

A position belongs to the account that opened it, and each of its later events with it; a
balance names its account. Ledger-wide events (rules, imports) belong to no account, so they
are left out of one account's view. `account=None` is the whole fleet.
"""

from __future__ import annotations

from ledger.events import (
    AnyEvent,
    BalanceObserved,
    HistoryImported,
    PositionOpened,
    RulesConfigured,
)

ACCOUNT_HELP = "only this account's (default: the whole fleet)"


def in_account(account: str | None, owner: str | None) -> bool:
    """Whether something owned by `owner` is in the view of `account` (None: every account)."""
    return account is None or owner == account


class EventOwners:
    """The account of each event, fed the log in order (a position's later events name only
    its id, so the opening is remembered)."""

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}

    def __call__(self, event: AnyEvent) -> str | None:
        if isinstance(event, PositionOpened):
            self._owner.setdefault(event.position_id, event.account)
            return event.account
        if isinstance(event, BalanceObserved):
            return event.account
        if isinstance(event, HistoryImported | RulesConfigured):
            return None
        return self._owner.get(event.position_id)
