"""The map in ARCHITECTURE.md stays true: read src/snapd with ast (no import, no root) and check
which package imports which, that no two modules import each other round in a cycle, and that
every module is small enough to be seen whole."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "snapd"
MAX_LINES = 600

#: The stages, in pipeline order, and what each may import besides the shared base modules.
STAGES = ("rules", "probe", "freeze", "core", "store", "ship", "report", "diff", "ctl", "daemon")
MAY_IMPORT: dict[str, set[str]] = {
    "rules": set(),
    "probe": {"rules"},
    "freeze": set(),
    "core": {"freeze"},
    "store": {"core"},  # the writer's record of a core (snapd.core.info), nothing else
    "ship": set(),  # bundles, compression, uploads: files and dicts, no stage
    "report": {"core", "ship"},  # reads cores (core.elf, notes); never the writer's halting side
    "diff": {"core", "ship", "report"},
    "ctl": {"store", "ship", "report"},  # ship: export bundles, debug compressed cores, debuggers
    "daemon": set(STAGES),  # the wiring layer
}
#: Shared by every stage, importing none: bindings, /proc, errors, the small vocabularies, the
#: bounded subprocess runner.
BASE = {
    "atomicfile", "content", "errors", "kernel", "paths", "procfs", "sandbox", "sdnotify", "sys",
    "template", "text", "units",
}  # fmt: skip
#: Finer than package level: (importing stage, imported stage) -> the only modules allowed.
ONLY_MODULES = {("store", "core"): {"snapd.core.info"}}
ENTRY_POINTS = {"snapd.cli", "snapd.__main__", "snapd", "snapd.inspect"}  # may import anything


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(importer: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The modules an import statement depends on (``from pkg import sub`` is ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    base = node.module or ""
    if node.level:
        pkg = importer.split(".")
        if MODULES[importer].name != "__init__.py":
            pkg = pkg[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join([*pkg, *([base] if base else [])])
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        yield sub if sub in MODULES else base


def _imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    out: set[str] = set()
    for node in ast.walk(tree):  # every import, function-level ones included
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update(_resolve(module, node))
    return out


IMPORTS = {m: _imports(m) for m in MODULES}


def _part(module: str) -> str | None:
    """The top-level part of snapd a module belongs to (a stage or a base module), or None."""
    parts = module.split(".")
    if parts[0] != "snapd":
        return None
    return parts[1] if len(parts) > 1 else "snapd"


def _edges() -> Iterator[tuple[str, str]]:
    for m, deps in IMPORTS.items():
        for d in deps:
            yield m, d


def test_every_part_is_on_the_map() -> None:
    """A new package or top-level module must be placed: a stage (STAGES, MAY_IMPORT: what it
    may import) or a base module (BASE), and described in ARCHITECTURE.md."""
    known = set(STAGES) | BASE | {"cli", "__main__", "snapd", "inspect"}
    unknown = sorted({p for m in MODULES if (p := _part(m)) and p not in known})
    assert not unknown, f"place {unknown} in tests/test_layering.py and ARCHITECTURE.md"


def test_stages_import_one_way() -> None:
    bad = []
    for m, d in _edges():
        src, dst = _part(m), _part(d)
        if m in ENTRY_POINTS or src is None or dst is None or src == dst:
            continue
        if src in STAGES and dst in STAGES:
            allowed = dst in MAY_IMPORT[src] and d in ONLY_MODULES.get((src, dst), {d})
        elif src in STAGES:
            allowed = True  # a stage may use the base modules
        else:
            allowed = dst in BASE or d == "snapd"  # base imports base only (and __version__)
        if not allowed:
            bad.append(f"{m} imports {d}")
    assert not bad, "\n".join(sorted(bad))


def test_only_the_probe_layer_imports_bcc() -> None:
    users = {m for m, deps in IMPORTS.items() if any(d == "bcc" or d.startswith("bcc.") for d in deps)}
    assert users and all(_part(m) == "probe" for m in users), sorted(users)


@pytest.mark.parametrize(
    ("stage", "forbidden"),
    [
        ("core", {"rules", "probe", "store", "ctl", "daemon"}),
        ("rules", {"probe", "freeze", "core", "store", "ctl", "daemon"}),
        ("store", {"rules", "probe", "ctl", "daemon"}),
        ("freeze", {"rules", "probe", "core", "store", "ctl", "daemon"}),
    ],
)
def test_named_rules_of_the_map(stage: str, forbidden: set[str]) -> None:
    """The rules ARCHITECTURE.md states in words, checked one by one."""
    bad = [f"{m} imports {d}" for m, d in _edges() if _part(m) == stage and _part(d) in forbidden]
    assert not bad, bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    modules = {m: {d for d in deps if d in MODULES and d != m} for m, deps in IMPORTS.items()}
    assert not _cycles(modules), _cycles(modules)
    parts: dict[str, set[str]] = {}
    for m, d in _edges():
        src, dst = _part(m), _part(d)
        if src and dst and src != dst and m not in ENTRY_POINTS and d in MODULES:
            parts.setdefault(src, set()).add(dst)
    assert not _cycles(parts), _cycles(parts)


def test_no_module_over_600_lines() -> None:
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, big


def test_the_map_names_every_package() -> None:
    text = (SRC.parent / "ARCHITECTURE.md").read_text()
    packages = sorted(
        m.split(".")[1] for m, p in MODULES.items() if p.name == "__init__.py" and m.count(".") == 1
    )
    missing = [p for p in packages if f"`{p}/`" not in text]
    assert not missing, f"ARCHITECTURE.md does not describe {missing}"
