"""The import rules drawn in ARCHITECTURE.md hold in the code."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "genesis_dist"
LAYER_OF_TOP_MODULE = {"train": "commands", "evaluate": "commands", "tune": "commands", "decompose": "commands",
                       "__init__": "commands", "ray_cluster": "commands"}


def _rules() -> dict[str, tuple[set[str], set[str]]]:
    """layer → (layers it may import, modules that may import Ray), from the table."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    rules = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("layer", "---") or set(cells[0]) <= {"-"}:
            continue
        layer, _, imports, ray = cells
        allowed = set() if imports == "—" else ({"*"} if imports == "every layer" else
                                                  {x.strip() for x in imports.split(",")})
        ray_modules = {"*"} if ray == "yes" else set(re.findall(r"`([^`]+\.py)`", ray))
        rules[layer] = (allowed, ray_modules)
    return rules


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    name = parts[0].removesuffix(".py")
    return LAYER_OF_TOP_MODULE.get(name, name) if len(parts) == 1 else name


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
        assert layer in rules, f"{path.relative_to(REPO)}: layer {layer!r} is not in ARCHITECTURE.md"
        allowed, ray_modules = rules[layer]
        relative = str(path.relative_to(PACKAGE))
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] == "ray" and "*" not in ray_modules and relative not in ray_modules:
                violations.append(f"{relative} imports Ray")
            if parts[0] == "genesis_dist" and len(parts) > 1:
                target = LAYER_OF_TOP_MODULE.get(parts[1], parts[1])
                if target != layer and "*" not in allowed and target not in allowed:
                    violations.append(f"{relative} ({layer}) imports {module}")
    assert not violations, violations


def test_the_rule_checker_can_fail(tmp_path):
    rules = _rules()
    assert "storage" not in rules["metrics"][0] and "models" not in rules["data"][0]
    assert rules["models"] == (set(), set())
