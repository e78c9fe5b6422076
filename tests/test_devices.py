from __future__ import annotations

import pytest
import torch

from tdkstain.plumbing.devices import resolve_device
from tdkstain.plumbing.errors import TdkstainError


def test_auto_picks_cuda_only_when_present():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_typo_is_an_error_naming_the_value():
    with pytest.raises(TdkstainError, match="'cpuu'"):
        resolve_device("cpuu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_an_error_not_a_silent_cpu_run():
    with pytest.raises(TdkstainError, match="no CUDA device"):
        resolve_device("cuda")
