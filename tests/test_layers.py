"""The house plan holds: no module imports from a layer above its own (tools/import_graph.py)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_runs_up_the_layers():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import import_graph
    finally:
        sys.path.pop(0)
    graph = import_graph.graph()
    unplaced = [m for m in graph if import_graph.layer_of(m, import_graph.LAYERS) is None]
    assert not unplaced, f"modules in no layer of tools/import_graph.py: {unplaced}"
    assert graph["dbsn.denoiser"] >= {"dbsn.hub", "dbsn.tiling"}  # the reading sees imports at all
    assert import_graph.upward(graph, import_graph.LAYERS) == []
    assert import_graph.mutual(graph) == []
