"""``mixedae/model`` is the paper's model: it imports the standard library, torch, timm, numpy
(and Triton, torch's own kernel language, for the optional kernels) and itself — never the
runtime, the pretraining package or anything above it. Checked on the source with ``ast``, so
lazy imports inside functions count too."""
import ast
import sys
from pathlib import Path

MODEL = Path(__file__).resolve().parents[2] / "mixedae" / "model"
ALLOWED = {"torch", "timm", "numpy", "triton"}


def imported_modules(path: Path, package: str):
    """(line, absolute module name) of every import statement in ``path`` (a module of
    ``package``)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative: resolve against this file's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                yield node.lineno, f"{base}.{node.module}" if node.module else base
            else:
                yield node.lineno, node.module


def forbidden(path: Path, package: str | None = None) -> list[str]:
    package = package or ".".join(path.relative_to(MODEL.parents[1]).parts[:-1])
    bad = []
    for line, name in imported_modules(path, package):
        top = name.split(".")[0]
        if name == "mixedae.model" or name.startswith("mixedae.model."):
            continue
        if top in ALLOWED or top in sys.stdlib_module_names:
            continue
        bad.append(f"{path.name}:{line} imports {name}")
    return bad


def test_model_imports_only_torch_timm_numpy_and_itself():
    files = sorted(MODEL.rglob("*.py"))
    assert MODEL / "attention" / "homologous.py" in files   # the walk sees the sub-package
    bad = [b for f in files for b in forbidden(f)]
    assert bad == []


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    probe = tmp_path / "probe.py"   # read as a module of mixedae.model.attention
    probe.write_text("import torch\nfrom . import homologous\n\ndef f():\n"
                     "    from mixedae.runtime.errors import ConfigError\n"
                     "    from ...pretrain import config\n    import mmengine\n")
    assert [b.split(" imports ")[1] for b in forbidden(probe, "mixedae.model.attention")] == [
        "mixedae.runtime.errors", "mixedae.pretrain", "mmengine"]
