"""Tests of the overlap-reduction adapters: exact start, training, save/load, freezing, resume and overlap metric."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch

from coderflow.tasks.adapter import (
    adapter_id,
    adapter_state_dict,
    add_adapters,
    freeze_except_adapters,
    histogram_overlap,
    load_adapters,
    overlap_stats,
    pair_cosines,
    train_adapters,
)
from coderflow.tasks.adapter.train import make_head

torch.set_num_threads(1)
SIZE = 64  # 2 x 2 patches of 32 px: fast


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model, _, _ = open_clip.create_model_and_transforms("ViT-S-32-alt", pretrained=None, force_image_size=SIZE)
    return model.eval()


def _images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _two_class_batches(n_batches: int = 2, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in range(n_batches):
        labels = torch.arange(batch) % 2
        images = torch.randn(batch, 3, SIZE, SIZE, generator=g) * 0.5 + (labels.float() * 2 - 1).view(-1, 1, 1, 1)
        out.append((images, labels))
    return out


def _perturb(adapters) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for a in adapters:
            for p in a.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_adapters_start_as_exact_identity():
    model, x = _model(), _images()
    with torch.no_grad():
        before_eval = model.encode_image(x)
        before_train = model.train().encode_image(x)  # attention takes another kernel in train mode: compare like
        adapters = add_adapters(model)
        after_train = model.encode_image(x)  # adapter dropout on: still exact, the branch is zero
        after_eval = model.eval().encode_image(x)
    assert len(adapters) == len(model.visual.transformer.resblocks) == 12
    assert torch.equal(before_eval, after_eval) and torch.equal(before_train, after_train)


def test_only_adapter_and_head_params_train():
    model = _model()
    text_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("visual.")}
    add_adapters(model)
    head = make_head(model, 3)
    trainable = freeze_except_adapters(model, head)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".adapter." in n and n.startswith("visual.transformer.resblocks.") for n in names)
    assert len(names) == 12 * 4  # down/up weight + bias per block; the scale is a buffer
    assert len(trainable) == len(names) + 2
    assert all(p.requires_grad for p in head.parameters())
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in text_before.items())  # text side untouched


def test_training_lowers_loss_and_moves_only_adapters():
    model = _model()
    add_adapters(model)
    base = {k: v.clone() for k, v in model.state_dict().items() if ".adapter." not in k}
    result = train_adapters(model, _two_class_batches(), num_classes=2, epochs=4, lr=1e-2)
    assert len(result.losses) == 8 and len(result.epoch_losses) == 4
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in base.items())
    assert any(a.up.weight.abs().sum() > 0 for a in (b.adapter for b in model.visual.transformer.resblocks))


def test_save_load_reproduces_adapted_embeddings(tmp_path):
    model, x = _model(), _images()
    _perturb(add_adapters(model))
    with torch.no_grad():
        expected = model.encode_image(x)
    torch.save(adapter_state_dict(model), tmp_path / "adapters.pt")

    fresh = _model()  # same base weights
    add_adapters(fresh)
    saved = torch.load(tmp_path / "adapters.pt")
    load_adapters(fresh, saved)
    with torch.no_grad():
        got = fresh.encode_image(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(got, _model().encode_image(x).detach(), atol=1e-4)  # adapters do change the output

    sd = adapter_state_dict(fresh)
    assert adapter_id(sd, "ViT-S-32-alt/none") == adapter_id(saved, "ViT-S-32-alt/none")
    assert adapter_id(sd, "ViT-S-32-alt/none") != adapter_id(sd, "ViT-S-32-alt/other")
    assert adapter_id(sd, "m").startswith("adapter-")


def test_resume_from_checkpoint_repeats_uninterrupted_run():
    batches = _two_class_batches(n_batches=1)
    model = _model()
    add_adapters(model)
    straight = train_adapters(model, batches, 2, epochs=2, lr=1e-2)

    ckpts = []
    first = _model()
    add_adapters(first)
    train_adapters(first, batches, 2, epochs=1, lr=1e-2, on_epoch_end=lambda e, c: ckpts.append(c))
    ckpt = ckpts[-1]
    resumed_model = _model()
    add_adapters(resumed_model)
    load_adapters(resumed_model, ckpt["adapters"])
    head = make_head(resumed_model, 2)
    head.load_state_dict(ckpt["head"])
    resumed = train_adapters(
        resumed_model,
        batches,
        2,
        epochs=2,
        lr=1e-2,
        head=head,
        start_epoch=ckpt["epoch"],
        optimizer_state=ckpt["optimizer"],
    )
    assert ckpt["epoch"] == 1
    np.testing.assert_allclose(resumed.losses, straight.losses[1:], rtol=1e-5)


def test_errors():
    resnet, _, _ = open_clip.create_model_and_transforms("RN50", pretrained=None, force_image_size=SIZE)
    with pytest.raises(TypeError, match="ViT"):
        add_adapters(resnet)
    model = _model()
    with pytest.raises(ValueError, match="add_adapters"):
        adapter_state_dict(model)
    add_adapters(model)
    with pytest.raises(ValueError, match="already has adapters"):
        add_adapters(model)
    small = _model()
    add_adapters(small, bottleneck=8)
    with pytest.raises(ValueError, match="bottleneck"):
        load_adapters(small, adapter_state_dict(model))
    with pytest.raises(ValueError, match="one-shot iterator"):
        train_adapters(model, iter(_two_class_batches()), 2, epochs=2)


# ---------- overlap ----------


def test_overlap_fully_separated_is_zero():
    feats = np.array([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [-3.0, 0.0]])  # same-class cos 1, different -1
    s = overlap_stats(feats, np.array([0, 0, 1, 1]), bins=20)
    assert (s.overlap, s.mean_same, s.mean_diff, s.n_same, s.n_diff) == (0.0, 1.0, -1.0, 2, 4)
    assert s.variance == pytest.approx(0.5)  # dim 0: values +-1, variance 1; dim 1: 0
    assert not s.sampled


def test_overlap_identical_is_one():
    feats = np.tile([[0.6, 0.8]], (6, 1))  # every pair has cosine 1, whatever the class
    s = overlap_stats(feats, np.array([0, 0, 1, 1, 2, 2]))
    assert s.overlap == pytest.approx(1.0) and s.variance == pytest.approx(0.0)


def test_overlap_half():
    # same: half in the bin of 0.9, half in the bin of 0.1; different: half at 0.1, half at -0.5 -> overlap 0.5
    assert histogram_overlap(np.array([0.9, 0.9, 0.1, 0.1]), np.array([0.1, 0.1, -0.5, -0.5]), bins=10) == 0.5
    assert histogram_overlap(np.array([1.0]), np.array([0.95]), bins=10) == 1.0  # cos 1 falls in the last bin
    # from features: class 0 = {e1, e1}, class 1 = {e2, e1 + e2 (normalised)}
    e = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    same, diff, _ = pair_cosines(e, np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(sorted(same), [2**-0.5, 1.0])
    np.testing.assert_allclose(sorted(diff), [0.0, 0.0, 2**-0.5, 2**-0.5])
    assert overlap_stats(e, np.array([0, 0, 1, 1]), bins=10).overlap == pytest.approx(0.5)


def test_overlap_subsampling_is_seeded_and_close():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=400)
    feats = rng.normal(size=(400, 8)) + np.eye(8)[labels] * 2
    exact = overlap_stats(feats, labels)
    a = overlap_stats(feats, labels, max_pairs=20_000, seed=1)
    b = overlap_stats(feats, labels, max_pairs=20_000, seed=1)
    assert a == b and a.sampled and not exact.sampled and a.n_same + a.n_diff == 20_000
    assert a.mean_same == pytest.approx(exact.mean_same, abs=0.02)
    assert a.overlap == pytest.approx(exact.overlap, abs=0.05)
    assert exact.mean_same > exact.mean_diff


@pytest.mark.parametrize("normalize", [False, True])
def test_head_reads_the_raw_projected_embedding_by_default(normalize: bool):
    """IMO adapter_utils.py:8-31: the training head is a Linear on the UNnormalised image embedding; the first step's
    loss is the cross-entropy of head(encode_image(x)) before any update (L2-normalised only when asked)."""
    model = _model()
    add_adapters(model)
    head = make_head(model, 2)
    images, labels = _two_class_batches(1)[0]
    with torch.no_grad():
        feats = model.encode_image(images)
        feats = torch.nn.functional.normalize(feats, dim=-1) if normalize else feats
        expected = torch.nn.functional.cross_entropy(head(feats), labels).item()
    kwargs = {"normalize": True} if normalize else {}  # the default is the reference's raw embedding
    result = train_adapters(model, [(images, labels)], 2, epochs=1, lr=1e-3, head=head, **kwargs)
    assert result.losses[0] == pytest.approx(expected, rel=1e-4)
