"""The import direction the layout promises (README, Layout), read from the source itself.

- ``onnxcomp.runtime`` (the deploy-only decoder) imports nothing of the compiler but the errors;
- a pass module (one that registers a pass) imports no other pass module and not the CLI or the
  compile driver; no other module imports a pass module either, except the packages that
  register them: what passes share lives in modules that define no pass;
- ``pack`` imports no method: nothing under ``onnxcomp.passes`` but itself;
- the driver (``onnxcomp/``) imports no method room.
Every import counts, also those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> the package it installs as (pyproject.toml's package-dir).
PACKAGES = {"onnxcomp": "onnxcomp", "passes": "onnxcomp.passes", "runtime": "onnxcomp.runtime", "models": "onnxcomp.models"}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = modules()


def imports_of(name: str) -> set[str]:
    """Absolute names of the onnxcomp modules ``name`` imports (``from x import y`` counts as
    ``x.y`` when that is a module, else ``x``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
    return {m for m in found if m == "onnxcomp" or m.startswith("onnxcomp.")}


def registers_a_pass(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    return any(isinstance(d, ast.Name) and d.id == "register_pass"
               for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for d in node.decorator_list)


PASS_MODULES = {name for name, path in MODULES.items() if registers_a_pass(path)}


def test_the_tree_has_what_the_layout_promises():
    assert {"onnxcomp.passes.normalize", "onnxcomp.passes.pack", "onnxcomp.passes.quantize.quantize",
            "onnxcomp.passes.epr.epr_reparam", "onnxcomp.passes.epr.finetune", "onnxcomp.passes.epr.epr_finalize",
            "onnxcomp.passes.wfn.weight_fix"} == PASS_MODULES
    top_level = [p for p in (ROOT / "onnxcomp").glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(top_level) <= 12, sorted(p.name for p in top_level)


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("onnxcomp.runtime")))
def test_the_runtime_imports_nothing_of_the_compiler_but_the_errors(name):
    foreign = {m for m in imports_of(name) if not m.startswith("onnxcomp.runtime") and m not in ("onnxcomp", "onnxcomp.errors")}
    assert not foreign, f"{name} imports {sorted(foreign)}"


@pytest.mark.parametrize("name", sorted(PASS_MODULES))
def test_a_pass_imports_no_other_pass_nor_the_cli(name):
    wrong = {m for m in imports_of(name) if (m in PASS_MODULES and m != name) or m in ("onnxcomp.cli", "onnxcomp.compile")}
    assert not wrong, f"{name} imports {sorted(wrong)}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_registering_packages_import_pass_modules(name):
    if MODULES[name].name == "__init__.py" and name.startswith("onnxcomp.passes"):
        return  # importing the package registers its passes
    wrong = {m for m in imports_of(name) if m in PASS_MODULES and m != name}
    assert not wrong, f"{name} imports pass module(s) {sorted(wrong)}: move what they share beside them"


def test_pack_imports_no_method():
    assert not {m for m in imports_of("onnxcomp.passes.pack") if m.startswith("onnxcomp.passes")}


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.split(".")[1:2] not in (["passes"], ["runtime"], ["models"])))
def test_the_driver_imports_no_method_room(name):
    rooms = {m for m in imports_of(name) if m.startswith("onnxcomp.passes.")}
    assert not rooms, f"{name} imports {sorted(rooms)}"


def test_the_checker_sees_imports_inside_functions():
    # pass_base imports the passes package inside registered_passes(): the walk must see it
    assert "onnxcomp.passes" in imports_of("onnxcomp.pass_base")
