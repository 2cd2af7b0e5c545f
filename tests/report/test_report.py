"""``mixedae report``: on the demo's own output, on partial runs, with transfer results; the
attention maps are the model's own; the HomoCon floor is the minimum of Eq. 7 as implemented."""
import json
import math
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("skimage")

from mixedae.model.homologous_contrastive import homologous_contrastive_loss  # noqa: E402
from mixedae.model.mixing import mixing_masks  # noqa: E402
from mixedae.pretrain.config import get_preset  # noqa: E402
from mixedae.report import attention as A  # noqa: E402
from mixedae.report import curves as C  # noqa: E402
from mixedae.report.collect import PretrainRun, find_transfers, load_run  # noqa: E402
from mixedae.report.main import main as report_main  # noqa: E402


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """``mixedae demo`` (micro, 4 steps): it writes its own report at the end."""
    from mixedae.pretrain import demo
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert demo.main(["--steps", "4", "--model", "micro", "--batch-size", "8",
                      "--output-dir", str(out)]) == 0
    return out


def test_demo_writes_its_report(demo_run, capsys):
    page = (demo_run / "report" / "report.html").read_text()
    md = (demo_run / "report" / "report.md").read_text()
    pngs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert set(pngs) == {"curves.png", "topk.png", "reconstructions.png", "attention_cls.png",
                         "attention_patch.png"}
    assert page.count('src="data:image/png;base64,') == len(pngs)
    for p in pngs:
        assert (demo_run / "report" / p).stat().st_size > 5000
    last = json.loads((demo_run / "log.jsonl").read_text().splitlines()[-1])
    assert f"| loss | {last['loss']:.4g} |" in md
    floor = math.log(15)  # demo: 64 px, 8-px patches, 16-px mask patches, 4 sources
    assert f"(floor {floor:.3f})" in md
    # present parts vs the transfer results that were not given
    for part in ("Pretraining curves", "TopK sampling accuracy", "Attention maps"):
        assert re.search(rf"\| \[{re.escape(part)}[^|]*\]\(#[^)]*\) \| present \|", md), part
    assert md.count("| missing |") == 4 and "paper, Table 2 (ViT-B/16)" in md


def test_attention_maps_are_the_models_own(demo_run):
    """probs @ v of the report's attention equals the last block's real attention output."""
    run = load_run(demo_run)
    model, cfg = A.load_model(run)
    imgs, _ = A.load_images(cfg, None, 2 * cfg.group_size)
    for mixed in (False, True):
        got = []
        h = model.encoder.blocks[-1].attn.proj.register_forward_hook(
            lambda m, i, o: got.append(i[0]))
        att = A.last_block_attention(model, imgs, mixed, seed=3)
        h.remove()
        S, H, N, d = att["v"].shape
        out = (att["probs"] @ att["v"]).transpose(1, 2).reshape(S, N, H * d)
        torch.testing.assert_close(out, got[-1].float(), atol=1e-5, rtol=1e-4)
    kept = att["kept"][:, :, 1:, 1:].sum(-1)  # Eq. 6: exactly K patch keys per patch query
    assert att["topk"] and (kept == cfg.topk).all()
    cls = A.cls_attention(model, imgs)
    assert cls.shape == (len(imgs), *model.encoder.grid_size)
    assert ((cls.flatten(1).sum(1) > 0.5) & (cls.flatten(1).sum(1) <= 1 + 1e-6)).all()
    nb = A.patch_neighbourhood(model, imgs, query=5, seed=3)
    assert torch.allclose(nb["selected"].sum(-1), torch.tensor(float(cfg.topk)))
    assert ((nb["attn"] > 0) <= (nb["selected"] > 0)).all()  # attends only to kept keys
    assert nb["same"][:, 5].all() and 0 <= float(nb["precision"].min()) <= 1


def test_a_triton_run_is_drawn_on_the_cpu(demo_run, tmp_path):
    """A run trained with the Triton kernels (GPU only) is rebuilt with the SDPA path."""
    import shutil
    cfg = json.loads((demo_run / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "attn_impl": "triton"}))
    shutil.copy(demo_run / "model.safetensors", tmp_path / "model.safetensors")
    model, got = A.load_model(load_run(tmp_path))
    assert got.attn_impl == "sdpa"
    imgs, _ = A.load_images(got, None, 2 * got.group_size)
    assert A.last_block_attention(model, imgs, mixed=True)["topk"]


@pytest.mark.parametrize("homo_cls,seg", [("topk", "attention"), ("always_visible", "residual")])
def test_drawn_selection_is_the_models_own(homo_cls, seg):
    """The drawn TopK selection and weights are what the last block used, for both cls modes
    and with the segment code in q/k (``seg_embed_mode='attention'``): probs @ v equals the
    block's real attention output; with literal Eq. 6 the cls row keeps K keys too."""
    from mixedae.model.mixed_autoencoder import MixedAutoencoder
    cfg = get_preset("mixedae_tiny", model="micro", img_size=32, patch_size=8,
                     mask_patch_size=16, batch_size=8, homo_cls=homo_cls, seg_embed_mode=seg)
    torch.manual_seed(0)
    model = MixedAutoencoder(cfg.model_config()).eval()
    imgs = torch.randn(2 * cfg.group_size, 3, 32, 32)
    got = []
    h = model.encoder.blocks[-1].attn.proj.register_forward_hook(lambda m, i, o: got.append(i[0]))
    att = A.last_block_attention(model, imgs, mixed=True, seed=1)
    h.remove()
    S, H, N, d = att["v"].shape
    out = (att["probs"] @ att["v"]).transpose(1, 2).reshape(S, N, H * d)
    torch.testing.assert_close(out, got[-1].float(), atol=1e-5, rtol=1e-4)
    kept_cls = att["kept"][:, :, 0].sum(-1)
    assert (kept_cls == (cfg.topk if homo_cls == "topk" else N)).all()


@pytest.mark.parametrize("img,patch,mask", [(64, 8, 16), (224, 16, 32)])
def test_homocon_floor_is_the_minimum_of_eq7(img, patch, mask):
    cfg = get_preset("mixedae_tiny", img_size=img, patch_size=patch, mask_patch_size=mask)
    run = PretrainRun(Path("."), json.loads(cfg.to_json()), [], None, None)
    floor = C.homocon_floor(run)  # what the report draws, from the run's config.json
    grid = (img // patch, img // patch)
    src = mixing_masks(3, 1, cfg.group_size, grid, mask // patch)[:, 0]
    ideal = torch.nn.functional.one_hot(src, cfg.group_size).float()  # perfect recognition
    assert homologous_contrastive_loss(ideal, src, tau=0.01).item() == pytest.approx(floor,
                                                                                    abs=1e-4)
    worse = ideal + 0.3 * torch.randn_like(ideal)
    assert homologous_contrastive_loss(worse, src, tau=0.25).item() > floor


def test_partial_run_without_weights(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    cfg = get_preset("mixedae_tiny", model="micro", img_size=32, patch_size=8,
                     mask_patch_size=16, batch_size=8)
    (run / "config.json").write_text(cfg.to_json())
    recs = [dict(step=s, epoch=0, loss=1.0 / s, loss_recon=0.9 / s, loss_homocon=3.0, lr=1e-3,
                 topk_acc=[0.3, 0.4, 0.5], img_per_s=10.0, probe_acc=0.25 + 0.1 * s)
            for s in (1, 2)]
    (run / "log.jsonl").write_text("\n".join(map(json.dumps, recs)) + "\n{not json\n")
    assert report_main([str(run), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| probe_acc | 0.45 |" in md            # a key another part of the project adds
    assert "log.jsonl:3 is not JSON (skipped)" in md
    assert "no model.safetensors" in md and md.count("| missing |") == 3 + 4
    assert "| step 2 | 0.300 | 0.400 | 0.500 |" in md


def _write_transfer_outputs(root):
    """Files in the exact layouts tools/train.py (mmengine), tools/test.py --out,
    mixedae finetune and mixedae transfer write."""
    seg = root / "ade" / "20250101_000000" / "vis_data"
    seg.mkdir(parents=True)
    seg.joinpath("scalars.json").write_text(
        json.dumps({"lr": 1e-4, "loss": 3.2, "step": 1}) + "\n"
        + json.dumps({"lr": 1e-4, "loss": 3.0, "step": 2}) + "\n"
        + json.dumps({"aAcc": 40.0, "mIoU": 2.5, "mAcc": 5.0, "step": 2}) + "\n")
    (root / "coco").mkdir()
    (root / "coco" / "test_metrics.json").write_text(json.dumps(
        {"coco/bbox_mAP": 0.123, "coco/bbox_mAP_50": 0.2, "coco/bbox_mAP_75": 0.1,
         "coco/segm_mAP": 0.05, "coco/segm_mAP_50": 0.1, "coco/segm_mAP_75": -1.0}))
    (root / "ft").mkdir()
    (root / "ft" / "result.json").write_text(json.dumps(
        {"step": 10, "finished": True, "best_top1": 12.5, "last": {"top1": 11.0}}))
    (root / "cls" / "runs").mkdir(parents=True)       # mixedae transfer's per-dataset runs
    (root / "cls" / "results.csv").write_text("Method,Aircraft,Caltech,Cars,C10,C100,DTD,"
                                              "Flowers,Food,Pets,SUN,VOC,Avg.\n"
                                              "r,,61.0000,,33.5000,,,,,,,,47.2500\n")


def test_transfer_results_beside_the_paper(tmp_path):
    _write_transfer_outputs(tmp_path / "t")
    found = {r.kind: r for r in find_transfers(tmp_path / "t")}
    assert set(found) == {"ade", "coco", "finetune", "cls11"}
    assert found["ade"].metrics["mIoU"] == 2.5 and "2 training iteration" in found["ade"].note
    assert found["coco"].metrics["AP_bb"] == pytest.approx(12.3)   # fractions → %
    assert "AP75_mk" not in found["coco"].metrics                   # -1 = not computed
    assert found["cls11"].metrics == {"Caltech": 61.0, "C10": 33.5, "Avg.": 47.25}
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(get_preset("mixedae_base").to_json())
    assert report_main([str(run), str(tmp_path / "t"), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    # the run has no weights and no result records a fingerprint: nothing is credited to it
    assert "| ade | checkpoint unknown (measured) | not recorded | 2.5 |" in md
    assert "this run (measured)" not in md
    assert f"{tmp_path / 't' / 'ade'}: last validation of tools/train.py; 2 training" in md
    assert "| MixedAE (1600 ep) | paper, Table 1 (ViT-B/16) | ADE20K | 49.8 |" in md
    assert "| 12.3 | 20.0 | 10.0 | 5.0 | 10.0 | – |" in md
    assert "| MixedAE (300 ep) | paper, Table 1 (ViT-B/16) | COCO | 47.8† |" in md
    assert "2/11 datasets" in md and "not comparable" in md
    assert "ViT-micro" not in md and "for orientation only" not in md


def test_results_credited_only_to_their_checkpoint_and_labelled_by_dataset(tmp_path):
    """A result is "this run" only when its recorded checkpoint (path, size, sha256) is the
    run's weights; one from other weights or without a fingerprint is shown as such; a
    CIFAR-10 fine-tune is labelled CIFAR-10, not ImageNet-1K."""
    from safetensors.torch import save_file
    from mixedae.runtime.provenance import checkpoint_record
    run, other, t = tmp_path / "run", tmp_path / "other", tmp_path / "t"
    for d, v in ((run, 1.0), (other, 2.0)):
        d.mkdir()
        (d / "config.json").write_text(get_preset("mixedae_base").to_json())
        save_file({"w": torch.full((4,), v)}, str(d / "model.safetensors"))

    def finetune(name, record, data, n_val):
        (t / name).mkdir(parents=True)
        (t / name / "result.json").write_text(json.dumps(
            {"step": 10, "finished": True, "best_top1": 12.5, **record}))
        (t / name / "log.jsonl").write_text(json.dumps(
            {"event": "start", "step": 0, "args": {"data": data}, "n_val": n_val}) + "\n")
    finetune("mine", {"pretrained": checkpoint_record(run)}, "/d/imagenet", 50000)
    finetune("theirs", {"pretrained": checkpoint_record(other)}, "/d/imagenet", 50000)
    finetune("c10", {}, "/d/cifar10", 10000)
    # a pipeline stage: the marker records the checkpoint the stage was handed
    (t / "ade").mkdir()
    (t / "ade" / "test_metrics.json").write_text(json.dumps({"mIoU": 3.5}))
    (t / "stages").mkdir()
    (t / "stages" / "ade.json").write_text(json.dumps(
        {"stage": "ade", "signature": {"data": "/d/ade_tiny"},
         "pretrained": checkpoint_record(run)}))
    assert report_main([str(run), str(t), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| run | this run (measured) | imagenet | 12.5 |" in md
    assert "| theirs | another checkpoint (measured) | imagenet | 12.5 |" in md
    assert f"not this run's weights: {other / 'model.safetensors'}" in md
    assert "| c10 | checkpoint unknown (measured) | cifar10 (not ImageNet-1K) | 12.5 |" in md
    assert "measured on cifar10, not ImageNet-1K: not comparable" in md
    assert "| run | this run (measured) | ade_tiny | 3.5 |" in md
    assert "ImageNet fine-tuning" not in md and "| method | source | data | top-1 |" in md
    # the run's weights change (training went on): the old results are no longer its own
    save_file({"w": torch.full((4,), 3.0)}, str(run / "model.safetensors"))
    assert report_main([str(run), str(t), "--out", str(tmp_path / "r")]) == 0
    assert "this run (measured)" not in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.parametrize("argv,msg", [
    (["{tmp}/nope"], "no such directory"),
    (["{tmp}"], "not a pretraining run"),
    (["{run}", "{tmp}/nope"], "transfer folder"),
    (["{run}", "--num-images", "0"], "--num-images 0"),
    (["{run}", "--query-patch", "64"], "--query-patch 64: the model has 64 patches"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, msg):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("")
    (run / "config.json").write_text(get_preset("mixedae_tiny", img_size=64, patch_size=8,
                                                mask_patch_size=16).to_json())
    rc = report_main([a.format(tmp=tmp_path, run=run) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and msg in err[0]


def _chromium():
    import shutil
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")


def _headless(binary, tmp_path, *args):
    import subprocess
    import tempfile
    profile = tempfile.mkdtemp(dir=tmp_path)
    r = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--hide-scrollbars", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_report_renders_in_chromium(demo_run, tmp_path):
    """Real headless Chromium: every image decodes, every link resolves, the page paints."""
    from html.parser import HTMLParser

    from PIL import Image
    binary = _chromium()
    rep = demo_run / "report"
    probe = rep / "_browser_check.html"  # beside the page, so relative links resolve alike
    probe.write_text((rep / "report.html").read_text().replace("</body>", (
        "<script>addEventListener('load',()=>{const im=[...document.images];document.title="
        "'broken '+im.filter(i=>!i.complete||i.naturalWidth===0).length+' of '+im.length+"
        "' widths '+im.map(i=>i.naturalWidth).join(',')})</script></body>")))
    dom = _headless(binary, tmp_path, "--virtual-time-budget=10000", "--dump-dom",
                    probe.as_uri())
    probe.unlink()
    title = re.search(r"<title>([^<]*)</title>", dom).group(1)
    m = re.fullmatch(r"broken (\d+) of (\d+) widths ([\d,]+)", title)
    assert m and m.group(1) == "0" and m.group(2) == "5", title
    assert all(int(w) > 300 for w in m.group(3).split(","))

    class Links(HTMLParser):
        hrefs, ids = [], set()

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if a.get("id"):
                self.ids.add(a["id"])
            if tag == "a":
                self.hrefs.append(a["href"])
    links = Links()
    links.feed(dom)
    assert len(links.hrefs) >= 15
    for href in links.hrefs:
        if href.startswith("#"):
            assert href[1:] in links.ids, href
        else:
            assert not re.match(r"[a-z]+:", href) and (rep / href).is_file(), href
    shot = tmp_path / "shot.png"
    _headless(binary, tmp_path, "--window-size=1280,2400", f"--screenshot={shot}",
              (rep / "report.html").as_uri())
    img = Image.open(shot).convert("L")
    assert img.size == (1280, 2400)
    hist = img.histogram()
    assert max(hist) < 0.95 * sum(hist)  # not a blank page: text, tables and figures painted


def _colorbars(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_figures_carry_their_scales_and_caveats(tmp_path):
    """Attention maps have colour bars; the throughput curve marks its dips; the transfer
    bars say "not comparable" on the figure when the run is not the paper's ViT-B/16 224."""
    import matplotlib.pyplot as plt
    from mixedae.classification.results import _bars_fig
    from mixedae.report import maps
    imgs = torch.randn(2, 3, 32, 32)
    fig = maps.plot_cls_attention(imgs, ["a", "b"], [("run", torch.rand(2, 4, 4)),
                                                     ("base", torch.rand(2, 4, 4))],
                                  tmp_path / "cls.png")
    assert len(_colorbars(fig)) == 2 and (tmp_path / "cls.png").is_file()
    nb = dict(image=imgs, attn=torch.rand(2, 16), selected=torch.rand(2, 16),
              same=torch.rand(2, 16) > 0.5, precision=torch.rand(2), grid=(4, 4), patch=8,
              query=5)
    fig = maps.plot_neighbourhoods([("run", nb)], tmp_path / "nb.png")
    assert len(_colorbars(fig)) == 2 * 3  # same source, TopK kept, attention; per sample
    recs = [dict(step=s, loss=1.0, img_per_s=2.0 if s == 4 else 100.0 + s) for s in range(1, 9)]
    run = PretrainRun(tmp_path, None, recs, None, 8)
    assert C.throughput_dips(recs) == ([4], [2.0])
    fig = C.plot_curves(run, tmp_path / "curves.png")
    assert any("below half the median" in t for t in fig.axes[3].get_legend_handles_labels()[1])
    res = {"cifar10": {"test_score": 50.0, "settings": {"model": "micro", "patch_size": 16,
                                                        "img_size": 64}}}
    texts = [t.get_text() for t in _bars_fig(plt, "r", res).axes[0].texts]
    assert any(t.startswith("NOT COMPARABLE: this run is ViT-micro/16 at 64 px") for t in texts)
    res["cifar10"]["settings"].update(model="base", img_size=224)
    texts = [t.get_text() for t in _bars_fig(plt, "r", res).axes[0].texts]
    assert not any("NOT COMPARABLE" in t for t in texts)
    plt.close("all")
