"""One GMAE training step (AdamW), for the tests that check a backbone trains through its adapter."""

import torch


def changed_by_one_step(model, images):
    """Names of ``model``'s parameters that one AdamW step on ``model(images).loss`` changed;
    the loss must be finite."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    output = model(images)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    optimizer.step()
    return {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
