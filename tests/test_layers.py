"""The house's import rules (docs/architecture.md, "Layers"), read from every module's AST.

Layers, lowest first: protocol → common → stages → relay → config → daemon → testing.  A
module may import its own layer and the layers below; `config` takes from `relay` and
`stages` only their `settings` modules; the sans-IO `protocol` imports nothing of ours
outside itself and no I/O from the standard library; there is no import cycle, counting
imports inside functions and those made only for type checking.  Modules are found by
walking the package, never from a list kept by hand.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import trio_proxsmtp

PACKAGE = "trio_proxsmtp"
ROOT = Path(trio_proxsmtp.__file__).parent
LAYERS = ("protocol", "common", "stages", "relay", "config", "daemon", "testing")
# The package's own entry points (`python -m trio_proxsmtp`, `-m trio_proxsmtp.example`)
# stand with the daemon.
TOP_LEVEL_LAYER = "daemon"
# config builds each layer's settings: it may import these modules of the layers above it.
SETTINGS_MODULES = {f"{PACKAGE}.relay.settings", f"{PACKAGE}.stages.settings"}
PROTOCOL_THIRD_PARTY = {"attrs"}
PROTOCOL_FORBIDDEN_STDLIB = {
    "socket",
    "ssl",
    "select",
    "selectors",
    "asyncio",
    "subprocess",
    "os",
    "threading",
    "time",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """Every module `name` imports, ours resolved to the module that exists (`from pkg import
    mod` names the submodule), anywhere in the file: top level, functions, TYPE_CHECKING."""
    known = set(known)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            for alias in node.names:
                if f"{module}.{alias.name}" in known:
                    found.add(f"{module}.{alias.name}")
    return found


def layer_of(module: str) -> str | None:
    """The layer of one of our modules; None for the package's root `__init__`."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        raise ValueError(module)
    if len(parts) == 1:
        return None
    return parts[1] if parts[1] in LAYERS else TOP_LEVEL_LAYER


def check_layers(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """The imports of `graph` (module -> modules it imports) that break a rule."""
    problems = []
    for module, imported in graph.items():
        here = layer_of(module)
        for target in imported:
            if target.split(".")[0] != PACKAGE or target == PACKAGE:
                continue
            there = layer_of(target)
            if here is None or there is None or here == there:
                continue
            if here == "config" and there in ("relay", "stages"):
                if target not in SETTINGS_MODULES:
                    problems.append(f"{module} imports {target}: config takes only settings")
                continue
            if LAYERS.index(there) > LAYERS.index(here):
                problems.append(f"{module} ({here}) imports {target} ({there}): upward")
    return problems


def check_protocol_purity(graph: Mapping[str, Iterable[str]]) -> list[str]:
    problems = []
    for module, imported in graph.items():
        if layer_of(module) != "protocol":
            continue
        for target in imported:
            top = target.split(".")[0]
            if top == PACKAGE:
                if layer_of(target) not in ("protocol", None):
                    problems.append(f"{module} imports {target}: protocol is self-contained")
            elif top in PROTOCOL_FORBIDDEN_STDLIB or top == "trio":
                problems.append(f"{module} imports {target}: protocol does no I/O")
            elif top not in sys.stdlib_module_names and top not in PROTOCOL_THIRD_PARTY:
                problems.append(f"{module} imports {target}: not stdlib or attrs")
    return problems


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself
    (Tarjan's algorithm, iterative)."""
    edges = {m: sorted(t for t in ts if t in graph and t != m) for m, ts in graph.items()}
    selfloops = [[m] for m, ts in graph.items() if m in ts]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                child = edges[node][i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return selfloops + cycles


def package_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def ours(graph: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """The graph restricted to our modules (a parent package import is not an edge: every
    `__init__` below the root holds only its docstring, which test_init_modules checks)."""
    return {m: {t for t in ts if t in graph} for m, ts in graph.items()}


# -- the package ------------------------------------------------------------------------


def test_modules_are_found_by_walking_the_package() -> None:
    modules = all_modules()
    assert f"{PACKAGE}.protocol.errors" in modules
    assert all(layer_of(m) in (*LAYERS, None) for m in modules)
    # Every layer folder exists and holds modules.
    for layer in LAYERS:
        assert any(layer_of(m) == layer for m in modules if m.count(".") >= 2), layer


def test_no_import_goes_against_the_layers() -> None:
    assert check_layers(package_graph()) == []


def test_protocol_is_sans_io() -> None:
    assert check_protocol_purity(package_graph()) == []


def test_no_import_cycle() -> None:
    assert find_cycles(ours(package_graph())) == []


def test_init_modules_hold_only_their_docstring() -> None:
    """No re-export modules: callers import from the defining module (testing/ is the public
    API of the fakes and the one exception)."""
    for name, path in all_modules().items():
        if path.name != "__init__.py" or name in (PACKAGE, f"{PACKAGE}.testing"):
            continue
        body = ast.parse(path.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), name
        assert isinstance(body[0].value, ast.Constant), name
        assert "May import" in body[0].value.value, f"{name}: say what it may import"


def test_loading_the_config_needs_no_trio() -> None:
    """`-t` loads only the configuration: no Trio, no milter client, no relay."""
    code = (
        "import sys, trio_proxsmtp.config.loader\n"
        "bad = sorted(m for m in sys.modules if m == 'trio' or m.startswith('trio.')"
        " or m.startswith('trio_proxsmtp.relay.') and not m.endswith('.settings')"
        " or m.startswith('trio_proxsmtp.stages.') and not m.endswith('.settings')"
        " or m.startswith('trio_proxsmtp.daemon.'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the checker itself: it fails where it must ------------------------------------------


def test_the_checker_finds_a_wrong_way_import() -> None:
    graph = {
        f"{PACKAGE}.protocol.smtp.lines": {f"{PACKAGE}.relay.upstream"},
        f"{PACKAGE}.relay.upstream": {f"{PACKAGE}.config.loader"},
        f"{PACKAGE}.config.loader": {f"{PACKAGE}.relay.upstream", f"{PACKAGE}.relay.settings"},
        f"{PACKAGE}.daemon.server": {f"{PACKAGE}.relay.upstream", f"{PACKAGE}.testing.client"},
        f"{PACKAGE}.stages.filter": {f"{PACKAGE}.common.log", f"{PACKAGE}.protocol.errors"},
    }
    problems = check_layers(graph)
    assert len(problems) == 4, problems
    assert any("lines" in p and "upward" in p for p in problems)
    assert any(p.startswith(f"{PACKAGE}.relay.upstream") for p in problems)
    assert any("config takes only settings" in p for p in problems)
    assert any("testing.client" in p for p in problems)


def test_the_checker_finds_impure_protocol_imports() -> None:
    graph = {
        f"{PACKAGE}.protocol.a": {"socket", "attrs", "collections.abc"},
        f"{PACKAGE}.protocol.b": {"trio", f"{PACKAGE}.common.log", "prometheus_client"},
    }
    assert len(check_protocol_purity(graph)) == 4


def test_the_checker_finds_a_cycle() -> None:
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},
        "d": set(),
        "e": {"e"},
    }
    assert find_cycles(graph) == [["e"], ["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_imports_inside_functions_and_type_checking_count(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from trio_proxsmtp.config import loader\n"
        "def f():\n    import trio_proxsmtp.relay.upstream\n"
        "from . import sibling\n"
    )
    known = {f"{PACKAGE}.config.loader", f"{PACKAGE}.stages.sibling"}
    found = imports_of(f"{PACKAGE}.stages.mod", source, known)
    assert {
        f"{PACKAGE}.config.loader",
        f"{PACKAGE}.relay.upstream",
        f"{PACKAGE}.stages.sibling",
    } <= found


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_has_its_folder(layer: str) -> None:
    assert (ROOT / layer / "__init__.py").is_file()


MAX_MODULE_LINES = 400


def test_no_module_over_400_lines_outside_testing() -> None:
    """A module that grows past this is split by concern, into the room that owns it
    (docs/architecture.md); the public fakes of testing/ are exempt."""
    big = {
        name: length
        for name, path in all_modules().items()
        if layer_of(name) != "testing"
        and (length := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert big == {}
