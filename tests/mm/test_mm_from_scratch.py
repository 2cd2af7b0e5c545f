"""tools/train.py refuses to train from random initialisation unless asked (--from-scratch):
a run with no --pretrained, no checkpoint in the config and nothing to resume stops with one
line before anything is built (the launchers call tools/train.py, so they inherit it)."""
import pytest

import mixedae.mm.runner as mm_runner
from mixedae.mm.smoke import tiny_seg_config

from conftest import data_dir
from mm_inproc import dump_config, run_tool
from test_mm_newcomer import demo_like_run


class Built(BaseException):
    """Raised by the stand-in build_runner: the tool got past every check (a BaseException:
    the tools' error path turns every Exception into an error line)."""


@pytest.fixture(scope="module")
def seg_cfg(tmp_path_factory):
    return dump_config(tmp_path_factory, "seg", tiny_seg_config(data_dir("ade_tiny")))


@pytest.fixture
def no_build(monkeypatch):
    def stop(cfg, *a, **k):
        raise Built(cfg.model.backbone.get("init_cfg"))
    monkeypatch.setattr(mm_runner, "build_runner", stop)


def test_no_weights_is_refused_in_one_line(seg_cfg, tmp_path, no_build):
    r = run_tool("tools/train.py", seg_cfg, "--work-dir", tmp_path / "wd")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no pretrained weights"), r.stderr
    assert "--pretrained PATH" in lines[0] and "--from-scratch" in lines[0]
    assert not (tmp_path / "wd").exists()            # nothing was started


def test_from_scratch_or_weights_go_ahead(seg_cfg, tmp_path, no_build):
    with pytest.raises(Built) as e:
        run_tool("tools/train.py", seg_cfg, "--from-scratch")
    assert e.value.args[0] is None                   # random init, as asked
    run = demo_like_run(tmp_path, patch=16)
    with pytest.raises(Built):
        run_tool("tools/train.py", seg_cfg, "--pretrained", run)
    with pytest.raises(Built):                       # a checkpoint named by the config
        run_tool("tools/train.py", seg_cfg, "--cfg-options", f"load_from={run}/x.pth")
    with pytest.raises(Built):
        run_tool("tools/train.py", seg_cfg, "--resume", str(tmp_path / "some.pth"))


def test_resume_needs_something_to_resume(seg_cfg, tmp_path, no_build):
    wd = tmp_path / "wd"
    r = run_tool("tools/train.py", seg_cfg, "--work-dir", wd, "--resume")
    assert r.returncode == 2 and "--resume found no last_checkpoint in" in r.stderr, r.stderr
    wd.mkdir()
    (wd / "last_checkpoint").write_text(str(wd / "iter_6.pth"))
    with pytest.raises(Built):
        run_tool("tools/train.py", seg_cfg, "--work-dir", wd, "--resume")


def test_contradictions_are_usage_errors(seg_cfg, tmp_path, no_build):
    run = demo_like_run(tmp_path, patch=16)
    r = run_tool("tools/train.py", seg_cfg, "--from-scratch", "--pretrained", run)
    assert r.returncode == 2 and "--from-scratch contradicts --pretrained" in r.stderr
    r = run_tool("tools/train.py", seg_cfg, "--from-scratch", "--cfg-options",
                 f"load_from={run}/x.pth")
    assert r.returncode == 2 and "--from-scratch contradicts the config's load_from=" in r.stderr
