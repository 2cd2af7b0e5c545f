"""Checkpoint conversion (mixedae.convert): pretraining / MAE / timm / mm → our layouts."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mixedae import convert as cv
from mixedae.model.vit import create_vit

from conftest import REPO


def fake_pretrain_state(size="micro", seed=0):
    """A pretraining-format state dict: encoder.<vit keys> + decoder/projector tensors."""
    torch.manual_seed(seed)
    enc = create_vit(size)
    sd = {f"encoder.{k}": v.clone() for k, v in enc.state_dict().items()}
    sd.update({
        "decoder.embed.weight": torch.randn(32, enc.embed_dim),
        "decoder.embed.bias": torch.zeros(32),
        "decoder.mask_token": torch.zeros(1, 1, 32),
        "decoder.pos_embed": torch.zeros(1, 197, 32),
        "decoder.blocks.0.attn.qkv.weight": torch.randn(96, 32),
        "decoder.pred.weight": torch.randn(768, 32),
        "projector.weight": torch.randn(16, enc.embed_dim),
        "projector.bias": torch.zeros(16),
    })
    return enc, sd


def write_pretrain_dir(tmp_path, size="micro"):
    enc, sd = fake_pretrain_state(size)
    d = tmp_path / "pretrain_run"
    d.mkdir()
    cfg = {"model": size, "patch_size": 16, "img_size": 224}
    save_file(sd, str(d / "model.safetensors"), metadata={"config": json.dumps(cfg)})
    torch.save({"model": sd, "epoch": 3}, str(d / "checkpoint.pth"))
    return enc, d


def mae_official_state(enc):
    """Official MAE pretraining layout: flat ViT keys + mask_token + decoder_*."""
    sd = {k: v.clone() for k, v in enc.state_dict().items()}
    sd.update({"mask_token": torch.zeros(1, 1, 32),
               "decoder_embed.weight": torch.randn(32, enc.embed_dim),
               "decoder_pos_embed": torch.zeros(1, 197, 32),
               "decoder_blocks.0.norm1.weight": torch.ones(32),
               "decoder_norm.weight": torch.ones(32),
               "decoder_pred.weight": torch.randn(768, 32)})
    return sd


def test_pretrain_to_mm_drops_decoder_projector_and_norm(tmp_path, capsys):
    enc, d = write_pretrain_dir(tmp_path)
    rep = cv.convert(d, tmp_path / "bb.safetensors", to="mm")
    out = capsys.readouterr().out
    assert "decoder" in out and "projector" in out and "mask token" in out
    reasons = {r for _, r in rep["dropped"]}
    assert {"decoder", "projector", "mask token"} <= reasons
    sd = load_file(str(tmp_path / "bb.safetensors"))
    expect = {k for k in enc.state_dict() if not k.startswith("norm.")}
    assert set(sd) == expect
    for k in expect:
        assert torch.equal(sd[k], enc.state_dict()[k])
    pth = torch.load(str(tmp_path / "bb.pth"), weights_only=True)
    assert set(pth["state_dict"]) == expect
    with safe_open(str(tmp_path / "bb.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "mixedae-mm" and json.loads(meta["config"])["model"] == "micro"


def test_pretrain_checkpoint_pth_and_vit_target_load_strictly(tmp_path):
    enc, d = write_pretrain_dir(tmp_path)
    cv.convert(d / "checkpoint.pth", tmp_path / "enc.safetensors", to="vit")
    m = create_vit("micro")
    m.load_state_dict(load_file(str(tmp_path / "enc.safetensors")), strict=True)
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(m.forward_features(x), enc.forward_features(x))


def test_classifier_target_misses_only_fresh_head(tmp_path):
    enc, d = write_pretrain_dir(tmp_path)
    rep = cv.convert(d, tmp_path / "cls.safetensors", to="classifier")
    assert any(k.startswith("norm.") for k, _ in rep["dropped"])
    clf = create_vit("micro", num_classes=10, global_pool="avg")
    res = clf.load_state_dict(load_file(str(tmp_path / "cls.safetensors")), strict=False)
    assert sorted(res.missing_keys) == ["fc_norm.bias", "fc_norm.weight", "head.bias",
                                        "head.weight"]
    assert res.unexpected_keys == []


def test_timm_round_trip_identical_features(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ours = create_vit("tiny")   # 192 / 12 / 3 == timm vit_tiny_patch16_224
    for p in ours.parameters():  # make every tensor non-trivial
        p.data.add_(torch.randn_like(p) * 0.02)
    sd = {f"encoder.{k}": v for k, v in ours.state_dict().items()}
    sd["decoder.embed.weight"] = torch.randn(8, 192)
    save_file(sd, str(tmp_path / "model.safetensors"))
    cv.convert(tmp_path / "model.safetensors", tmp_path / "timm.safetensors", to="timm")
    tm = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0,
                           pretrained_cfg_overlay=dict(file=str(tmp_path / "timm.safetensors")))
    ours.eval(), tm.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = ours.forward_features(x), tm.forward_features(x)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    # and back: timm state dict -> ours (flat 'vit' source)
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()},
              str(tmp_path / "from_timm.safetensors"))
    rep = cv.convert(tmp_path / "from_timm.safetensors", tmp_path / "back.safetensors", to="vit")
    assert rep["source"] == "vit"
    back = create_vit("tiny")
    back.load_state_dict(load_file(str(tmp_path / "back.safetensors")), strict=True)
    with torch.no_grad():
        assert torch.allclose(back.forward_features(x), a, atol=1e-5)


def test_official_mae_layout(tmp_path, capsys):
    enc = create_vit("micro")
    torch.save({"model": mae_official_state(enc)}, str(tmp_path / "mae_pretrain.pth"))
    rep = cv.convert(tmp_path / "mae_pretrain.pth", tmp_path / "ours.safetensors", to="vit")
    assert rep["source"] == "vit"
    dropped = {k for k, _ in rep["dropped"]}
    assert {"mask_token", "decoder_embed.weight", "decoder_pos_embed"} <= dropped
    m = create_vit("micro")
    m.load_state_dict(load_file(str(tmp_path / "ours.safetensors")), strict=True)


def test_mm_trained_checkpoint_to_backbone(tmp_path):
    enc = create_vit("micro")
    sd = {f"backbone.{k}": v for k, v in enc.state_dict().items() if not k.startswith("norm.")}
    sd["backbone.fpn1.0.weight"] = torch.randn(64, 64, 2, 2)
    sd["backbone.fpn1.1.running_mean"] = torch.zeros(64)
    sd["decode_head.conv_seg.weight"] = torch.randn(150, 64, 1, 1)
    sd["auxiliary_head.conv_seg.weight"] = torch.randn(150, 64, 1, 1)
    torch.save({"state_dict": sd, "meta": {"iter": 10}}, str(tmp_path / "iter_10.pth"))
    rep = cv.convert(tmp_path / "iter_10.pth", tmp_path / "bb.safetensors", to="vit")
    reasons = {r for _, r in rep["dropped"]}
    assert "task heads / neck" in reasons and "dense adapter (fpn1-4)" in reasons
    got = load_file(str(tmp_path / "bb.safetensors"))
    assert set(got) == {k for k in enc.state_dict() if not k.startswith("norm.")}
    rep = cv.convert(tmp_path / "iter_10.pth", tmp_path / "bb_mm.safetensors", to="mm")
    assert "fpn1.0.weight" in load_file(str(tmp_path / "bb_mm.safetensors"))


@pytest.mark.parametrize("bad_key", ["encoder.blocks.0.ls1.gamma", "something_else.weight"])
def test_unknown_key_is_an_error(tmp_path, bad_key):
    _, sd = fake_pretrain_state()
    sd[bad_key] = torch.zeros(3)
    save_file(sd, str(tmp_path / "m.safetensors"))
    with pytest.raises(cv.ConversionError, match=bad_key.replace(".", r"\.")):
        cv.convert(tmp_path / "m.safetensors", tmp_path / "o.safetensors", to="mm")
    assert not (tmp_path / "o.safetensors").exists()


def test_flat_unknown_key_is_an_error(tmp_path):
    sd = mae_official_state(create_vit("micro"))
    sd["blocks.0.attn.q_bias"] = torch.zeros(64)   # BEiT layout: not ours
    torch.save(sd, str(tmp_path / "beit.pth"))
    with pytest.raises(cv.ConversionError, match=r"blocks\.0\.attn\.q_bias"):
        cv.convert(tmp_path / "beit.pth", tmp_path / "o", to="vit")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))
    torch.save({"model": {"a": Evil()}}, str(tmp_path / "evil.pth"))
    with pytest.raises(cv.ConversionError, match="weights_only=True"):
        cv.load_checkpoint_file(tmp_path / "evil.pth")


def test_timm_target_refuses_relative_position_tables(tmp_path):
    enc = create_vit("micro", rel_pos_bias=True)
    save_file({f"encoder.{k}": v for k, v in enc.state_dict().items()},
              str(tmp_path / "m.safetensors"))
    with pytest.raises(cv.ConversionError, match="relative position"):
        cv.convert(tmp_path / "m.safetensors", tmp_path / "t", to="timm")


def test_cli_entry_points(tmp_path):
    _, d = write_pretrain_dir(tmp_path)
    r = subprocess.run([sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), str(d),
                        str(tmp_path / "a.safetensors"), "--to", "mm"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "dropped:" in r.stdout and (tmp_path / "a.pth").is_file()
    from mixedae.cli import main
    assert main(["convert", str(d), str(tmp_path / "b.safetensors"), "--to", "timm"]) == 0
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "c"), "--to", "mm"]) == 2
