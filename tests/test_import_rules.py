"""The import rule of the run-directory contract (issue 13, item 2), checked on the source.

`analysis/` may use `dino_ablate` only through `dino_ablate.contract` (so the analysis tools
never pull in the trainer or torch), `dino_ablate` may name `analysis` only in the CLI's
registration string, and the contract itself imports nothing heavy. Every file is parsed, so
an import inside a function counts too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = "dino_ablate.contract"
#: modules the contract may load (besides the standard library and itself)
LIGHT = {"dino_ablate", "dino_ablate.errors", "dino_ablate.safeload", "numpy", "yaml"}


def module_name(file: Path) -> str:
    parts = list(file.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(file: Path, name: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `file` (the module `name`, by default
    its path under the repository), relative ones resolved."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    package = (name or module_name(file)).split(".")
    if file.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package[: len(package) - node.level + 1]
                base = ".".join([*prefix, base] if base else prefix)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def python_files(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    return files


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_analysis_imports_only_the_contract_from_dino_ablate() -> None:
    bad = []
    for file in python_files("analysis"):
        for line, module in imported_modules(file):
            if module == "dino_ablate" or not in_package(module, "dino_ablate"):
                continue  # `from dino_ablate.contract import X` also yields "dino_ablate..."
            if not in_package(module, CONTRACT):
                bad.append(f"{file.relative_to(ROOT)}:{line}: {module}")
    assert not bad, "analysis/ may import only dino_ablate.contract:\n" + "\n".join(bad)


def test_dino_ablate_never_imports_analysis() -> None:
    bad = [f"{file.relative_to(ROOT)}:{line}: {module}"
           for file in python_files("dino_ablate")
           for line, module in imported_modules(file) if in_package(module, "analysis")]
    assert not bad, "dino_ablate/ must not import analysis/:\n" + "\n".join(bad)


def test_the_cli_registers_analysis_by_name_only() -> None:
    """The one allowed reference: a module name the CLI imports lazily when asked."""
    cli = (ROOT / "dino_ablate" / "cli.py").read_text(encoding="utf-8")
    assert '"analysis.cli"' in cli


def test_the_contract_imports_only_light_modules() -> None:
    bad = []
    for file in python_files("dino_ablate/contract"):
        for line, module in imported_modules(file):
            top = module.split(".")[0]
            if (top in sys.stdlib_module_names or in_package(module, CONTRACT)
                    or module in LIGHT or module.rsplit(".", 1)[0] in LIGHT
                    or top in ("numpy", "yaml")):
                continue
            bad.append(f"{file.relative_to(ROOT)}:{line}: {module}")
    assert not bad, "the contract must stay light:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", [CONTRACT, "analysis.run_reader", "analysis.sweepdir",
                                    "analysis.claims", "dino_ablate.contract.claims",
                                    "analysis.cli"])
def test_importing_it_loads_no_torch(module: str) -> None:
    """What the imports above pull in at run time: never torch (nor the trainer)."""
    code = (f"import sys, {module}; bad = [m for m in sys.modules if m.split('.')[0] == 'torch'"
            " or m in ('dino_ablate.train', 'dino_ablate.config')]; print(bad); "
            "sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The AST walk finds imports nested in functions and resolves relative ones."""
    file = tmp_path / "mod.py"
    file.write_text("def f():\n    from analysis.collapse import detect\n    import torch\n"
                    "from .. import cli\nfrom ..analysis import x\n")
    names = [module for _, module in imported_modules(file, "dino_ablate.sub.mod")]
    assert {"analysis.collapse", "torch", "dino_ablate.cli", "dino_ablate.analysis"} <= set(names)
