"""OpenMMLab glue (the only place in ``mixedae`` that imports mmengine/mmcv/mmseg/mmdet).

Importing it
* applies the torch 2.14 / numpy 2 workarounds (:mod:`mixedae.mm.compat`),
* registers ``MixedAEViT`` in mmseg's and mmdet's ``MODELS`` and ViTDet's ``SimpleFPN`` neck
  in mmdet's,
* registers ``MixedAELayerDecayOptimizerConstructor`` in mmengine's root
  ``OPTIM_WRAPPER_CONSTRUCTORS`` (visible from the mmseg and mmdet scopes),
* registers ``CPUDistributedDataParallel`` in mmengine's ``MODEL_WRAPPERS`` (gloo runs).

Configs load it with ``custom_imports = dict(imports=['mixedae.mm'], allow_failed_imports=False)``.
"""
from mixedae.mm import compat

compat.apply()

from mmdet.registry import MODELS as DET_MODELS  # noqa: E402
from mmseg.registry import MODELS as SEG_MODELS  # noqa: E402

from mixedae.mm.backbone import MixedAEViT  # noqa: E402
from mixedae.mm.distributed import CPUDistributedDataParallel  # noqa: E402
from mixedae.mm.optim import MixedAELayerDecayOptimizerConstructor  # noqa: E402
from mixedae.mm.simple_fpn import SimpleFPN  # noqa: E402

SEG_MODELS.register_module(name="MixedAEViT", module=MixedAEViT, force=True)
DET_MODELS.register_module(name="MixedAEViT", module=MixedAEViT, force=True)
DET_MODELS.register_module(name="SimpleFPN", module=SimpleFPN, force=True)

__all__ = ["MixedAEViT", "MixedAELayerDecayOptimizerConstructor", "SimpleFPN",
           "CPUDistributedDataParallel", "compat"]
