"""The layout keeps its promises: packages import alone, no cycles, pure layers stay pure, small modules.

Read from the source with :mod:`ast` (function-level imports included: a cycle hidden inside
a function is still a cycle), and checked once in fresh interpreters, since an import that
works only because something else was imported first is a trap for the next contributor.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "webhook"
MAX_LINES = 600

#: Layers that decide without any cluster: they must not reach the Kubernetes client, even
#: through something else they import.
PURE = (
    "webhook.admission",
    "webhook.policy",
    "webhook.secrets.dockerconfig",
    "webhook.secrets.desired",
    "webhook.secrets.grants",
)

#: Cycles known and being removed elsewhere; each entry says by what. Delete it when that lands.
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()

#: Module-level objects that are mutable but process-wide by nature, and why.
ALLOWED_GLOBALS = {
    # Every log handler of the process redacts the same registered secrets; a secret
    # learnt anywhere must be masked everywhere, so one registry per process is the point.
    ("webhook.observability.logs", "_registry"),
}
#: Calls whose result is immutable (or a logger, process-wide by design).
IMMUTABLE_FACTORIES = {
    "logging.getLogger",
    "TypeVar",
    "re.compile",
    "frozenset",
    "timedelta",
    "MappingProxyType",
    # frozen dataclasses (their defaults, read once)
    "Settings",
    "ServerSettings",
    "Schedule",
    "types.MappingProxyType",
    # a decoder for one fixed type: no settable state
    "msgspec.json.Decoder",
    "tuple",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The webhook module ``name`` refers to (``webhook.a.b.C`` -> ``webhook.a.b``)."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """Every webhook module ``module`` imports, anywhere in its body (functions included)."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            if name == "webhook" or name.startswith("webhook."):
                target = _resolve(name)
                if target is not None and target != module:
                    found.add(target)
    return found


@cache
def graph() -> dict[str, frozenset[str]]:
    return {module: frozenset(imports_of(module)) for module in modules()}


def reachable(start: str) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        for target in graph()[stack.pop()]:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph()[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph()):
        if module not in index:
            visit(module)
    return found


def packages() -> list[str]:
    """The packages and the top-level modules (``__main__`` runs the CLI when imported: not one)."""
    return [
        name
        for name, path in modules().items()
        if (path.name == "__init__.py" or name.count(".") == 1) and name != "webhook.__main__"
    ]


@pytest.mark.parametrize("package", packages())
def test_each_package_imports_alone_in_a_fresh_interpreter(package: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {package}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_import_cycle_between_modules() -> None:
    assert [cycle for cycle in cycles() if frozenset(cycle) not in KNOWN_CYCLES] == []


@pytest.mark.parametrize("layer", PURE)
def test_the_pure_layers_import_nothing_of_the_kubernetes_side(layer: str) -> None:
    members = [name for name in modules() if name == layer or name.startswith(layer + ".")]
    assert members
    for member in members:
        reaching = sorted(target for target in reachable(member) if target.startswith("webhook.kube"))
        assert reaching == [], f"{member} reaches {reaching}"


def test_the_import_graph_is_read_correctly() -> None:
    """The checks above are only as good as the graph: known edges must be in it."""
    assert "webhook.policy.matching" in graph()["webhook.admission.podplan"]
    assert "webhook.kube.client" in graph()["webhook.runtime"]
    assert "webhook.kube" in {m.rpartition(".")[0] for m in reachable("webhook.secrets.sync")}
    assert len(modules()) > 30


#: Modules over the limit, each with what splits it. Delete an entry when that lands.
KNOWN_LONG: frozenset[str] = frozenset()


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_module_is_over_600_lines(module: str) -> None:
    lines = len(modules()[module].read_text().splitlines())
    if module in KNOWN_LONG:
        assert lines <= MAX_LINES + 50, f"{module}: {lines} lines, and growing"
        return
    assert lines <= MAX_LINES, f"{module}: {lines} lines"


def mutable_globals(module: str, source: str) -> Iterator[str]:
    """Module-level names bound to a mutable literal or to an instance (``module:line name``)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            targets = [ast.unparse(target) for target in node.targets]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [ast.unparse(node.target)]
        else:
            continue
        if targets == ["__all__"] or all((module, target) in ALLOWED_GLOBALS for target in targets):
            continue
        value = node.value
        mutable_literal = isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp)
        instance = isinstance(value, ast.Call) and ast.unparse(value.func) not in IMMUTABLE_FACTORIES
        if mutable_literal or instance:
            yield f"{module}:{node.lineno} {', '.join(targets)}"


def test_no_module_level_mutable_global() -> None:
    found = [entry for module, path in sorted(modules().items()) for entry in mutable_globals(module, path.read_text())]
    assert found == []


def test_the_mutable_global_check_sees_what_it_must() -> None:
    source = (
        "CACHE = {}\nITEMS: list[int] = []\nTHING = Thing()\nSEEN = {x for x in ()}\n"
        "log = logging.getLogger(__name__)\nPATTERN = re.compile('x')\nLIMIT: Final = 3\n__all__ = ['x']\n"
        "_registry = _SecretRegistry()\n"
    )
    flagged = [entry.partition(" ")[2] for entry in mutable_globals("webhook.probe", source)]
    assert flagged == ["CACHE", "ITEMS", "THING", "SEEN", "_registry"]
    assert list(mutable_globals("webhook.observability.logs", "_registry = _SecretRegistry()\n")) == []


def wait_for_calls(source: str) -> list[int]:
    """Lines calling ``asyncio.wait_for`` (Python 3.11's loses a cancellation that meets a completion)."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "asyncio.wait_for"
    ]


def test_background_jobs_wait_with_the_cancel_safe_wait_for() -> None:
    """A job loop handed a result in place of its cancellation runs forever: ``serve``'s stop hung on one."""
    calling = {module for module, path in modules().items() if wait_for_calls(path.read_text())}
    assert sorted(calling) == [], "use webhook.waits.wait_for"


def test_the_wait_for_check_sees_what_it_must() -> None:
    source = "async def f():\n    await asyncio.wait_for(x, 1)\n    await wait_for(x, 1)\n    asyncio.wait_for\n"
    assert wait_for_calls(source) == [2]
