"""The code's shape, read from the source (nothing is imported): every module has a layer and imports only
from its own layer or below, and no function is longer than 60 lines.

The checks fail closed: a module, a layer name or an import that the table does not place is an error,
not an exemption.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mevqa"
SCRIPTS = sorted(ROOT.glob("*.py"))  # entry points beside the package: `python app.py`
SCRIPT_NAMES = {p.name for p in SCRIPTS}

# Lower layers first. A name is a top-level module or package of mevqa ("__init__" is mevqa/__init__.py),
# or a script at the repository root ("app.py"); a module imports only from its own layer or below, also
# inside functions and through registry strings ("mevqa.backends.hf:TransformersBackend").
LAYERS = [
    {"__init__", "errors", "facs", "io", "process"},
    {"config"},
    {"prompts"},
    {"video", "models", "face", "dist"},
    {"data"},
    {"inputs", "spot"},
    {"backends"},
    {"evaluation"},
    {"train", "agent", "bench", "bench_gpu", "bench_spot"},
    {"serve"},
    {"app"},
    {"cli"},
    {"demo", "__main__"},
    {"app.py"},
]
REGISTRY_ENTRY = re.compile(r"(mevqa(?:\.\w+)+):\w+")
MAX_LINES = 60


def layer_names() -> set[str]:
    """What the table must place: mevqa's top-level modules and packages, and the scripts beside it."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    return modules | packages | {p.name for p in SCRIPTS}


def module_of(path: Path) -> str:
    """The dotted name a file is imported as ("mevqa.cli.app", "mevqa" for mevqa/__init__.py; "app"
    for the script app.py)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_key(module: str) -> str:
    """The name of `module` in the table: mevqa.x.y -> x; mevqa -> __init__; the script app -> app.py."""
    parts = module.split(".")
    if parts[0] != "mevqa":
        return f"{module}.py"
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> int:
    key = layer_key(module)
    found = [i for i, names in enumerate(LAYERS) if key in names]
    assert found, f"{module} is in no layer: add {key!r} to LAYERS in tests/test_architecture.py"
    return found[0]


def is_ours(module: str) -> bool:
    return module == "mevqa" or module.startswith("mevqa.") or f"{module.split('.')[0]}.py" in SCRIPT_NAMES


def exists(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def resolve_from(node: ast.ImportFrom, importer: str, is_package: bool) -> Iterator[str]:
    """What `from X import a, b` imports: X.a where X.a is a module (`from mevqa import facs` is mevqa.facs,
    not mevqa), else X; relative imports are resolved against the importer's package."""
    base = node.module or ""
    if node.level:
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    for alias in node.names:
        yield f"{base}.{alias.name}" if exists(f"{base}.{alias.name}") else base


def imports(path: Path) -> list[str]:
    return imports_in(path.read_text(), module_of(path), path.name == "__init__.py")


def imports_in(source: str, importer: str, is_package: bool) -> list[str]:
    """The mevqa modules (and root scripts) a module's source imports, anywhere in it."""
    out: list[str] = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.Import):
            out += [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            out += resolve_from(n, importer, is_package)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            out += [m.group(1) for m in [REGISTRY_ENTRY.fullmatch(n.value)] if m]
    return [m for m in out if is_ours(m)]


def sources() -> list[Path]:
    return [*sorted(PACKAGE.rglob("*.py")), *SCRIPTS]


def test_every_module_has_one_layer():
    placed = [name for names in LAYERS for name in names]
    twice = sorted({n for n in placed if placed.count(n) > 1})
    assert not twice, f"in two layers: {twice}"
    on_disk = layer_names()
    assert on_disk - set(placed) == set(), "modules in no layer: add them to LAYERS"
    assert set(placed) - on_disk == set(), "LAYERS names modules that no longer exist"


def test_no_module_imports_from_a_higher_layer():
    """A backend never imports serve or train; models never import evaluation; nothing imports app.py."""
    up = []
    for path in sources():
        module = module_of(path)
        up += [f"{module} -> {imp}" for imp in imports(path) if layer(imp) > layer(module)]
    assert not up, up


@pytest.mark.parametrize(
    "source,found",
    [
        ("from mevqa import facs, prompts", ["mevqa.facs", "mevqa.prompts"]),
        ("from mevqa import __version__", ["mevqa"]),
        ("import mevqa.serve as s", ["mevqa.serve"]),
        ("def f():\n    from mevqa.train.loop import train", ["mevqa.train.loop"]),
        ("from . import loading\nfrom .. import serve", ["mevqa.models.loading", "mevqa.serve"]),
        ("X = {'hf': 'mevqa.backends.hf:TransformersBackend'}", ["mevqa.backends.hf"]),
        ("import app\nimport numpy", ["app"]),
    ],
)
def test_every_import_form_is_seen(source, found):
    """The forms the layering check reads (as if in mevqa/models/x.py): one it skipped would let an upward
    import through."""
    assert imports_in(source, "mevqa.models.x", is_package=False) == found


def test_a_module_outside_the_table_fails():
    with pytest.raises(AssertionError, match="'spotter'"):
        layer("mevqa.spotter.peaks")


def test_functions_are_short():
    long = []
    for path in sources():
        for n in ast.walk(ast.parse(path.read_text())):
            if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if (lines := n.end_lineno - n.lineno + 1) > MAX_LINES:
                long.append(f"{path.relative_to(ROOT)}:{n.name} ({lines} lines)")
    assert not long, long
