"""FLOPs and parameter counts of a config's network, as mmseg's / mmdet's
``tools/analysis_tools/get_flops.py`` measure them (``tools/get_flops.py`` is the command line):
the model built from the config (random weights, eval mode), one random picture of the given
size through the model's own data preprocessor, then mmengine's
``get_model_complexity_info`` (fvcore's counters: one multiply-add counts as one FLOP) over
``model(inputs, data_samples, mode='tensor')``.

As in mmseg's tool, the auxiliary head (training only) is left out of the FLOPs and the
inference parameter count; the per-module parameter table keeps it. Segmentation counts one
whole-image forward (not the sliding-window test), detection the RPN and every cascade stage
on the proposals of that random picture."""
from __future__ import annotations

from functools import partial

import torch
from mmengine.analysis import get_model_complexity_info, parameter_count
from mmengine.analysis.print_helper import _format_size
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mixedae.mm.runner import adapt_to_machine, register_task
from mixedae.mm import preflight
from mixedae.runtime.errors import ConfigError

__all__ = ["default_shape", "model_complexity", "format_report"]


def default_shape(cfg: Config, task: str) -> tuple[int, int]:
    """(H, W) when ``--shape`` is not given: segmentation the preprocessor's crop size,
    detection the test pipeline's resize scale (mmdet's (1333, 800) is (W, H))."""
    if task == "mmseg":
        size = cfg.model.get("data_preprocessor", {}).get("size")
        if size:
            return int(size[0]), int(size[1])
    else:
        for t in cfg.get("test_pipeline") or []:
            if t.get("type") == "Resize" and t.get("scale"):
                w, h = t["scale"]
                return int(h), int(w)
    raise ConfigError("cannot tell a default input size from the config; give --shape H W")


def _sample(task: str, h: int, w: int):
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1.0, 1.0))
    if task == "mmseg":
        from mmseg.structures import SegDataSample
        return SegDataSample(metainfo=meta)
    from mmdet.structures import DetDataSample
    return DetDataSample(metainfo=meta)


def model_complexity(cfg: Config, shape: tuple[int, int] | None = None,
                     show_table: bool = False) -> dict:
    """FLOPs and parameters of the network of ``cfg`` on a ``shape`` = (H, W) picture.
    Returns ``task``, ``shape`` (asked), ``input_shape`` (after the preprocessor's padding),
    ``flops``, ``params`` (inference network), ``params_by_module`` (top-level modules of the
    whole model) and ``table`` (mmengine's per-module table when ``show_table``)."""
    task = register_task(cfg)
    adapt_to_machine(cfg, distributed=False)   # SyncBN -> BN: one process, maybe no CUDA
    preflight.check_strides(cfg)
    h, w = shape or default_shape(cfg, task)
    if task == "mmseg":
        from mmseg.registry import MODELS
    else:
        from mmdet.registry import MODELS
    with DefaultScope.overwrite_default_scope(task):
        model = MODELS.build(cfg.model)
    by_module = {name: n for name, n in parameter_count(model).items()
                 if name and "." not in name}
    if getattr(model, "auxiliary_head", None) is not None:
        model.auxiliary_head = None   # training only (as mmseg's get_flops)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    data = dict(inputs=[torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)],
                data_samples=[_sample(task, h, w)])
    with torch.no_grad():
        data = model.data_preprocessor(data, training=False)
    inputs, samples = data["inputs"], data["data_samples"]
    model.forward = partial(model.forward, data_samples=samples, mode="tensor")
    out = get_model_complexity_info(model, inputs=inputs, show_table=show_table,
                                    show_arch=False)
    return dict(task=task, shape=(h, w), input_shape=tuple(inputs.shape[-2:]),
                flops=int(out["flops"]), params=int(out["params"]),
                params_by_module=by_module, table=out.get("out_table", ""))


def format_report(r: dict) -> str:
    """The report block of mmseg's / mmdet's get_flops, plus parameters per module."""
    line = "=" * 30
    text = [line]
    if r["input_shape"] != r["shape"]:
        text.append(f"input {r['shape']} padded to {r['input_shape']} by the data "
                    f"preprocessor")
    text += ["Compute type: direct: one random picture",
             f"Input shape: {r['input_shape']}",
             f"Flops: {_format_size(r['flops'])} ({r['flops']:,})",
             f"Params: {_format_size(r['params'])} ({r['params']:,}, the inference network)",
             "Params per module (whole model):"]
    text += [f"  {name}: {_format_size(n)} ({n:,})" for name, n in r["params_by_module"].items()]
    text.append(line)
    if r["table"]:
        text.append(r["table"].strip("\n"))
    text.append("FLOPs count one multiply-add as one (fvcore / mmengine.analysis); operators "
                "warned about as unsupported above count as zero.")
    return "\n".join(text)
