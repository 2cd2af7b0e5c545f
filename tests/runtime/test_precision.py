"""The autocast precision of every engine (mixedae.runtime.precision)."""
import pytest
import torch

from mixedae.runtime.errors import ConfigError
from mixedae.runtime.precision import amp_dtype


def test_amp_dtype_names_the_flag_value():
    assert amp_dtype("bf16", torch.device("cpu")) is None       # autocast only on CUDA
    with pytest.raises(ConfigError, match="amp='fp8' must be one of bf16, fp16, none"):
        amp_dtype("fp8", torch.device("cpu"))
