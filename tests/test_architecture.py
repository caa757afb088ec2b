"""The rooms of docs/architecture.md and what each may import, read from the source with `ast`.

Every import counts: at module level, inside functions and under TYPE_CHECKING, since a lazy import
still ties one room to another. A failure names the file, the line and the rule it breaks.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ["bot.py", "launcher.py", "settings.py", "cogs", "engine", "db", "dispatch", "cluster", "tools"]
TORCH_SIDE = ("torch", "diffusers", "transformers", "accelerate", "bitsandbytes", "safetensors", "spandrel")
CLUSTER_LIBS = ("procrastinate", "psycopg", "psycopg_pool")
QUEUE_BACKENDS = ("db.sqlite", "db.postgres", "db.core", "db.interface", "db.migrate", "db.columns")
SQL = re.compile(r"^\s*(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE (TABLE|INDEX)|ALTER TABLE)\b", re.I)


@dataclass(frozen=True)
class Import:
    source: str  # module that imports
    target: str  # absolute dotted name imported
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_files() -> list[Path]:
    files: list[Path] = []
    for entry in PRODUCT:
        path = ROOT / entry
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else [])
    return files


def imports_of(path: Path) -> list[Import]:
    source = module_name(path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend(Import(source, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append(Import(source, module, node.lineno))
            # `from engine import plans` imports the module engine.plans
            found.extend(Import(source, f"{module}.{alias.name}", node.lineno) for alias in node.names)
    return found


def room(module: str) -> str:
    top = module.split(".")[0]
    if module == "engine.__main__" or top == "tools":
        return "tools"
    if top in ("bot", "launcher"):
        return "start-up"
    return top


def under(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


ALL_IMPORTS = [imp for path in product_files() for imp in imports_of(path)]
PRODUCT_MODULES = {module_name(path) for path in product_files()}


def forbidden(imp: Import) -> str | None:
    """The rule `imp` breaks, or None."""
    where, target = room(imp.source), imp.target
    if where in ("cogs", "start-up", "settings") and under(target, TORCH_SIDE):
        return "the Discord side never imports torch-side libraries"
    if where in ("cogs", "settings") and under(target, CLUSTER_LIBS):
        return "the Discord side never imports the cluster drivers"
    if (
        where == "cogs"
        and under(target, ("engine",))
        and not under(target, ("engine.types", "engine.rules", "engine.plans", "engine.notes"))
    ):
        return "cogs see the engine only through engine.types (EngineView), engine.rules, plan names and its notes"
    if where == "cogs" and under(target, ("dispatch", "cluster", "tools", "bot", "launcher")):
        return "cogs reach services through the bot, not by importing them"
    if where in ("engine", "db", "dispatch", "cluster", "tools") and under(target, ("discord", "cogs", "bot")):
        return "only the Discord side imports discord"
    if where == "engine" and under(target, (*QUEUE_BACKENDS, "dispatch", "cluster", "tools", "launcher")):
        return "the engine never imports a queue backend or the rooms built on it"
    if where == "db" and under(target, ("engine", "dispatch", "cluster", "tools", "launcher", *TORCH_SIDE)):
        return "the queue knows nothing of the engine"
    if where == "dispatch" and under(target, ("db.sqlite", "db.postgres", "cluster", *CLUSTER_LIBS)):
        return "the dispatcher talks to a JobSource, never to a backend"
    return None


def test_every_room_imports_only_what_it_may() -> None:
    broken = [f"{imp.source}:{imp.line} imports {imp.target}: {why}" for imp in ALL_IMPORTS if (why := forbidden(imp))]
    assert not broken, "\n".join(broken)


def test_the_rules_catch_what_they_forbid() -> None:
    """The checker itself: each kind of forbidden import is recognised (so a pass above means something)."""
    assert forbidden(Import("cogs.admin", "torch", 1))
    assert forbidden(Import("cogs.admin", "engine.service", 1))
    assert forbidden(Import("engine.runner", "discord", 1))
    assert forbidden(Import("engine.service", "db.postgres.queue", 1))
    assert forbidden(Import("db.core", "engine.types", 1))
    assert forbidden(Import("dispatch.dispatcher", "db.postgres", 1))
    assert forbidden(Import("launcher", "diffusers", 1))
    assert not forbidden(Import("cogs.admin", "engine.types", 1))
    assert not forbidden(Import("cluster.worker", "db.postgres", 1))
    assert not forbidden(Import("engine.generator", "db.models", 1))


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in PRODUCT_MODULES}
    for imp in ALL_IMPORTS:
        target = imp.target
        while target and target not in PRODUCT_MODULES:
            target = target.rpartition(".")[0]
        if target and target != imp.source and not imp.source.startswith(target + "."):
            graph[imp.source].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_in_the_product() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_sql_is_written_only_in_db() -> None:
    outside = []
    for path in product_files():
        if room(module_name(path)) == "db":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value):
                outside.append(f"{module_name(path)}:{node.lineno}: {node.value[:60]!r}")
    assert not outside, "SQL outside db/:\n" + "\n".join(outside)


@pytest.mark.parametrize("path", product_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_product_file_over_500_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= 500, f"{path.relative_to(ROOT)} has {lines} lines: split it by concern"


def test_the_architecture_page_names_every_package() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    packages = {p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("*/**/__init__.py")}
    packages = {p for p in packages if p.split("/")[0] in PRODUCT}
    missing = sorted(p for p in packages if f"`{p}/" not in page)
    assert not missing, f"docs/architecture.md does not mention: {missing}"
