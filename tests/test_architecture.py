"""ARCHITECTURE.md's layer table is the package's module list and its import rules: every
module is listed in one layer, and imports only what that layer may."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "genesis_dist"


def _table() -> list[list[str]]:
    rows = []
    for line in (REPO / "ARCHITECTURE.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] != "layer" and not set(cells[0]) <= {"-"}:
            rows.append(cells)
    return rows


def _rules() -> dict[str, tuple[set[str], set[str]]]:
    """layer → (layers it may import, modules that may import Ray), from the table."""
    rules = {}
    for layer, _, imports, ray in _table():
        allowed = set() if imports == "—" else ({"*"} if imports == "every layer" else
                                                  {x.strip() for x in imports.split(",")})
        ray_modules = {"*"} if ray == "yes" else set(re.findall(r"`([^`]+\.py)`", ray))
        rules[layer] = (allowed, ray_modules)
    return rules


def _listed() -> dict[str, list[str]]:
    """module path (relative to the package) → the layers whose row lists it."""
    listed: dict[str, list[str]] = {}
    for layer, modules, _, _ in _table():
        for module in re.findall(r"`([^`]+\.py)`", modules):
            listed.setdefault(module, []).append(layer)
    return listed


def _package_modules() -> list[str]:
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "configs" not in p.parts)


def _layer_of_module() -> dict[str, str]:
    return {module: layers[0] for module, layers in _listed().items()}


def _layer(path: Path) -> str:
    return _layer_of_module()[str(path.relative_to(PACKAGE))]


def _target_layer(module: str) -> str | None:
    """The layer of an imported `genesis_dist.x.y` (module or package)."""
    parts = module.split(".")[1:]
    layers = _layer_of_module()
    for candidate in ("/".join(parts) + ".py", "/".join(parts + ["__init__"]) + ".py", parts[0] + ".py",
                      parts[0] + "/__init__.py"):
        if candidate in layers:
            return layers[candidate]
    return None


def test_the_table_lists_every_module_once_and_nothing_else():
    listed, present = _listed(), _package_modules()
    assert sorted(m for m in present if m not in listed) == [], "modules missing from ARCHITECTURE.md's table"
    assert sorted(m for m in listed if m not in present) == [], "ARCHITECTURE.md lists modules that do not exist"
    assert {m: layers for m, layers in listed.items() if len(layers) > 1} == {}


def _imports(path: Path) -> set[str]:
    """Absolute module names imported by a file (relative imports resolved)."""
    package = ["genesis_dist", *path.relative_to(PACKAGE).parts[:-1]]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            if node.module is None:  # from .. import x
                found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_every_layer_imports_only_what_the_architecture_allows():
    rules = _rules()
    assert {"commands", "training", "evaluation", "models", "metrics", "data", "storage"} <= set(rules)
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "configs" in path.parts:
            continue
        layer = _layer(path)
        allowed, ray_modules = rules[layer]
        relative = str(path.relative_to(PACKAGE))
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] == "ray" and "*" not in ray_modules and relative not in ray_modules:
                violations.append(f"{relative} imports Ray")
            if parts[0] == "genesis_dist" and len(parts) > 1:
                target = _target_layer(module)
                if target != layer and "*" not in allowed and target not in allowed:
                    violations.append(f"{relative} ({layer}) imports {module}")
    assert not violations, violations


def test_the_rule_checker_can_fail(tmp_path):
    rules = _rules()
    assert "storage" not in rules["metrics"][0] and "models" not in rules["data"][0]
    assert rules["models"] == (set(), set())
