"""How runner writes a moment: UTC, ISO 8601 to the millisecond, with `Z`.

Its own room (runner.identity re-exports it) so that `runner status` and `history` can
read and write times without importing what identifies a run (socket, uuid, dataclasses).
Imports `datetime` only, which sqlite3 imports anyway.
"""

from __future__ import annotations

from datetime import UTC, datetime

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (its cost)
if not TYPE_CHECKING:
    def overload(function):  # in effect what typing.overload does at run time
        return function
else:
    from typing import overload


def utc_now() -> datetime:
    return datetime.now(UTC)


@overload
def iso(moment: datetime) -> str: ...
@overload
def iso(moment: None) -> None: ...
@overload
def iso(moment: datetime | None) -> str | None: ...


def iso(moment: datetime | None) -> str | None:
    """`2026-11-23T10:00:00.123Z`: how times are written everywhere runner writes them."""
    if moment is None:
        return None
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"
