"""The direction of imports the architecture fixes: native <- trust <- evidence <- policy <- server."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KBS = Path(__file__).resolve().parent.parent / "kbs"
LAYERS = ["native", "trust", "evidence", "policy", "server"]  # each may import only those before it
# below every layer
SHARED = {"errors", "cache", "files", "jsondoc", "canonical", "keys", "timearg", "_native", "audit", "cpus"}
COMPOSERS = {"server"}  # composes the rest: the store, the audit log, the layers below


def imported_kbs_modules(path: Path) -> set[str]:
    """Top-level kbs subpackages a module imports (kbs.x.y -> x), at any place in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "kbs" else [])
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("kbs.") and len(n.split(".")) > 1}
    return found


def layer_of(path: Path) -> str | None:
    top = path.relative_to(KBS).parts[0].removesuffix(".py")
    return top if top in LAYERS else None


@pytest.mark.parametrize("layer", [name for name in LAYERS if name not in COMPOSERS])
def test_imports_run_one_way(layer: str) -> None:
    allowed = set(LAYERS[:LAYERS.index(layer) + 1]) | SHARED
    wrong = []
    for path in sorted(KBS.rglob("*.py")):
        if layer_of(path) != layer:
            continue
        for imported in imported_kbs_modules(path) - allowed:
            wrong.append(f"{path.relative_to(KBS)} imports kbs.{imported}")
    assert wrong == []


@pytest.mark.parametrize("package", ["server", "policy", "store", "trust"])
def test_only_the_evidence_layer_names_tees(package: str) -> None:
    """The server asks the registry, policies name verifiers as `local:<name>`: no TEE name in code."""
    for path in sorted((KBS / package).rglob("*.py")):
        code = ast.unparse(_without_docstrings(ast.parse(path.read_text())))
        for name in ("snp", "tdx", "nvgpu", "az-snp-vtpm"):  # ("sample" is also an RVPS message type)
            assert f"'{name}'" not in code and f'"{name}"' not in code, f"{path.relative_to(KBS)} names {name!r}"


def _without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
    return tree
