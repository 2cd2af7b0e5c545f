"""Issue 18 "first contact": the README's CPU pretraining command runs verbatim on the shared
data, and the pretraining presets' documentation matches what exists."""
import re
import shlex

import pytest

from mixedae.cli import main as cli_main
from mixedae.pretrain.config import PRESETS, get_preset

from conftest import REPO

README = (REPO / "README.md").read_text()
SHARED = REPO.parent / "shared" / "data" / "imagenet_tiny"


def readme_cpu_command() -> list[str]:
    lines = [ln for ln in README.splitlines()
             if ln.startswith(".venv/bin/mixedae pretrain --preset mixedae_cpu ")]
    assert len(lines) == 1, "README must give exactly one mixedae_cpu pretraining command"
    argv = shlex.split(lines[0])
    assert argv[0] == ".venv/bin/mixedae"
    return argv[1:]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/imagenet_tiny not present")
def test_readme_cpu_pretraining_command_runs_verbatim(tmp_path, monkeypatch):
    argv = readme_cpu_command()
    assert "../shared/data/imagenet_tiny" in argv and "--device" not in argv
    repo = tmp_path / "repo"                       # a checkout beside ../shared, as documented
    repo.mkdir()
    (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    monkeypatch.chdir(repo)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # "on a CPU"
    assert cli_main(argv) == 0
    out = repo / argv[argv.index("--output-dir") + 1]
    for f in ("config.json", "checkpoint.pth", "model.safetensors", "log.jsonl"):
        assert (out / f).is_file(), f
    cfg = get_preset("mixedae_cpu")
    assert cfg.seg_embed_mode == "residual" and cfg.mixing == "compose" and cfg.homo_con
    log = (out / "log.jsonl").read_text().splitlines()
    assert '"step": 62' in log[-1]


def test_every_preset_is_in_the_readme_table():
    table = README[README.index("## Presets"):README.index("## Pretraining")]
    named = set(re.findall(r"`([a-z0-9_]+)`", table))
    assert set(PRESETS) <= named, sorted(set(PRESETS) - named)


def test_demo_timing_claims_match_its_defaults():
    from mixedae.pretrain.demo import get_args_parser
    args = get_args_parser().parse_args([])
    assert (args.steps, args.time_limit) == (300, 240.0)
    assert "trains 300 steps" in README and "at 240 s" in README
