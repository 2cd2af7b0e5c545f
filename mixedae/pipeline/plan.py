"""The stages of ``mixedae pipeline`` and the command lines they run."""
from __future__ import annotations

import shlex
from pathlib import Path

from mixedae.pipeline import stages as S
from mixedae.runtime.errors import ConfigError

TRANSFERS = ("ade", "coco", "cls11", "finetune")
TASK = {"ade": ("seg", "--ade-data"), "coco": ("det", "--coco-data")}
PRODUCTION = {  # (task, ViT size) → config
    ("ade", "base"): "mmseg_configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py",
    ("ade", "large"): "mmseg_configs/upernet_vit-l16_8xb2-amp-160k_ade20k-512x512.py",
    ("coco", "base"): "mmdet_configs/cascade-mask-rcnn_vit-b16_fpn_8xb2-amp-1x_coco.py",
    ("coco", "large"): "mmdet_configs/cascade-mask-rcnn_vit-l16_fpn_8xb2-amp-1x_coco.py",
}


def split(flag: str, text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as e:
        raise ConfigError(f"{flag} {text!r}: {e}") from e


def launch(gpus: int, argv: list[str]) -> list[str]:
    """``python ARGV`` or its torchrun form (``-m module`` or a script path)."""
    if gpus == 1:
        return [S.python(), *argv]
    return [S.python(), "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={gpus}", *argv]


def mm_config(args, cfg, task: str) -> str:
    """Config path (or 'smoke') for an mm task; refuses sizes without a config."""
    if args.mm_configs == "smoke":
        if cfg.model != "micro":
            raise ConfigError(f"--mm-configs smoke builds ViT-micro models; the pretraining "
                              f"config is ViT-{cfg.model} (add --model micro to "
                              f"--pretrain-args)")
        return "smoke"
    if (task, cfg.model) not in PRODUCTION:
        raise ConfigError(f"--transfers {task}: no production config for ViT-{cfg.model} "
                          f"(base and large exist); use --mm-configs smoke with ViT-micro")
    return PRODUCTION[(task, cfg.model)]


def build_stages(args, cfg, transfers: list[str], out: Path) -> list[S.Stage]:
    run = out / "pretrain"
    backbone = out / "convert" / "backbone_mm.safetensors"
    pre_argv = ["-m", "mixedae.cli", "pretrain", "--preset", args.preset, "--data", args.data,
                "--output-dir", run, "--no-progress", *split("--pretrain-args",
                                                              args.pretrain_args)]
    stages = [
        S.Stage("pretrain", {"preset": args.preset, "data": args.data, "gpus": args.gpus,
                             "pretrain_args": args.pretrain_args},
                [lambda: launch(args.gpus, pre_argv)], output=run),
        S.Stage("convert", {"to": "mm"},
                [lambda: [S.python(), "-m", "mixedae.cli", "convert", run, backbone,
                          "--to", "mm"]], needs=("pretrain",), output=out / "convert"),
    ]
    for t in transfers:
        stages.append(mm_stage(args, cfg, t, out, backbone) if t in TASK
                      else cls_stage(args, t, out, run))
        stages[-1].pretrained = run  # mm: through the convert stage's copy of its weights
    report_argv = [S.python(), "-m", "mixedae.cli", "report", run, out, "--out",
                   out / "report", "--name", out.name, *split("--report-args",
                                                              args.report_args)]
    stages.append(S.Stage("report", {"args": args.report_args}, [lambda: report_argv],
                          needs=tuple(s.name for s in stages), partial_ok=True,
                          output=out / "report"))
    return stages


def mm_stage(args, cfg, task: str, out: Path, backbone: Path) -> S.Stage:
    """tools/train.py (dist_train.sh on several GPUs), then tools/test.py on the last
    checkpoint, metrics into ``OUT/<task>/test_metrics.json``."""
    kind, flag = TASK[task]
    data = getattr(args, flag[2:].replace("-", "_"))
    work = out / task
    source = mm_config(args, cfg, task)
    config = work / f"{kind}_smoke.py" if source == "smoke" else S.REPO / source
    opts = [f"model.backbone.patch_size={cfg.patch_size}", *args.mm_cfg_options]
    if source != "smoke":  # the production configs read data/ade, data/coco by default
        root = str(Path(data).resolve()) + ("/" if task == "coco" else "")
        opts += [f"{d}.dataset.data_root={root}" for d in
                 ("train_dataloader", "val_dataloader", "test_dataloader")]
        if task == "coco":
            ann = root + "annotations/instances_val2017.json"
            opts += [f"val_evaluator.ann_file={ann}", f"test_evaluator.ann_file={ann}"]
    steps = []
    if source == "smoke":
        steps.append(lambda: [S.python(), "-m", "mixedae.mm.smoke", kind, data, config])
    train = ["--work-dir", work, "--pretrained", backbone, "--resume", "--cfg-options", *opts]
    steps.append(lambda: ([S.python(), S.REPO / "tools/train.py", config, *train]
                          if args.gpus == 1 else
                          ["bash", S.REPO / "tools/dist_train.sh", config, args.gpus, *train]))
    test = ["--work-dir", work / "test", "--metrics-out", work / "test_metrics.json",
            "--cfg-options", *opts] + (["--launcher", "pytorch"] if args.gpus > 1 else [])
    steps.append(lambda: launch(args.gpus, [S.REPO / "tools/test.py", config,
                                            last_checkpoint(work), *test]))
    return S.Stage(task, {"config": source, "data": data, "cfg_options": opts,
                          "gpus": args.gpus}, steps, needs=("convert",), output=work,
                   env={"PYTHON": S.python()})


def last_checkpoint(work: Path) -> str:
    """The checkpoint mmengine's CheckpointHook recorded last (``work/last_checkpoint``)."""
    f = work / "last_checkpoint"
    return f.read_text().strip() if f.is_file() else f"<checkpoint recorded in {f}>"


def cls_stage(args, task: str, out: Path, run: Path) -> S.Stage:
    if task == "cls11":
        argv = ["-m", "mixedae.cli", "transfer", "--datasets", args.cls_datasets, "--root",
                args.cls_root, "--checkpoint", run, "--output-dir", out / "cls11",
                *split("--cls-args", args.cls_args)]
        sig = {"datasets": args.cls_datasets, "root": args.cls_root, "args": args.cls_args}
    else:
        argv = ["-m", "mixedae.cli", "finetune", "--data", args.ft_data, "--checkpoint", run,
                "--output-dir", out / task, "--resume", "auto", *split("--ft-args",
                                                                      args.ft_args)]
        sig = {"data": args.ft_data, "args": args.ft_args}
    return S.Stage(task, {**sig, "gpus": args.gpus}, [lambda: launch(args.gpus, argv)],
                   needs=("pretrain",), output=out / task)
