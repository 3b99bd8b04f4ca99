"""The layering rules of DESIGN.md, enforced by scanning imports.

- hardware imports no other edgeseal package;
- sdk imports no other edgeseal package (it reaches hardware only through a Protocol);
- device_agent never imports ota_server;
- ota_server never imports device_agent or hardware;
- there is no ``edgeseal/__init__.py`` (the four folders are portions of one namespace).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PORTIONS = {
    "sdk": ROOT / "sdk" / "edgeseal" / "sdk",
    "hardware": ROOT / "hardware" / "edgeseal" / "hardware",
    "device_agent": ROOT / "device_agent" / "edgeseal" / "device_agent",
    "ota_server": ROOT / "ota_server" / "edgeseal" / "ota_server",
}
FORBIDDEN = {
    "hardware": {"sdk", "device_agent", "ota_server"},
    "sdk": {"hardware", "device_agent", "ota_server"},
    "device_agent": {"ota_server"},
    "ota_server": {"device_agent", "hardware"},
}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _edgeseal_portion(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "edgeseal":
        return parts[1]
    return None


@pytest.mark.parametrize("portion", sorted(PORTIONS))
def test_portion_respects_layering(portion: str) -> None:
    violations = []
    for path in sorted(PORTIONS[portion].rglob("*.py")):
        for module in _imported_modules(path):
            target = _edgeseal_portion(module)
            if target in FORBIDDEN[portion]:
                violations.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not violations, "layering violated:\n" + "\n".join(violations)


def test_scanner_sees_imports(tmp_path: Path) -> None:
    """The scanner itself must catch both import forms (so the test above can fail)."""
    source = tmp_path / "m.py"
    source.write_text("import edgeseal.ota_server.x\nfrom edgeseal.device_agent import y\n")
    portions = {_edgeseal_portion(m) for m in _imported_modules(source)}
    assert {"ota_server", "device_agent"} <= portions


def test_no_namespace_init() -> None:
    for folder in PORTIONS.values():
        assert not (folder.parent / "__init__.py").exists(), folder.parent
        assert (folder / "__init__.py").exists(), folder
        assert (folder / "py.typed").exists(), folder
