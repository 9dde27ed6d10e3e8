"""skipspec calls no deprecated transformers API, on whichever transformers of the supported range is
installed (scripts/test_compat.sh runs this file on the oldest one too): a deprecation warning
today is an error in a later release."""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_models import FAMILIES, tiny_model

from skipspec import SwiftConfig, SwiftDecoder


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decoding_raises_no_deprecation_warning(family):
    model = tiny_model(family)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[])
        for method in ("ar", "swift"):
            assert len(dec.generate(torch.tensor([[3, 4, 5, 6]]), 6, method=method).tokens) == 6
