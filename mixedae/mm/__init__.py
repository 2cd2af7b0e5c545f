"""OpenMMLab glue (the only place in ``mixedae`` that imports mmengine/mmcv/mmseg/mmdet).

Importing it
* applies the torch 2.14 / numpy 2 workarounds (:mod:`mixedae.mm.compat`),
* registers ``MixedAEViT`` in mmseg's and mmdet's ``MODELS``,
* registers ``MixedAELayerDecayOptimizerConstructor`` in mmengine's root
  ``OPTIM_WRAPPER_CONSTRUCTORS`` (visible from the mmseg and mmdet scopes).

Configs load it with ``custom_imports = dict(imports=['mixedae.mm'], allow_failed_imports=False)``.
"""
from mixedae.mm import compat

compat.apply()

from mmdet.registry import MODELS as DET_MODELS  # noqa: E402
from mmseg.registry import MODELS as SEG_MODELS  # noqa: E402

from mixedae.mm.backbone import MixedAEViT  # noqa: E402
from mixedae.mm.optim import MixedAELayerDecayOptimizerConstructor  # noqa: E402

SEG_MODELS.register_module(name="MixedAEViT", module=MixedAEViT, force=True)
DET_MODELS.register_module(name="MixedAEViT", module=MixedAEViT, force=True)

__all__ = ["MixedAEViT", "MixedAELayerDecayOptimizerConstructor", "compat"]
