"""The package's import graph: no cycles, and every layer imports only from the layers below it.

Imports inside functions count as much as those at the top of a module: hiding one there does not remove the
dependency. ``tjdnet.cli`` loads the commands by name on use, so it is the only module above them all.
"""

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tjdnet"

# Bottom to top; a unit (a top-level module or sub-package of tjdnet) imports from lower rows only.
LAYERS = (
    {"tensorops", "sampling", "kernels", "row_invariance", "files", "machine", "fingerprint", "devices", "checks"},
    {"heads", "attention", "quantization", "loading", "data"},
    {"config", "decoding", "distill"},
    {"model", "evaluation"},
    {"checkpoints", "runs"},
    {"commands"},
    {"training"},  # Lightning is imported here only
    {"cli"},
)
CORE = {"tensorops", "sampling", "kernels", "row_invariance", "files", "machine", "fingerprint", "devices", "checks"}
CORE |= {"heads", "attention", "quantization"}
CORE |= {"loading", "data", "config", "decoding", "distill", "model", "evaluation", "checkpoints", "runs"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The tjdnet modules ``name`` imports anywhere in its file (``from pkg import submodule`` as the submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "tjdnet")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tjdnet":
                continue
            submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            yield from submodules or [target]


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: set(imports_of(name, path, set(found))) - {name} for name, path in found.items()}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tjdnet"


def layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    raise AssertionError(f"tjdnet.{name} is in no layer of tests/test_architecture.py: add it where it belongs")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_unit_has_a_layer():
    for module in modules():
        if module != "tjdnet":
            layer_of(unit(module))


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_go_downward_only():
    wrong = []
    for module, targets in import_graph().items():
        for target in targets:
            source_unit, target_unit = unit(module), unit(target)
            if source_unit == target_unit or "tjdnet" in (source_unit, target_unit):
                continue
            if layer_of(target_unit) >= layer_of(source_unit):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layers: " + "; ".join(sorted(wrong))


def test_the_core_never_imports_commands_training_or_cli():
    offending = [
        f"{m} imports {t}"
        for m, targets in import_graph().items()
        if unit(m) in CORE
        for t in targets
        if unit(t) in {"commands", "training", "cli"}
    ]
    assert not offending


def test_the_checker_sees_a_cycle_and_an_import_inside_a_function(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from tjdnet.training.fit import run_fit\n")
    assert list(imports_of("tjdnet.m", source, set())) == ["tjdnet.training.fit"]


@pytest.mark.parametrize("module", ["tjdnet.decoding", "tjdnet.checkpoints", "tjdnet.commands.bench", "tjdnet.cli"])
def test_decoding_and_the_commands_load_without_lightning(module):
    lightning = "('lightning', 'pytorch_lightning')"
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] in {lightning}))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_tjdnet_changes_nothing_in_the_process():
    code = (
        "import torch, transformers; from transformers import AttentionInterface;"
        "before = set(AttentionInterface._global_mapping); import tjdnet.model, tjdnet.decoding;"
        "tiny = torch.tensor([1e-40]); assert (tiny * 1).item() != 0.0, 'denormals flushed';"
        "assert set(AttentionInterface._global_mapping) == before, 'attention registered'"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
