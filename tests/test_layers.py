"""The package's layers flow one way: faces -> api -> research -> ledger | doctor | runners |
scaling -> train -> eval | curves -> model | data | rundir -> config. A module may import its own top-level
package or any lower layer, never a higher one or a sibling of its own layer; the faces (the
CLI, the dashboard and the MCP server) go through `pretrainlab.api` alone. Imports inside
functions count: a deferred import is still a dependency."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pretrainlab"

LAYERS = [
    {"pretrainlab", "errors", "config", "redaction"},
    {"model", "data", "recipes", "workspace", "rundir", "code_state"},
    {"eval", "scoring_worker", "curves"},
    {"train"},
    {"ledger", "doctor", "runners", "scaling"},
    {"research"},
    {"api"},
    {"cli", "__main__", "ui", "mcp_server"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
FACES = LAYERS[-1]


def top(module: str) -> str:
    """pretrainlab.research.campaign -> research; pretrainlab -> pretrainlab."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports(path: Path) -> set[str]:
    """Every pretrainlab module this file imports, with relative imports resolved."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "pretrainlab"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "pretrainlab":
                continue
            if target == "pretrainlab":  # `from pretrainlab import api` / `from .. import api`: the names are modules
                found |= {f"pretrainlab.{a.name}" if f"pretrainlab.{a.name}".split(".")[1] in RANK else target for a in node.names}
            else:
                found.add(target)
    return found


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        here = top(".".join(rel.with_suffix("").parts).removesuffix(".__init__"))
        assert here in RANK, f"{rel}: top-level module {here!r} is in no layer: add it to LAYERS in {Path(__file__).name}"
        for target in imports(path):
            there = top(target)
            assert there in RANK, f"{rel} imports {target}, which is in no layer"
            if there == here or RANK[there] == 0 or (here, there) in (("__main__", "cli"), ("cli", "mcp_server"), ("cli", "ui")):
                continue
            if here in FACES and there != "api":
                bad.append(f"{rel} imports {target}: a face goes through pretrainlab.api")
            elif RANK[there] >= RANK[here] and here not in FACES:
                bad.append(f"{rel} ({here}, layer {RANK[here]}) imports {target} ({there}, layer {RANK[there]})")
    return bad


def test_every_import_flows_down_the_layers():
    assert violations() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    # the rule can fail: a runner that imports the research loop, a deferred import included
    fake = tmp_path / "pretrainlab"
    (fake / "runners").mkdir(parents=True)
    (fake / "research").mkdir()
    (fake / "runners" / "__init__.py").write_text("def f():\n    from ..research import campaign\n")
    (fake / "research" / "__init__.py").write_text("")
    (fake / "cli.py").write_text("from .ledger import Ledger\n")
    (fake / "ledger").mkdir()
    (fake / "ledger" / "__init__.py").write_text("from ..errors import UserError\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    found = violations()
    assert any("runners/__init__.py" in v and "pretrainlab.research" in v for v in found), found
    assert any("cli.py imports pretrainlab.ledger: a face goes through pretrainlab.api" in v for v in found), found
    assert len(found) == 2, found
