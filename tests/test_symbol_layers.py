"""Per-symbol figures layered instead of copied (projections.stats.SymbolLayers): a close on a
book that shares its sums with the book it succeeded (the Ledger's, one per command) writes a
small recent layer over the shared figures rather than a copy of every symbol's. What a book
shows is unchanged by it: old books never change, a rebuild, the incremental fold (a successor
per event, as the Ledger folds) and a snapshot plus its tail agree, and positions.json is the
same bytes as the plain dicts gave."""

from __future__ import annotations

from decimal import Decimal
from unittest.mock import patch

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.events import AnyEvent, FundingRecorded, PositionClosed, PositionOpened
from ledger.values import Side
from projections import stats
from projections.book import Book, fold_records
from projections.snapshot import decode_snapshot, encode_snapshot
from projections.stats import Accumulators, SymbolLayers, SymbolStats, exact_sums
from tests._events import AT, recorded_in_order

# one step of a history: close a new position on symbol i of account a with this PnL, or
# settle funding on an earlier closed position (it amends that close's figures)
_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("close"),
            st.integers(0, 40),  # the symbol (many: the tables grow past the threshold)
            st.sampled_from(["default", "second"]),
            st.integers(-50, 50),
        ),
        st.tuples(st.just("funding"), st.integers(0, 200), st.just(""), st.integers(-5, 5)),
    ),
    max_size=120,
)


def _events(steps: list[tuple[str, int, str, int]]) -> list[AnyEvent]:
    events: list[AnyEvent] = []
    closed: list[str] = []
    for n, (kind, which, account, amount) in enumerate(steps):
        if kind == "funding":
            if closed:
                position_id = closed[which % len(closed)]
                events.append(
                    FundingRecorded(
                        position_id=position_id, amount=Decimal(amount), execution_id=f"f{n}"
                    )
                )
            continue
        position_id = f"p{n}"
        events.append(
            PositionOpened(
                position_id=position_id,
                symbol=f"S{which}USDT",
                side=Side.BUY,
                qty=Decimal(1),
                entry_price=Decimal(100),
                leverage=2,
                account=account,
            )
        )
        events.append(
            PositionClosed(
                position_id=position_id,
                qty=Decimal(1),
                price=Decimal(100 + amount),
                realized_pnl=Decimal(amount),
                reason="t",
            )
        )
        closed.append(position_id)
    return events


def _sums(book: Book) -> tuple[bytes, bytes]:
    """Every figure of the book's sums, read without flattening them (reading `acc` or
    `accounts` flattens the book's tables: the next close would then start from a plain
    dict, and the layers over layers would go untested)."""
    return (
        exact_sums(book._acc),
        msgspec.json.encode({name: exact_sums(acc) for name, acc in book._accounts.items()}),
    )


@settings(max_examples=60, deadline=None)
@given(steps=_steps, threshold=st.integers(0, 12), data=st.data())
def test_layered_figures_never_change_old_books_and_fold_as_a_rebuild(
    steps: list[tuple[str, int, str, int]], threshold: int, data: st.DataObject
) -> None:
    records = recorded_in_order(_events(steps))
    with patch.object(stats, "LAYERED_FROM", threshold):
        # as the Ledger folds: a successor per event, each book kept by a "caller"
        book = Book()
        held: list[tuple[Book, tuple[bytes, bytes]]] = []
        for record in records:
            book = book.successor()
            book.apply(record)
            held.append((book, _sums(book)))
        assert any(type(old._acc.per_symbol) is SymbolLayers for old, _ in held) or (
            len({event.symbol for event in _events(steps) if type(event) is PositionOpened})
            <= threshold
        )
        # every book a caller holds still reads what it read when it was published
        assert [_sums(old) for old, _ in held] == [seen for _, seen in held]
        # and is the rebuild of its prefix of the log, positions.json byte for byte
        for n, (old, _) in enumerate(held, start=1):
            assert encode_snapshot(old, AT) == encode_snapshot(fold_records(records[:n]), AT)

        rebuilt = fold_records(records)
        cut = data.draw(st.integers(0, len(records)), label="cut")
        resumed = decode_snapshot(encode_snapshot(fold_records(records[:cut]), AT))
        resumed.apply_all(records[cut:])
        for other in (rebuilt, resumed):
            assert other.acc == book.acc
            assert other.accounts == book.accounts
            assert other.summary() == book.summary()
    # and positions.json is the same bytes as plain dicts give (the fold's own, no layers)
    plain = fold_records(records)
    assert type(plain._acc.per_symbol) is dict
    snapshot = encode_snapshot(plain, AT)
    assert encode_snapshot(book, AT) == encode_snapshot(resumed, AT) == snapshot


def _closes(symbols: list[str]) -> list[AnyEvent]:
    return _events([("close", int(s), "default", 1) for s in symbols])


def test_a_close_on_a_successor_layers_the_shared_figures_instead_of_copying_them() -> None:
    """A book of many symbols and its successor: the successor's close writes a layer over
    the figures the two share (the same dict, never written), not a copy of them."""
    records = recorded_in_order(_closes([str(i) for i in range(stats.LAYERED_FROM + 5)]))
    book = fold_records(records[:-2])
    shared = book._acc.per_symbol
    assert type(shared) is dict and len(shared) >= stats.LAYERED_FROM
    before = dict(shared)
    after = book.successor()
    after.apply_all(records[-2:])
    table = after._acc.per_symbol
    assert isinstance(table, SymbolLayers)
    assert table.base is shared and shared == before  # shared, and untouched
    assert list(table) == list(fold_records(records).acc.per_symbol)
    # read from outside, a plain dict again, equal to the rebuild's, in its order
    assert type(after.acc.per_symbol) is dict
    assert list(after.acc.per_symbol.items()) == list(fold_records(records).acc.per_symbol.items())
    assert type(book.acc.per_symbol) is dict and book.acc.per_symbol == before


def test_one_account_keeps_one_table_for_the_fleet_and_itself_when_flattened() -> None:
    """Two accounts' sums that share one layered table (the fleet's and a lone account's,
    `record_close_beside`) hold one dict once a reader flattens them."""
    table = SymbolLayers({"A": SymbolStats(closed_trades=1)}, {"B": SymbolStats(wins=1)}, 1)
    fleet, account = Accumulators(per_symbol=table), Accumulators(per_symbol=table)
    book = Book()
    book.acc, book.accounts = fleet, {"default": account}
    assert book.accounts["default"].per_symbol is book.acc.per_symbol
    assert book.acc.per_symbol == {"A": SymbolStats(closed_trades=1), "B": SymbolStats(wins=1)}


def test_layers_read_as_the_dict_they_stand_for() -> None:
    """Order, length, lookups and equality of a layered table are those of the one dict
    written in place: the base's symbols first (with their recent figures), then new ones."""
    one, two, three = (SymbolStats(closed_trades=n) for n in (1, 2, 3))
    plain = {"A": one, "B": one}
    plain["C"] = two
    plain["A"] = three
    table = SymbolLayers({"A": one, "B": one}, {"C": two}, 1)
    table.put("A", three)
    assert list(table.items()) == list(plain.items())
    assert len(table) == len(plain) == 3
    assert table == plain and plain == table
    assert "B" in table and "D" not in table and table.get("D") is None
    assert table.flat() == plain and list(table.flat()) == list(plain)
    assert exact_sums(Accumulators(per_symbol=table)) == msgspec.json.encode(
        Accumulators(per_symbol=plain)
    )


def test_figures_and_commands_are_no_work_for_the_cyclic_gc() -> None:
    """SymbolStats and commands are gc=False, as events and positions are: never part of a
    cycle (numbers, text, enums), so making them counts no allocation towards the cyclic GC's
    next collection (msgspec untracks such structs either way, but a gc=True one is still
    allocated as a GC object and counted: a collection every 700 of them). Their equality
    and encoding are unchanged by it."""
    import gc

    from ledger.commands import ClosePosition, OpenPosition

    def made(make: object) -> int:
        assert callable(make)
        gc.disable()
        try:
            before = gc.get_count()[0]
            kept = [make() for _ in range(200)]
            counted = gc.get_count()[0] - before
        finally:
            gc.enable()
        assert len(kept) == 200
        return counted

    def open_command() -> OpenPosition:
        return OpenPosition(
            position_id="p",
            symbol="S",
            side=Side.BUY,
            qty=Decimal(1),
            entry_price=Decimal(1),
            leverage=1,
        )

    for make in (SymbolStats, open_command, lambda: ClosePosition(position_id="p")):
        assert made(make) < 20  # the list's own allocations, not one per object
    figures = SymbolStats(closed_trades=1, realized_pnl=Decimal("1.5"))
    assert figures == SymbolStats(closed_trades=1, realized_pnl=Decimal("1.5"))
    assert msgspec.json.decode(msgspec.json.encode(figures), type=SymbolStats) == figures
