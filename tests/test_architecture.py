"""The layer rules of DESIGN.md, checked by reading every module's imports with `ast`.

To classify a new module, add it to LAYERS (exact module, or a package prefix ending in ".*").
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ledger", "projections")

# module (or "package.*" for everything under it) -> layer
LAYERS: dict[str, int] = {
    # L0 data
    "ledger.errors": 0,
    "ledger.values": 0,
    "ledger.events": 0,
    "ledger.envelope": 0,
    "ledger.codec": 0,
    "ledger.clock": 0,
    "ledger.commands": 0,
    # L1 pure logic
    "projections": 1,
    "projections.*": 1,
    "ledger.rules": 1,
    "ledger.audit_rules": 1,
    "ledger.seed_edge": 1,
    # importing any exchange module runs the package's __init__: keep it as light as L1
    "ledger.exchange": 1,
    "ledger.exchange.observations": 1,
    "ledger.exchange.reconcile": 1,
    "ledger.exchange.exit_rules": 1,
    # L2 I/O
    "ledger.store": 2,
    "ledger.store.*": 2,
    "ledger.snapshot_file": 2,
    "ledger.private_files": 2,
    "ledger.output_paths": 2,
    "ledger.settings": 2,
    "ledger.exchange.ccxt_client": 2,
    "ledger.exchange.emulator": 2,
    "ledger.exchange.emulator.*": 2,
    # L3 orchestration
    "ledger.service": 3,
    "ledger.rebuild": 3,
    "ledger.blocking": 3,
    "ledger.exchange.sync": 3,
    "ledger.exchange.service": 3,
    "ledger.audit": 3,
    "ledger.audit.*": 3,
    "ledger.seed_import": 3,
    # L4 entry points
    "ledger": 4,
    "ledger.cli": 4,
    "ledger.cli.*": 4,
    "ledger.demo": 4,
    "ledger.watch": 4,
    "ledger.plot": 4,
}
L4_PREFIXES = ("ledger.cli",)  # new modules here default to L4

# third-party packages -> the lowest layer that may import them ...
THIRD_PARTY_FROM_LAYER: dict[str, int] = {
    "msgspec": 0,
    "anyio": 2,
    "aiohttp": 2,
    "rich": 4,
    "matplotlib": 4,
}
# ... or, for drivers that must stay behind one adapter, the only modules that may.
THIRD_PARTY_ONLY_IN: dict[str, tuple[str, ...]] = {
    "aiosqlite": ("ledger.store.sqlite",),
    "psycopg": ("ledger.store.postgres",),
    "ccxt": ("ledger.exchange.ccxt_client", "ledger.exchange.emulator.client"),
}
# Standard-library modules that do I/O (files, network, processes, threads, the clock):
# L0 and L1 must stay pure.
IO_STDLIB = frozenset(
    {
        "asyncio", "concurrent", "glob", "http", "io", "logging", "multiprocessing", "os",
        "pathlib", "select", "selectors", "shutil", "signal", "socket", "sqlite3", "ssl",
        "subprocess", "tempfile", "threading", "time", "urllib",
    }
)  # fmt: skip
# Package roots that only entry points may import names from (re-exports live there).
ROOT_IMPORT_ALLOWED = frozenset({"ledger", "ledger.cli", "ledger.demo"})


@dataclass(frozen=True)
class Import:
    module: str  # the imported module, absolute
    names: tuple[str, ...]  # for `from m import a, b`; empty for `import m`
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def our_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def is_package(name: str) -> bool:
    path = our_modules().get(name)
    return path is not None and path.name == "__init__.py"


def parse_imports(name: str, source: str) -> list[Import]:
    """Every import in a module's source (nested ones too), made absolute."""
    tree = ast.parse(source)
    package = name if is_package(name) else name.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, (), node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append(Import(base, tuple(a.name for a in node.names), node.lineno))
    return found


def imports_of(name: str) -> list[Import]:
    return parse_imports(name, our_modules()[name].read_text(encoding="utf-8"))


def layer_of(name: str) -> int | None:
    if name in LAYERS:
        return LAYERS[name]
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        wildcard = ".".join(parts[:cut]) + ".*"
        if wildcard in LAYERS:
            return LAYERS[wildcard]
    if name.startswith(L4_PREFIXES):
        return 4
    return None


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        if pattern.endswith(".*"):
            if name.startswith(pattern[:-1]):
                return True
        elif name == pattern:
            return True
    return False


def targets(item: Import) -> list[str]:
    """Our modules an import reaches: `from pkg import sub` reaches pkg.sub, not pkg's names."""
    submodules = [f"{item.module}.{a}" for a in item.names if f"{item.module}.{a}" in our_modules()]
    if item.names and len(submodules) == len(item.names):
        return submodules
    return [item.module, *submodules]


def is_ours(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


MODULES = sorted(our_modules())


# -- the rules: each returns what is wrong with one module's imports --------------------


def layer_violations(name: str, imports: list[Import]) -> list[str]:
    own = layer_of(name)
    assert own is not None
    wrong: list[str] = []
    for item in imports:
        for target in targets(item):
            if not is_ours(target) or target == name:
                continue
            theirs = layer_of(target)
            if theirs is None or theirs > own:
                wrong.append(f"line {item.line}: {target} (L{theirs}) from L{own}")
    return wrong


def purity_violations(name: str, imports: list[Import]) -> list[str]:
    """L0 imports only L0; L0 and L1 import no I/O and no third party but msgspec."""
    own = layer_of(name)
    bad: list[str] = []
    for item in imports:
        top = item.module.split(".")[0]
        if top == "__future__":
            continue
        if is_ours(item.module):
            if own == 0 and any(layer_of(t) != 0 for t in targets(item)):
                bad.append(f"line {item.line}: {item.module} (L0 imports only L0)")
        elif top in sys.stdlib_module_names:
            if top in IO_STDLIB:
                bad.append(f"line {item.line}: {item.module} does I/O")
        elif top != "msgspec":
            bad.append(f"line {item.line}: third-party {item.module}")
    return bad


def third_party_violations(name: str, imports: list[Import]) -> list[str]:
    own = layer_of(name)
    assert own is not None
    bad: list[str] = []
    for item in imports:
        top = item.module.split(".")[0]
        if is_ours(item.module) or top in sys.stdlib_module_names or top == "__future__":
            continue
        if top in THIRD_PARTY_ONLY_IN:
            allowed = THIRD_PARTY_ONLY_IN[top]
            if not matches(name, allowed):
                bad.append(f"line {item.line}: {item.module} only in {', '.join(allowed)}")
        elif top in THIRD_PARTY_FROM_LAYER:
            lowest = THIRD_PARTY_FROM_LAYER[top]
            if own < lowest:
                bad.append(f"line {item.line}: {item.module} only from L{lowest} up")
        else:
            bad.append(f"line {item.line}: {item.module} is not a known dependency")
    return bad


def store_meaning_violations(name: str, imports: list[Import]) -> list[str]:
    """The store stores envelopes and bytes: no projections, rules or commands."""
    return [
        f"line {item.line}: {target}"
        for item in imports
        for target in targets(item)
        if target.startswith("projections") or target in ("ledger.rules", "ledger.commands")
    ]


def root_import_violations(name: str, imports: list[Import]) -> list[str]:
    """`from ledger import X` goes through the re-exports: import the defining module."""
    bad: list[str] = []
    for item in imports:
        if not is_ours(item.module) or not is_package(item.module):
            continue
        if not item.names:
            bad.append(f"line {item.line}: import {item.module}")
        for alias in item.names:
            if f"{item.module}.{alias}" not in our_modules():  # a submodule is fine
                bad.append(f"line {item.line}: from {item.module} import {alias}")
    return bad


SERVICE = ("ledger.service", "ledger.blocking", "ledger.cli", "ledger.cli.*", "ledger.demo")


def service_violations(name: str, imports: list[Import]) -> list[str]:
    return [
        f"line {item.line}: {target}"
        for item in imports
        for target in targets(item)
        if matches(target, SERVICE)
    ]


# -- the tests -------------------------------------------------------------------------------


def test_the_scan_finds_the_modules_it_should() -> None:
    for expected in ("ledger.events", "ledger.store.sqlite", "projections.book", "ledger"):
        assert expected in MODULES
    assert {i.module for i in imports_of("ledger.store.sqlite")} >= {"aiosqlite", "ledger.errors"}


@pytest.mark.parametrize("name", MODULES)
def test_every_module_is_classified(name: str) -> None:
    assert layer_of(name) is not None, (
        f"{name} has no layer: add it to LAYERS in tests/test_architecture.py "
        "(L0 data, L1 pure logic, L2 I/O, L3 orchestration, L4 entry points; see DESIGN.md)"
    )


CLASSIFIED = [m for m in MODULES if layer_of(m) is not None]


@pytest.mark.parametrize("name", CLASSIFIED)
def test_imports_point_down_the_layers(name: str) -> None:
    wrong = layer_violations(name, imports_of(name))
    assert not wrong, f"{name} imports a higher or unclassified layer:\n" + "\n".join(wrong)


@pytest.mark.parametrize("name", [m for m in CLASSIFIED if (layer_of(m) or 0) <= 1])
def test_data_and_pure_logic_import_no_io(name: str) -> None:
    bad = purity_violations(name, imports_of(name))
    assert not bad, f"{name} (L{layer_of(name)}) must stay pure:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", CLASSIFIED)
def test_third_party_packages_stay_in_their_modules(name: str) -> None:
    bad = third_party_violations(name, imports_of(name))
    assert not bad, f"{name} (L{layer_of(name)}):\n" + "\n".join(bad)


@pytest.mark.parametrize("name", [m for m in MODULES if m.startswith("ledger.store")])
def test_the_store_never_imports_business_meaning(name: str) -> None:
    bad = store_meaning_violations(name, imports_of(name))
    assert not bad, f"{name} must store bytes, not meaning:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", [m for m in MODULES if m not in ROOT_IMPORT_ALLOWED])
def test_no_imports_from_a_package_root(name: str) -> None:
    bad = root_import_violations(name, imports_of(name))
    assert not bad, f"{name} imports from a package root:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", [m for m in CLASSIFIED if (layer_of(m) or 0) < 3])
def test_lower_layers_never_import_the_service(name: str) -> None:
    bad = service_violations(name, imports_of(name))
    assert not bad, f"{name}:\n" + "\n".join(bad)


_FRESH_IMPORTS = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("ledger", "projections")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\\n".join(failed))
"""


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """No import cycles: a bot may import any module first (say projections.book)."""
    ours = MODULES
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_IMPORTS, *ours],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    failures = done.stdout.strip()
    assert not failures, "these modules fail when imported first:\n" + failures


# -- the rules can fail ----------------------------------------------------------------------

BAD_SOURCE = """\
import sqlite3
import aiosqlite
from ledger.service import Ledger
from ledger import Side
from projections.book import Book
from . import nonexistent_name
"""


def test_each_rule_catches_a_violation() -> None:
    def lines(found: list[str]) -> set[int]:
        return {int(entry.split(":")[0].removeprefix("line ")) for entry in found}

    as_codec = parse_imports("ledger.codec", BAD_SOURCE)  # an L0 module
    assert lines(layer_violations("ledger.codec", as_codec)) == {3, 4, 5, 6}
    assert lines(purity_violations("ledger.codec", as_codec)) == {1, 2, 3, 4, 5, 6}
    assert lines(third_party_violations("ledger.codec", as_codec)) == {2}
    assert lines(root_import_violations("ledger.codec", as_codec)) == {4, 6}
    assert lines(service_violations("ledger.codec", as_codec)) == {3}
    as_store = parse_imports("ledger.store.memory", BAD_SOURCE)
    assert lines(store_meaning_violations("ledger.store.memory", as_store)) == {5}
    assert lines(third_party_violations("ledger.store.memory", as_store)) == {2}
    assert third_party_violations("ledger.store.sqlite", as_store) == []
    assert parse_imports("ledger.store.memory", "from .base import X")[0].module == (
        "ledger.store.base"
    )
    assert layer_of("ledger.cli.main") == 4
    assert layer_of("ledger.brand_new") is None
