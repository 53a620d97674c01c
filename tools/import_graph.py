"""The package's import graph, read from the source with ``ast`` (nothing is imported): one line per
module with the package modules it imports, and every import that runs up the layers.

    python tools/import_graph.py            # the graph and the upward imports
    python tools/import_graph.py --check    # exit 1 if any import runs up the layers

The layers, lowest first, are ``LAYERS``: a module may import from its own layer and those below
it, never from one above.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# the house plan, lowest first: the maths and the data; the networks; models as files and names; the
# one model call; what uses it (training, files, evaluation, export); the user's doors
LAYERS = [
    ["dbsn.runtime", "dbsn.seeds", "dbsn.linalg", "dbsn.fusion", "dbsn.losses", "dbsn.metrics", "dbsn.data",
     "dbsn.noise", "dbsn.tiling", "dbsn.distributed", "dbsn.options"],
    ["dbsn.nn"],
    ["dbsn.hub"],
    ["dbsn.denoiser"],
    ["dbsn.train", "dbsn.files", "dbsn.evaluation", "dbsn.export", "dbsn.figure", "dbsn.bundle"],
    ["dbsn.demo", "dbsn.cli", "dbsn.__main__", "dbsn"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """The ``dbsn`` modules that ``path`` imports, at any depth of its code (lazy imports too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dbsn"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "dbsn":
                continue
            modules = {f"{target}.{a.name}" for a in node.names  # `from . import io` names a module
                       if (SRC / Path(*f"{target}.{a.name}".split("."))).with_suffix(".py").exists()
                       or (SRC / Path(*f"{target}.{a.name}".split(".")) / "__init__.py").exists()}
            found |= modules
            if len(modules) < len(node.names):  # and names defined in the module itself
                found.add(target)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted((SRC / "dbsn").rglob("*.py"))}


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    best = None
    for rank, prefixes in enumerate(layers):
        for prefix in prefixes:  # a prefix places itself and its submodules; the package root only itself
            if module == prefix or (module.startswith(prefix + ".") and prefix != "dbsn"):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    return None if best is None else best[0]


def upward(g: dict[str, set[str]], layers: list[list[str]]) -> list[tuple[str, str]]:
    out = []
    for a, targets in g.items():
        ra = layer_of(a, layers)
        for b in sorted(targets):
            rb = layer_of(b, layers)
            if ra is not None and rb is not None and rb > ra:
                out.append((a, b))
    return out


def unit(module: str) -> str:
    """The top-level part of the package a module belongs to: ``dbsn.train.loop`` -> ``dbsn.train``."""
    return ".".join(module.split(".")[:2])


def mutual(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of top-level parts that import each other (a cycle no layering can order)."""
    edges = {(unit(a), unit(b)) for a, targets in g.items() for b in targets if unit(a) != unit(b)}
    return sorted((a, b) for a, b in edges if (b, a) in edges and a < b and "dbsn" not in (a, b))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    g = graph()
    if not args.check:
        for a, targets in g.items():
            rank = layer_of(a, LAYERS)
            print(f"[{'-' if rank is None else rank}] {a}: {', '.join(sorted(targets)) or '-'}")
    bad = upward(g, LAYERS)
    for a, b in bad:
        print(f"up the layers: {a} imports {b}")
    cycles = mutual(g)
    for a, b in cycles:
        print(f"import each other: {a} and {b}")
    print(f"{len(g)} modules, {sum(map(len, g.values()))} imports, {len(bad)} upward, {len(cycles)} mutual")
    return 1 if (args.check and (bad or cycles)) else 0


if __name__ == "__main__":
    sys.exit(main())
