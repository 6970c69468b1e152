"""Online linear probes: what they record, and that they never touch the encoder."""

from __future__ import annotations

import pytest
import torch

from splathead.factories import gmae_vit_tiny
from splathead.probes import BlockFeatures, OnlineProbes, probe_loss


def _model_and_images(seed: int = 0):
    torch.manual_seed(seed)
    model = gmae_vit_tiny(img_size=32, num_queries=16)
    images = torch.randn(4, 3, 32, 32)
    return model, images


def _probed(model):
    vit = model.encoder.vit
    blocks = BlockFeatures(vit.blocks, num_prefix_tokens=vit.num_prefix_tokens)
    probes = OnlineProbes(embed_dim=vit.embed_dim, num_classes=3, num_blocks=len(blocks))
    return blocks, probes


def test_features_are_the_mean_patch_token_of_each_block_as_timm_computes_it():
    model, images = _model_and_images()
    blocks, _ = _probed(model)
    model.encode(images)  # every patch kept
    intermediates = model.encoder.vit.forward_intermediates(
        images, norm=False, output_fmt="NLC", intermediates_only=True
    )  # patch tokens only: timm strips the cls token
    expected = torch.stack([tokens.mean(dim=1) for tokens in intermediates])
    torch.testing.assert_close(blocks.features(), expected)


def test_features_are_detached():
    model, images = _model_and_images()
    blocks, _ = _probed(model)
    model(images)
    assert not blocks.features().requires_grad


def test_features_follow_the_latest_forward_pass():
    model, images = _model_and_images()
    blocks, _ = _probed(model)
    model.encode(images)
    first = blocks.features()
    model.encode(images[:2])
    assert blocks.features().shape == (3, 2, 96)
    torch.testing.assert_close(blocks.features(), first[:, :2])


def test_removed_hooks_record_nothing():
    model, images = _model_and_images()
    blocks, _ = _probed(model)
    blocks.remove()
    model.encode(images)
    with pytest.raises(RuntimeError, match="no forward pass"):
        blocks.features()


def test_probe_training_leaves_encoder_weights_and_gradients_unchanged():
    model, images = _model_and_images()
    blocks, probes = _probed(model)
    labels = torch.tensor([0, 1, 2, 0])
    noise = torch.rand(4, model.num_patches, generator=torch.Generator().manual_seed(1))

    model(images, noise=noise).loss.backward()
    reference_grads = [p.grad.clone() for p in model.encoder.parameters() if p.grad is not None]
    model.zero_grad()

    weights_before = [p.detach().clone() for p in model.encoder.parameters()]
    optimizer = torch.optim.AdamW(probes.parameters(), lr=0.1)
    output = model(images, noise=noise)
    (output.loss + probe_loss(probes(blocks.features()), labels)).backward()
    optimizer.step()

    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert len(grads) == len(reference_grads)
    for grad, reference in zip(grads, reference_grads):
        torch.testing.assert_close(grad, reference, rtol=0, atol=0)
    for parameter, before in zip(model.encoder.parameters(), weights_before):
        assert torch.equal(parameter, before)
    assert all(p.grad is not None for p in probes.parameters())


def test_probes_learn_a_linearly_separable_labelling():
    torch.manual_seed(0)
    features = torch.randn(2, 64, 8)
    labels = (features[0, :, 0] > 0).long()
    probes = OnlineProbes(embed_dim=8, num_classes=2, num_blocks=2)
    optimizer = torch.optim.AdamW(probes.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        probe_loss(probes(features), labels).backward()
        optimizer.step()
    probes.eval()
    accuracy = (probes(features).argmax(-1) == labels).float().mean(dim=1)
    assert accuracy[0] == 1.0


def test_probes_need_one_feature_row_per_block():
    probes = OnlineProbes(embed_dim=8, num_classes=2, num_blocks=3)
    with pytest.raises(ValueError, match="features has 2 blocks, the probes expect 3"):
        probes(torch.randn(2, 4, 8))
