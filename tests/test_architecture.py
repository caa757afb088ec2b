"""The rooms of docs/architecture.md and what each may import, read from the source with `ast`.

Every import counts: at module level, inside functions and under TYPE_CHECKING, since a lazy import
still ties one room to another. A failure names the file, the line and the rule it breaks. The checker
proves itself: each rule is shown an injected forbidden import in a copy of the tree and must fail, and
each module the page (or a rule) names must exist and be allowed where the page says so.
"""

from __future__ import annotations

import ast
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = [
    "bot.py",
    "launcher.py",
    "services.py",
    "settings.py",
    "jobrequest.py",
    "cogs",
    "engine",
    "db",
    "dispatch",
    "cluster",
    "tools",
]
TORCH_SIDE = ("torch", "diffusers", "transformers", "accelerate", "bitsandbytes", "safetensors", "spandrel")
CLUSTER_LIBS = ("procrastinate", "psycopg", "psycopg_pool")
DISCORD_SIDE = ("discord", "cogs", "bot", "launcher", "services")
# What each room may import of the product (docs/architecture.md, "may import"); the rest is forbidden.
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "request": (),
    "settings": ("jobrequest",),
    "cogs": (
        "cogs.utils",
        "engine.types",
        "engine.rules",
        "engine.plans",
        "engine.notes",
        "db.models",
        "db.workers",
        "db.results",
        "db.interface",
        "settings",
        "jobrequest",
    ),
    "engine": ("engine", "db.models", "db.workers", "jobrequest"),
    "dispatch": ("dispatch", "engine", "db.interface", "db.models", "db.results", "jobrequest"),
    "cluster": ("cluster", "engine", "dispatch", "db", "jobrequest"),
    "db": ("db", "settings", "jobrequest"),
}
SQL = re.compile(r"^\s*(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE (TABLE|INDEX)|ALTER TABLE)\b", re.I)


@dataclass(frozen=True)
class Import:
    source: str  # module that imports
    target: str  # absolute dotted name imported
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_files(root: Path = ROOT) -> list[Path]:
    files: list[Path] = []
    for entry in PRODUCT:
        path = root / entry
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else [])
    return files


def imports_of(path: Path, root: Path = ROOT) -> list[Import]:
    source = module_name(path, root)
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
    if top in ("bot", "launcher", "services"):
        return "start-up"
    if top == "jobrequest":
        return "request"
    return top


def under(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def product_tops() -> tuple[str, ...]:
    return tuple(entry.removesuffix(".py") for entry in PRODUCT)


def _cog(module: str) -> str | None:
    """The cog extension a module is or belongs to (cogs.delivery), None for cogs.utils and the rest."""
    parts = module.split(".")
    if parts[0] != "cogs" or len(parts) < 2 or parts[1] == "utils":
        return None
    return ".".join(parts[:2])


@dataclass(frozen=True)
class Rule:
    why: str
    breaks: Callable[[Import], bool]
    # (a product file, a module it must not import): injected into a copy of the tree, the check must fail
    examples: tuple[tuple[str, str], ...]


def _outside_allowed(imp: Import) -> bool:
    where = room(imp.source)
    allowed = MAY_IMPORT.get(where)
    if allowed is None or not under(imp.target, product_tops()):
        return False
    return not under(imp.target, allowed) and not (where == "request" and imp.target == "jobrequest")


RULES: tuple[Rule, ...] = (
    Rule(
        "only the engine, and the tools and cluster worker that drive it, import torch-side libraries",
        lambda imp: room(imp.source) not in ("engine", "tools", "cluster") and under(imp.target, TORCH_SIDE),
        (
            ("cogs/admin.py", "torch"),
            ("launcher.py", "diffusers"),
            ("dispatch/dispatcher.py", "torch"),
            ("db/core.py", "transformers"),
            ("jobrequest.py", "torch"),
            ("settings.py", "safetensors"),
        ),
    ),
    Rule(
        "the Discord side never imports the cluster drivers",
        lambda imp: room(imp.source) in ("cogs", "start-up", "settings") and under(imp.target, CLUSTER_LIBS),
        (("cogs/admin.py", "procrastinate"), ("bot.py", "psycopg")),
    ),
    Rule(
        "only the Discord side imports discord, the cogs or the bot",
        lambda imp: room(imp.source) not in ("cogs", "start-up") and under(imp.target, DISCORD_SIDE),
        (
            ("engine/runner.py", "discord"),
            ("db/core.py", "cogs.utils.i18n"),
            ("tools/cli.py", "launcher"),
            ("cluster/worker.py", "bot"),
            ("dispatch/dispatcher.py", "discord"),
            ("jobrequest.py", "discord"),
        ),
    ),
    Rule(
        "a cog reaches another cog through bot.get_cog, never by importing it",
        lambda imp: (cog := _cog(imp.target)) is not None and cog != _cog(imp.source),
        (("cogs/delivery.py", "cogs.progress"), ("cogs/utils/views.py", "cogs.buttons"), ("bot.py", "cogs.admin")),
    ),
    Rule(
        "the start-up flows launcher → bot → services: bot.py and services.py never import the launcher",
        lambda imp: imp.source in ("bot", "services") and under(imp.target, ("launcher",)),
        (("bot.py", "launcher"), ("services.py", "launcher")),
    ),
    Rule(
        "each room imports only the product rooms docs/architecture.md lets it",
        _outside_allowed,
        (
            ("settings.py", "db.models"),
            ("jobrequest.py", "db.models"),
            ("cogs/admin.py", "db.core"),
            ("cogs/admin.py", "db.sqlite_queue"),
            ("cogs/admin.py", "engine.service"),
            ("cogs/admin.py", "dispatch"),
            ("engine/service.py", "db.sqlite_queue"),
            ("engine/service.py", "db.interface"),
            ("engine/service.py", "dispatch"),
            ("dispatch/dispatcher.py", "db.sqlite_queue"),
            ("dispatch/dispatcher.py", "db.postgres.queue"),
            ("dispatch/dispatcher.py", "cluster.worker"),
            ("db/core.py", "engine.types"),
            ("db/sqlite_queue.py", "dispatch.dispatcher"),
            ("cluster/view.py", "tools.cli"),
            ("cluster/worker.py", "settings"),
        ),
    ),
    Rule(
        "the dispatcher talks to a JobSource, never to a cluster driver",
        lambda imp: room(imp.source) == "dispatch" and under(imp.target, CLUSTER_LIBS),
        (("dispatch/dispatcher.py", "procrastinate"),),
    ),
    Rule(
        "the engine reaches no database driver",
        lambda imp: room(imp.source) == "engine" and under(imp.target, (*CLUSTER_LIBS, "aiosqlite", "sqlite3")),
        (("engine/generator.py", "aiosqlite"),),
    ),
)


def forbidden(imp: Import) -> str | None:
    """The first rule `imp` breaks, or None."""
    return next((rule.why for rule in RULES if rule.breaks(imp)), None)


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for path in product_files(root):
        for imp in imports_of(path, root):
            if why := forbidden(imp):
                found.append(f"{imp.source}:{imp.line} imports {imp.target}: {why}")
    return found


ALL_IMPORTS = [imp for path in product_files() for imp in imports_of(path)]
PRODUCT_MODULES = {module_name(path) for path in product_files()}


def test_every_room_imports_only_what_it_may() -> None:
    broken = violations()
    assert not broken, "\n".join(broken)


def _copy_of_the_tree(dest: Path) -> Path:
    for entry in PRODUCT:
        source = ROOT / entry
        if source.is_dir():
            shutil.copytree(source, dest / entry, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.exists():
            shutil.copy2(source, dest / entry)
    return dest


@pytest.mark.parametrize(
    ("file", "target", "why"),
    [(file, target, rule.why) for rule in RULES for file, target in rule.examples],
    ids=lambda value: value if len(value) < 40 else value[:30],
)
def test_an_injected_forbidden_import_fails_the_check(tmp_path: Path, file: str, target: str, why: str) -> None:
    tree = _copy_of_the_tree(tmp_path)
    assert violations(tree) == []
    path = tree / file
    source = module_name(path, tree)
    assert source in PRODUCT_MODULES, f"the example file {file} is not a product module"
    # inside a function: a lazy import counts as much as one at the top
    path.write_text(path.read_text(encoding="utf-8") + f"\n\ndef _injected() -> None:\n    import {target}\n")
    found = violations(tree)
    assert any(line.startswith(f"{source}:") and f"imports {target}:" in line for line in found), found
    assert any(rule.why == why and rule.breaks(Import(source, target, 1)) for rule in RULES)


def test_every_rule_has_an_example_and_every_named_module_exists() -> None:
    named = {target for rule in RULES for _, target in rule.examples if under(target, product_tops())}
    named |= {name for allowed in MAY_IMPORT.values() for name in allowed}
    packages = PRODUCT_MODULES | {m.rpartition(".")[0] for m in PRODUCT_MODULES}
    missing = sorted(name for name in named if name not in packages)
    assert not missing, f"the rules name modules that do not exist (renamed?): {missing}"
    assert all(rule.examples for rule in RULES)


def _table_rows(page: str) -> list[tuple[str, str]]:
    """(room cell, may-import cell) of each row of the page's rooms table."""
    rows = []
    for line in page.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("room", "---") and "`" in cells[0]:
            rows.append((cells[0], cells[2]))
    return rows


def _dotted(name: str) -> str:
    return name.removesuffix("/").removesuffix(".py").replace("/", ".")


def test_the_page_allows_only_what_the_check_allows() -> None:
    """Each module a row of the rooms table names as importable exists and passes the check from that room;
    each one it names after "never" fails it."""
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = _table_rows(page)
    assert len(rows) >= 10, "the rooms table was not found"
    checked = 0
    for room_cell, may_cell in rows:
        first = _dotted(re.findall(r"`([^`]+)`", room_cell)[0])
        source = next(m for m in sorted(PRODUCT_MODULES) if under(m, (first,)) and m != "engine.__main__")
        if may_cell.startswith("as "):
            continue
        allowed_part, _, never_part = may_cell.partition("never")
        for name in map(_dotted, re.findall(r"`([^`]+)`", allowed_part)):
            if under(name, product_tops()):
                assert name in PRODUCT_MODULES | {m.rpartition(".")[0] for m in PRODUCT_MODULES}, name
                target = name if name in PRODUCT_MODULES else f"{name}.x"
                assert forbidden(Import(source, target, 1)) is None, f"{first} may import {name} by the page"
                checked += 1
        for name in map(_dotted, re.findall(r"`([^`]+)`", never_part)):
            if under(name, product_tops()):
                assert forbidden(Import(source, name, 1)), f"{first} must not import {name} by the page"
                checked += 1
    assert checked >= 20


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
    modules = sorted(entry for entry in PRODUCT if entry.endswith(".py") and (ROOT / entry).exists())
    missing += [m for m in modules if f"`{m}`" not in page]
    assert not missing, f"docs/architecture.md does not mention: {missing}"


# The engine modules the Discord side may import are torch-free (docs/architecture.md), and so is all they
# import of the product: the bot process never loads torch through them.
TORCH_FREE = ("engine.types", "engine.rules", "engine.plans", "engine.notes", "engine.measurement", "engine.projection")


def torch_reached(root: Path = ROOT) -> list[str]:
    """`module imports library` for every torch-side import reachable from the torch-free modules."""
    imports = {module_name(path, root): imports_of(path, root) for path in product_files(root)}
    seen, todo, found = set(), list(TORCH_FREE), []
    while todo:
        module = todo.pop()
        if module in seen or module not in imports:
            continue
        seen.add(module)
        for imp in imports[module]:
            if under(imp.target, TORCH_SIDE):
                found.append(f"{module} imports {imp.target}")
            elif imp.target in imports:
                todo.append(imp.target)
    return sorted(found)


def test_the_modules_the_discord_side_may_import_reach_no_torch() -> None:
    assert torch_reached() == []


@pytest.mark.parametrize("injected", ["import torch", "from engine import streaming"])
def test_a_torch_import_injected_behind_a_torch_free_module_fails_the_check(tmp_path: Path, injected: str) -> None:
    tree = _copy_of_the_tree(tmp_path)
    path = tree / "engine" / "measurement.py"
    path.write_text(path.read_text(encoding="utf-8") + f"\n\ndef _injected() -> None:\n    {injected}\n")
    assert torch_reached(tree), "a torch import reached through engine.measurement went unnoticed"
