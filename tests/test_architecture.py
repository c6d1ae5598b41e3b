"""The dependency rules of docs/architecture.md, checked on the source: no import cycle between modules (function-
local imports count), no module importing another's private name, the adapter core importing neither the sharing,
training, demo nor CLI modules, and `import smat_peft` leaving the trainer unloaded."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "smat_peft"

# the adapter as a peft method; it may import only itself and the leaf constants
ADAPTER_CORE = {"config", "constants", "heads", "layer", "masks", "model", "peft_type", "router", "targets",
                "validation"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> list[tuple[str, str]]:
    """(imported module, imported name or "") for every `smat_peft` import in module `name`, anywhere in the file."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[: len(base) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != "smat_peft":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.append((submodule, "") if submodule in MODULES else (target, alias.name))
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.split(".")[0] == "smat_peft"]
    return found


def graph() -> dict[str, set[str]]:
    """Module → the modules it imports (packages' `__init__` left out: they re-export, they are not a layer)."""
    return {name: {t for t, _ in imports(name) if t in MODULES and MODULES[t].name != "__init__.py"}
            for name in MODULES}


def test_the_source_tree_is_found():
    assert {"smat_peft.model", "smat_peft.training.trainer", "smat_peft.demo.assets.build"} <= set(MODULES)


def test_no_module_imports_a_private_name_of_another():
    reaches = [f"{name} imports {target}.{attr}" for name in MODULES for target, attr in imports(name)
               if attr.startswith("_") and not attr.startswith("__") and target != name]
    assert reaches == []


def test_no_import_cycle():
    edges = graph()
    cycles = []
    for start in edges:  # a path from a module's import back to itself
        stack, seen = [(t, [start, t]) for t in edges[start]], set()
        while stack:
            node, path = stack.pop()
            if node == start:
                cycles.append(" -> ".join(path))
                break
            if node in seen:
                continue
            seen.add(node)
            stack += [(t, path + [t]) for t in edges.get(node, ())]
    assert cycles == []


@pytest.mark.parametrize("module", sorted(ADAPTER_CORE))
def test_the_adapter_core_imports_only_the_adapter_core(module):
    outside = graph()[f"smat_peft.{module}"] - {f"smat_peft.{m}" for m in ADAPTER_CORE}
    assert outside == set()


def test_constants_is_a_leaf():
    assert graph()["smat_peft.constants"] == set()


def test_training_never_imports_the_demo_or_the_cli():
    for name, targets in graph().items():
        if name.startswith("smat_peft.training"):
            assert not {t for t in targets if t.startswith(("smat_peft.demo", "smat_peft.cli"))}, name


def test_import_smat_peft_leaves_the_trainer_unloaded():
    code = ("import sys, smat_peft; assert 'smat_peft.training.trainer' not in sys.modules; "
            "smat_peft.SmatMetaTrainer; assert 'smat_peft.training.trainer' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
