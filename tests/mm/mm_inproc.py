"""Helpers of the mm tests. The repository's mm tools run inside the test process: ``tools/{train,test,infer}.py`` and
``python -m mixedae.mm.smoke`` through the same ``main`` (error path:
``mixedae.mm.runner.run_tool``) their ``__main__`` blocks use, without paying a new interpreter's OpenMMLab import (~10 s)."""
import contextlib
import functools
import importlib.util
import io
import uuid
from pathlib import Path

from mixedae.mm import smoke

from conftest import REPO


class Result:
    """What ``subprocess.run(..., capture_output=True, text=True)`` would give."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@functools.cache
def load_tool(name: str):
    """``tools/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"mixedae_tools_{name}",
                                                  REPO / f"tools/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_tool(*args) -> Result:
    """``run_tool("tools/train.py", *argv)`` or ``run_tool("-m", "mixedae.mm.smoke", *argv)``."""
    args = [str(a) for a in args]
    if args[0] == "-m":
        assert args[1] == "mixedae.mm.smoke", args[1]
        main, argv = smoke.main, args[2:]
    else:
        name = Path(args[0]).stem
        main, argv = load_tool(name).main, args[1:]
        if name in ("train", "test"):   # a Runner of its own: mmengine's visualizer and logger
            tag = uuid.uuid4().hex[:8]  # are process-wide instances looked up by these names
            argv += ["--cfg-options", f"visualizer.name=vis_{tag}", f"experiment_name=run_{tag}"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return Result(rc, out.getvalue(), err.getvalue())


def dump_config(tmp_path_factory, name: str, cfg) -> Path:
    """``cfg`` written as ``<fresh tmp dir>/<name>.py``."""
    path = tmp_path_factory.mktemp(name) / f"{name}.py"
    cfg.dump(str(path))
    return path
