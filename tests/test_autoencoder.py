"""The autoencoder's decoder sizes follow the input size (the peers break off 256x256)."""

from __future__ import annotations

import pytest
import torch

from efficientad_ext import Autoencoder, build_pdn
from efficientad_ext.models.autoencoder import decoder_sizes


def test_paper_decoder_sizes_at_256():
    assert decoder_sizes(256) == [3, 8, 15, 32, 63, 127]


@pytest.mark.parametrize("size", [(256, 256), (320, 320), (256, 384)])
def test_output_matches_pdn_feature_size(size):
    pdn = build_pdn("small", 384, padded=False)
    feat = pdn.output_size(*size)
    ae = Autoencoder().eval()
    with torch.no_grad():
        out = ae(torch.rand(1, 3, *size), feat)
    assert out.shape == (1, 384, *feat)


def test_too_small_image_is_refused():
    with pytest.raises(ValueError, match="at least 256x256, got 200x256"):
        Autoencoder()(torch.rand(1, 3, 200, 256), (49, 57))
