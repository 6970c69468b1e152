"""DecoderSettings: the decoder's settings in one frozen, JSON-able place that the factories,
GMAE.from_encoder and GMAEDecoder pass on; gmae_encoder builds a factory's encoder alone."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splathead.decoder import DecoderSettings, GMAEDecoder
from splathead.encoder import MaskedEncoder
from splathead.factories import gmae_encoder, gmae_vit_tiny


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 1024), num_queries=st.integers(1, 512),
       max_scale=st.floats(1e-3, 10.0), rotation=st.sampled_from(["shoemake", "quaternion"]),
       background=st.one_of(st.floats(0.0, 1.0),
                            st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0),
                                      st.floats(0.0, 1.0))),
       backend=st.sampled_from(["auto", "torch", "gsplat"]))
def test_settings_round_trip_through_json(dim, num_queries, max_scale, rotation, background,
                                          backend):
    original = DecoderSettings(dim=dim, num_queries=num_queries, max_scale=max_scale,
                               rotation=rotation, background=background, backend=backend)
    text = json.dumps(dataclasses.asdict(original))
    assert DecoderSettings.from_dict(json.loads(text)) == original


def test_a_setting_of_the_wrong_type_or_name_is_refused_by_name():
    with pytest.raises(TypeError, match="DecoderSettings.num_queries must be"):
        DecoderSettings(num_queries="many")
    with pytest.raises(TypeError, match="DecoderSettings.backend must be"):
        DecoderSettings(backend="cuda")
    with pytest.raises(TypeError, match=r"\['colour'\] are not decoder settings"):
        DecoderSettings().replace(colour=0.5)


def test_a_background_tensor_or_whole_numbers_become_plain_floats():
    settings = DecoderSettings(background=torch.tensor([0.0, 0.5, 1.0]), max_scale=1)
    assert settings.background == (0.0, 0.5, 1.0) and isinstance(settings.max_scale, float)
    assert DecoderSettings(background=0).background == 0.0


def test_the_decoder_is_built_from_its_settings_and_keeps_them():
    chosen = DecoderSettings(dim=32, depth=1, num_heads=2, num_queries=8, gaussians_per_token=2,
                             max_scale=0.25, rotation="quaternion", background=0.0,
                             backend="torch")
    decoder = GMAEDecoder(encoder_dim=48, img_size=32, patch_size=8, settings=chosen)
    assert decoder.settings == chosen
    assert (decoder.query_decoder.dim, len(decoder.query_decoder.blocks),
            decoder.query_decoder.num_queries) == (32, 1, 8)
    assert (decoder.head.gaussians_per_token, decoder.head.max_scale,
            decoder.head.rotation) == (2, 0.25, "quaternion")
    assert decoder.num_gaussians == chosen.num_gaussians == 16
    assert torch.equal(decoder.renderer.background, torch.tensor(0.0))


def test_keyword_overrides_change_the_given_settings():
    decoder = GMAEDecoder(encoder_dim=48, img_size=32, patch_size=8,
                          settings=DecoderSettings(dim=32, depth=1, num_heads=2), num_queries=4,
                          backend="torch")
    assert decoder.settings == DecoderSettings(dim=32, depth=1, num_heads=2, num_queries=4,
                                               backend="torch")


def test_factories_pass_their_decoder_settings_on():
    model = gmae_vit_tiny(img_size=32, num_queries=16, decoder_depth=1, backend="torch")
    assert model.decoder.settings == DecoderSettings(dim=64, depth=1, num_heads=4,
                                                     num_queries=16, backend="torch")
    assert len(model.encoder.blocks) == 3  # depth without the prefix is the encoder's


def test_gmae_encoder_is_the_factorys_encoder_without_a_decoder():
    torch.manual_seed(0)
    encoder = gmae_encoder("gmae_vit_tiny", img_size=32)
    torch.manual_seed(0)
    model = gmae_vit_tiny(img_size=32, backend="torch")
    assert isinstance(encoder, MaskedEncoder) and not hasattr(encoder, "decoder")
    expected = model.encoder.state_dict()
    assert encoder.state_dict().keys() == expected.keys()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in encoder.state_dict().items())
    with pytest.raises(ValueError, match="name 'gmae_vit_small' is not one of"):
        gmae_encoder("gmae_vit_small")
