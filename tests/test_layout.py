"""The rooms' imports point one way (DESIGN.md section 3), with the three exceptions the README names.

Every import counts, the lazy ones inside functions too, since they bind the rooms as tightly at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("lsc4rec", "clients", "llm_cloud", "strategies", "server")

# room -> the other rooms it may import
ALLOWED = {
    "lsc4rec": set(),
    "clients": {"lsc4rec"},
    "llm_cloud": {"lsc4rec"},
    "strategies": {"lsc4rec"},
    "server": {"lsc4rec", "strategies"},
}
# file -> the modules (prefixes) it may import beyond its room's rule
EXCEPTIONS = {
    # the composition root: each sub-command imports its room lazily
    "lsc4rec/cli.py": ("clients.central", "llm_cloud", "server.launch"),
    # the ServerApp initializes and checkpoints the model the devices train (Flower's shared task model)
    "server/app.py": ("clients.srm",),
    "server/checkpoint.py": ("clients.srm",),
    # run_federation.sh's pipeline trains, checks and starts the cloud's processes before the federation, and
    # sizes the SRM copies the simulation's nodes would keep
    "server/launch.py": (
        "clients.srm",
        "llm_cloud.checkpoint",
        "llm_cloud.engines",
        "llm_cloud.processes",
        "llm_cloud.train",
        "llm_cloud.vllm_server",
    ),
}


def imported_modules(source: str) -> set[str]:
    """Absolute module names a module's source imports anywhere in its body."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def crossings(relative: str, source: str) -> list[str]:
    """Imports of the module at ``relative`` into another room that neither its room's rule nor an exception allows."""
    room = relative.split("/")[0]
    allowed = EXCEPTIONS.get(relative, ())
    return sorted(
        module
        for module in imported_modules(source)
        if module.split(".")[0] in ROOMS
        and module.split(".")[0] not in {room, *ALLOWED[room]}
        and not any(module == a or module.startswith(a + ".") for a in allowed)
    )


@pytest.mark.parametrize("room", ROOMS)
def test_imports_point_one_way(room: str) -> None:
    files = sorted((REPO / room).rglob("*.py"))
    assert files, f"no Python files under {room}/"
    wrong = {
        name: crossings(name, path.read_text())
        for path in files
        if (name := path.relative_to(REPO).as_posix())
    }
    assert {name: modules for name, modules in wrong.items() if modules} == {}


def test_a_forbidden_import_is_caught() -> None:
    """The check itself can fail: lazy imports of the cloud by a device module, or of the server, are reported."""
    source = (
        "import server\n\ndef f():\n    from llm_cloud.model import build\n    from clients.srm import x\n"
    )
    assert crossings("clients/inference.py", source) == ["llm_cloud.model", "server"]
    assert crossings("server/report.py", source) == ["clients.srm", "llm_cloud.model"]
    assert crossings("server/app.py", source) == ["llm_cloud.model"]
