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
from mixedae.runtime.errors import CheckpointError
from mixedae.runtime.weights import match_state_dict, read_weights

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
    with pytest.raises(CheckpointError, match=bad_key.replace(".", r"\.")):
        cv.convert(tmp_path / "m.safetensors", tmp_path / "o.safetensors", to="mm")
    assert not (tmp_path / "o.safetensors").exists()


def test_flat_unknown_key_is_an_error(tmp_path):
    sd = mae_official_state(create_vit("micro"))
    sd["blocks.0.attn.q_bias"] = torch.zeros(64)   # BEiT layout: not ours
    torch.save(sd, str(tmp_path / "beit.pth"))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.q_bias"):
        cv.convert(tmp_path / "beit.pth", tmp_path / "o", to="vit")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))
    torch.save({"model": {"a": Evil()}}, str(tmp_path / "evil.pth"))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_weights(tmp_path / "evil.pth")


def test_timm_target_refuses_relative_position_tables(tmp_path):
    enc = create_vit("micro", rel_pos_bias=True)
    save_file({f"encoder.{k}": v for k, v in enc.state_dict().items()},
              str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="relative position"):
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


# ---- issue 10 item 6: refuse what does not fit, accept every documented source ------------
@pytest.mark.parametrize("edit,needle", [
    (lambda sd: sd.pop("encoder.blocks.2.mlp.fc1.weight"), "missing: blocks.2.mlp.fc1.weight"),
    (lambda sd: sd.pop("encoder.norm.bias"), "missing: norm.bias"),
    (lambda sd: sd.update({"encoder.blocks.0.attn.qkv.weight": torch.zeros(10, 64)}),
     "wrong: blocks.0.attn.qkv.weight (10, 64) vs (192, 64)"),
    (lambda sd: sd.update({"encoder.blocks.1.norm1.weight":
                           sd["encoder.blocks.1.norm1.weight"].to(torch.int32)}),
     "blocks.1.norm1.weight has dtype torch.int32"),
    (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("encoder.blocks.3.")],
     "is no known ViT size"),
])
def test_incomplete_or_wrong_checkpoint_is_refused_with_a_list(tmp_path, capsys, edit, needle):
    _, sd = fake_pretrain_state()
    edit(sd)
    save_file(sd, str(tmp_path / "m.safetensors"))
    from mixedae.cli import main
    rc = main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "o"), "--to", "vit"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not list(tmp_path.glob("o*"))  # nothing written


def test_half_precision_is_cast_and_reported(tmp_path, capsys):
    enc, sd = fake_pretrain_state()
    sd = {k: v.half() if k.startswith("encoder.blocks.") else v for k, v in sd.items()}
    save_file(sd, str(tmp_path / "m.safetensors"))
    rep = cv.convert(tmp_path / "m.safetensors", tmp_path / "o.safetensors", to="vit")
    assert "cast to float32" in capsys.readouterr().out and rep["notes"]
    out = load_file(str(tmp_path / "o.safetensors"))
    assert all(v.dtype == torch.float32 for v in out.values())
    assert torch.equal(out["blocks.0.attn.qkv.weight"],
                       enc.state_dict()["blocks.0.attn.qkv.weight"].half().float())


def test_match_state_dict_refuses_integer_for_float():
    model_sd = {"w": torch.zeros(3), "n": torch.zeros((), dtype=torch.int64)}
    out, _, _ = match_state_dict(model_sd, {"w": torch.ones(3, dtype=torch.float16),
                                               "n": torch.tensor(5)})
    assert out["w"].dtype == torch.float32 and out["n"].item() == 5
    with pytest.raises(CheckpointError, match=r"dtype mismatch: w torch\.int32"):
        match_state_dict(model_sd, {"w": torch.ones(3, dtype=torch.int32), "n": torch.tensor(1)})


def mmengine_runner_checkpoint(work_dir):
    """A real mmengine Runner checkpoint (meta, message hub with HistoryBuffers and numpy
    scalars, optimizer, schedulers) of a model with a micro-ViT backbone and a task head."""
    pytest.importorskip("mmengine")
    import numpy as np
    from mmengine.evaluator import BaseMetric
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Seg(BaseModel):
        def __init__(self):
            super().__init__()
            self.backbone = create_vit("micro", patch_size=8, img_size=32)
            self.decode_head = torch.nn.Module()
            self.decode_head.conv_seg = torch.nn.Conv2d(64, 3, 1)

        def forward(self, inputs, mode="tensor"):
            x = torch.stack(inputs) if isinstance(inputs, list) else inputs
            f = self.backbone.forward_features(x)[:, 1:].mean(1)[:, :, None, None]
            out = self.decode_head.conv_seg(f)
            return dict(loss=(out ** 2).mean()) if mode == "loss" else list(out)

    class Metric(BaseMetric):
        def process(self, batch, samples):
            self.results.extend(np.float64(1.0) for _ in samples)

        def compute_metrics(self, results):
            return dict(acc=np.float64(np.mean(results)))

    data = [dict(inputs=torch.randn(3, 32, 32)) for _ in range(4)]
    loader = dict(dataset=data, sampler=dict(type="DefaultSampler", shuffle=False),
                  batch_size=2, collate_fn=dict(type="default_collate"))
    runner = Runner(model=Seg(), work_dir=str(work_dir), train_dataloader=loader,
                    val_dataloader=loader, val_evaluator=[Metric()],
                    optim_wrapper=dict(optimizer=dict(type="AdamW", lr=0.1)),
                    train_cfg=dict(by_epoch=False, max_iters=2, val_interval=2), val_cfg=dict(),
                    param_scheduler=[dict(type="LinearLR", by_epoch=False, end=2)],
                    default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=2,
                                                       by_epoch=False)),
                    experiment_name=f"convert_{work_dir.name}")
    runner.train()
    return work_dir / "iter_2.pth", runner.model.backbone.state_dict()


def test_real_mmengine_runner_checkpoint_converts_without_mm_imports(tmp_path):
    ckpt, backbone = mmengine_runner_checkpoint(tmp_path / "work")
    code = ("import sys; from mixedae.convert import main; rc = main(sys.argv[1:]); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('mmengine', 'mmcv', 'mmseg', 'mmdet') or m == 'mixedae.mm'); "
            "print('MM_IMPORTS', bad); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(ckpt), str(tmp_path / "bb.safetensors"),
                        "--to", "vit"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "MM_IMPORTS []" in r.stdout and "task heads / neck" in r.stdout
    got = load_file(str(tmp_path / "bb.safetensors"))
    assert set(got) == set(backbone) and all(torch.equal(got[k], backbone[k]) for k in got)
    create_vit("micro", patch_size=8, img_size=32).load_state_dict(got, strict=True)


def test_avg_pool_finetuned_vit_without_final_norm_converts(tmp_path):
    """MAE fine-tuned / timm avg-pool ViTs have fc_norm instead of norm: complete as they are."""
    src = create_vit("micro", num_classes=10, global_pool="avg")
    save_file(src.state_dict(), str(tmp_path / "ft.safetensors"))
    (tmp_path / ".o.safetensors.123-deadbeef.tmp").write_bytes(b"left by a killed convert")
    cv.convert(tmp_path / "ft.safetensors", tmp_path / "o.safetensors", to="vit")
    dst = create_vit("micro", num_classes=10, global_pool="avg")
    dst.load_state_dict(load_file(str(tmp_path / "o.safetensors")), strict=True)
    assert not list(tmp_path.glob("*.tmp"))


def test_key_names_are_read_from_the_header(tmp_path):
    """The dense path checks a checkpoint's layout from its key names before the backbone's
    one real read (safetensors: header only)."""
    from safetensors.torch import save_file

    from mixedae.runtime.weights import extract_vit
    from mixedae.runtime.weights import read_key_names
    sd = {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4), "blocks.0.norm1.weight":
          torch.ones(8), "decoder_embed.weight": torch.zeros(2, 8)}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save(sd, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        keys = read_key_names(tmp_path / name)
        assert keys == dict.fromkeys(sd)
        source, kept, dropped = extract_vit(keys)
        assert source == "vit" and set(kept) == set(sd) - {"decoder_embed.weight"}
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        read_key_names(tmp_path / "bad.safetensors")
