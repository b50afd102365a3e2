"""The architecture, checked so it stays true: floors import only downwards, no import cycles, no module over 400
lines (docs/design.md, "Floors"). The rules are tested alone on small made-up graphs first."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.import_graph import (
    REPO,
    cycles,
    find_modules,
    floor_of,
    import_graph,
    imported_names,
    oversized_modules,
    upward_imports,
)

pytestmark = pytest.mark.timeout(60)


def test_floors_by_top_package():
    assert floor_of("swarm.rpc") == 0 and floor_of("swarm") == 0
    assert floor_of("swarm_trainer.loop") == 1 and floor_of("swarm_bootstrap_dht.cli") == 1
    assert floor_of("swarm_launcher.demo") == 2
    assert floor_of("grpc") is None and floor_of("swarmlike") is None


def test_lazy_relative_and_from_imports_count_type_checking_does_not():
    source = """
from typing import TYPE_CHECKING
import swarm.rpc
from swarm_dataset import buckets
from . import sibling
from .inner import thing
if TYPE_CHECKING:
    from swarm_launcher import cli
def later():
    import swarm_trainer.loop
"""
    names = imported_names(source, module="swarm_coordinator.store.queue", is_package=False)
    assert {"swarm.rpc", "swarm_dataset", "swarm_dataset.buckets", "swarm_coordinator.store.sibling",
            "swarm_coordinator.store.inner.thing", "swarm_trainer.loop"} <= names
    assert not any(name.startswith("swarm_launcher") for name in names)
    assert "swarm_coordinator.store.sibling" in imported_names("from . import sibling",
                                                               module="swarm_coordinator.store", is_package=True)


def test_upward_imports_are_named():
    graph = {"swarm.demo": {"swarm_dataset.images", "swarm.logs"}, "swarm_dataset.cli": {"swarm_launcher.cli"},
             "swarm_launcher.cli": {"swarm_dataset.cli", "swarm.errors"}}
    assert upward_imports(graph) == ["swarm.demo (foundation) imports swarm_dataset.images (service)",
                                     "swarm_dataset.cli (service) imports swarm_launcher.cli (launcher)"]


def test_cycles_of_any_length_are_found():
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}, "g": {"g"}}
    assert cycles(graph) == [["a", "b"], ["c", "d", "e"], ["g"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_oversized_modules(tmp_path):
    (tmp_path / "short.py").write_text("x = 1\n" * 400)
    (tmp_path / "long.py").write_text("x = 1\n" * 401)
    (tmp_path / "big_pb2.py").write_text("x = 1\n" * 900)
    assert [line.split("/")[-1] for line in oversized_modules(tmp_path.glob("*.py"))] == ["long.py: 401 lines"]


# The repository itself.

MODULES = find_modules()
GRAPH = import_graph(MODULES)


def test_every_floor_is_found():
    assert {"swarm.rpc", "swarm.errors", "swarm_coordinator.cli", "swarm_dataset.buckets", "swarm_trainer.cli",
            "swarm_bootstrap_dht.cli", "swarm_launcher.cli", "swarm_launcher.demo"} <= set(MODULES)
    assert "swarm_launcher.cli" in GRAPH["swarm_launcher.__main__"]


def test_no_import_runs_from_a_lower_floor_to_a_higher_one():
    assert upward_imports(GRAPH) == []


def test_no_modules_import_each_other():
    assert cycles(GRAPH) == []


def test_no_module_over_400_lines():
    ours = [*MODULES.values(), *(REPO / "tests").rglob("*.py"), *(REPO / "bench").rglob("*.py")]
    assert oversized_modules(Path(p) for p in ours) == []
