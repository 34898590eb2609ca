"""The package's layers (docs/design.md): a module imports only from its own layer or a lower
one, and only ``ml`` and above may import torch. Checked on the source, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rscrisis"
#: lower layers first; top-level modules (config, errors, progress) are below everything
LAYERS = ["io", "geo", "synth", "ml", "predict", "loop", "cli"]
RANK = {"io": 0, "geo": 1, "synth": 1, "ml": 2, "predict": 3, "loop": 4, "cli": 5}
NO_TORCH = ("io", "geo", "synth")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "rscrisis":  # from rscrisis import io ...
                found += [(node.lineno, f"rscrisis.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "rscrisis" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in RANK else None


def test_every_module_imports_only_its_own_or_lower_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = path.relative_to(PACKAGE).parts[0]
        if layer not in RANK:
            continue  # top-level modules: config, errors, progress, __init__
        for line, module in _imports(path):
            target = _layer(module)
            if target is not None and RANK[target] > RANK[layer]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
            if layer in NO_TORCH and module.split(".")[0] in ("torch", "torchvision"):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports torch")
            if layer in NO_TORCH and target is not None and RANK[target] >= RANK["ml"]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_top_level_modules_import_no_layer():
    for name in ("config.py", "errors.py", "progress.py"):
        for line, module in _imports(PACKAGE / name):
            assert _layer(module) is None, f"{name}:{line} imports {module}"
            assert module.split(".")[0] != "torch", f"{name}:{line} imports torch"


def test_the_layers_are_the_package():
    subpackages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert subpackages == sorted(LAYERS)
