from __future__ import annotations

import torch
import torch.nn.functional as F

from projects.segmentation.pixel_mlp.model import PixelBatches, PixelMLPEnsemble, make_pixel_mlp


def test_reference_widths_and_init():
    small = make_pixel_mlp(in_features=8448, num_classes=15)
    assert [m.out_features for m in small if isinstance(m, torch.nn.Linear)] == [128, 32, 15]
    assert isinstance(small[1], torch.nn.ReLU) and isinstance(small[2], torch.nn.BatchNorm1d)
    assert sum(p.numel() for p in small.parameters()) == 1_086_415  # reference §B.5
    wide = make_pixel_mlp(in_features=8448, num_classes=34)
    assert [m.out_features for m in wide if isinstance(m, torch.nn.Linear)] == [256, 128, 34]
    assert float(small[0].bias.detach().abs().sum()) == 0.0


def test_joint_loss_gives_each_model_its_own_gradient():
    torch.manual_seed(0)
    ens = PixelMLPEnsemble(in_features=6, num_classes=3, num_models=2).train()
    feats, labels = torch.randn(2, 16, 6), torch.randint(0, 3, (2, 16))
    ens({"features": feats, "labels": labels})["loss_ce"].backward()
    joint = ens.models[1][0].weight.grad.clone()
    ens.zero_grad()
    F.cross_entropy(ens.models[1](feats[1]), labels[1]).backward()
    torch.testing.assert_close(ens.models[1][0].weight.grad, joint)


def test_majority_vote_and_uncertainty():
    ens = PixelMLPEnsemble(in_features=2, num_classes=3, num_models=3).eval()
    votes = torch.tensor([[0, 1], [0, 2], [1, 2]])  # model x pixel
    logits = F.one_hot(votes, 3).float() * 10
    ens.logits = lambda feats: logits  # type: ignore[method-assign]
    labels, unc = ens.predict(torch.zeros(2, 2), uncertainty="vote")
    assert labels.tolist() == [0, 2]
    torch.testing.assert_close(unc, torch.tensor([1 / 3, 1 / 3]))
    _, ent = ens.predict(torch.zeros(2, 2), uncertainty="entropy")
    assert (ent >= 0).all() and (ent < 0.01).all()  # confident models


def test_pixel_batches_cover_an_epoch_per_model():
    feats = torch.arange(40, dtype=torch.float16).view(20, 2)
    labels = torch.arange(20)
    it = iter(PixelBatches(feats, labels, num_models=3, batch_pixels=5, seed=0))
    seen = [set(), set(), set()]
    for _ in range(4):
        batch = next(it)
        assert batch["features"].shape == (3, 5, 2) and batch["features"].dtype == torch.float32
        torch.testing.assert_close(batch["features"][:, :, 0], batch["labels"].float() * 2)
        for m in range(3):
            seen[m] |= set(batch["labels"][m].tolist())
    assert all(s == set(range(20)) for s in seen)
