import torch
import pytest

import loss
import settings
import utils


def direct_hetero_center(feats, labels, modality, margin=0.3):
    """The paper's loss (Liu et al., TMM 2021, Sec. III) read literally:
    a center per (identity, modality), hardest positive / negative
    center per anchor, hinge, mean over anchors; loops everywhere."""
    keys = sorted({(int(l), int(m)) for l, m in zip(labels, modality)})
    centers = []
    for l, m in keys:
        members = [feats[i] for i in range(len(labels)) if int(labels[i]) == l and int(modality[i]) == m]
        centers.append(torch.stack(members).mean(0))
    losses, correct = [], 0
    for i, (li, _) in enumerate(keys):
        d = [torch.sqrt(torch.clamp(((centers[i] - c) ** 2).sum(), min=1e-12)) for c in centers]
        d_ap = max(d[j] for j, (lj, _) in enumerate(keys) if lj == li)
        d_an = min(d[j] for j, (lj, _) in enumerate(keys) if lj != li)
        losses.append(torch.clamp(d_ap - d_an + margin, min=0))
        correct += int(d_an >= d_ap)
    return torch.stack(losses).mean(), correct


def batch(p=4, k=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(p).repeat_interleave(k).repeat(2)
    modality = utils.modality_column(p * k, p * k)
    feats = torch.randn(2 * p * k, d, generator=g, dtype=torch.float64).float()
    return feats, labels, modality


@pytest.mark.parametrize("seed", range(5))
def test_center_triplet_equals_direct_reading(seed):
    feats, labels, modality = batch(seed=seed)
    f1 = feats.clone().requires_grad_()
    f2 = feats.clone().requires_grad_()
    got, n = loss.CenterTripletLoss(margin=0.3)(f1, labels)  # default: halves are the modalities
    want, n_want = direct_hetero_center(f2, labels, modality)
    assert torch.allclose(got, want, atol=1e-5)
    assert int(n) == n_want
    got.backward()
    want.backward()
    assert torch.allclose(f1.grad, f2.grad, atol=1e-5)


def test_center_triplet_counts_correct_anchors():
    # two well separated identities: every center's negative is farther than its positive
    feats = torch.tensor([[0.0, 0], [0, 0], [10, 0], [10, 0], [0.1, 0], [0.1, 0], [10.1, 0], [10.1, 0]])
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    value, n = loss.CenterTripletLoss(margin=0.3)(feats, labels)
    assert int(n) == 4
    assert value.item() == pytest.approx(0.0)


def test_center_triplet_ignores_batch_order():
    feats, labels, modality = batch(p=5, k=2, seed=3)
    crit = loss.CenterTripletLoss(margin=0.3)
    ref, n_ref = crit(feats, labels, modality)
    for s in range(3):
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(s))
        got, n = crit(feats[perm], labels[perm], modality[perm])
        assert torch.allclose(got, ref, atol=1e-6) and int(n) == int(n_ref)


def test_center_triplet_on_stacked_strips_is_per_strip():
    feats, labels, _ = batch(seed=1)
    stacked = torch.stack([feats, feats * 2, feats + 1])
    got, _ = loss.CenterTripletLoss(margin=0.3)(stacked, labels)
    for i in range(3):
        assert torch.allclose(got[i], loss.CenterTripletLoss(margin=0.3)(stacked[i], labels)[0], atol=1e-6)


def test_batch_hard_triplet_direct():
    feats, labels, _ = batch(seed=2)
    got, n = loss.TripletLoss(margin=0.3)(feats, labels)
    d = torch.cdist(feats.double(), feats.double())
    same = labels[:, None] == labels[None]
    ap = torch.where(same, d, torch.full_like(d, -1e9)).max(1).values
    an = torch.where(~same, d, torch.full_like(d, 1e9)).min(1).values
    assert got.item() == pytest.approx(torch.relu(ap - an + 0.3).mean().item(), abs=1e-4)
    assert int(n) == int((an >= ap).sum())


def test_weighted_regularized_triplet_direct():
    feats, labels, _ = batch(seed=4)
    got, _ = loss.TripletLoss_WRT()(feats, labels)
    d = torch.cdist(feats.double(), feats.double())
    pos = (labels[:, None] == labels[None]).double()
    neg = 1 - pos

    def w(x, mask):
        e = torch.exp(x - (x * mask).max(1, keepdim=True).values) * mask
        return e / (e.sum(1, keepdim=True) + 1e-6)

    fp = (d * pos * w(d * pos, pos)).sum(1)
    cn = (d * neg * w(-d * neg, neg)).sum(1)
    want = torch.nn.functional.soft_margin_loss(cn - fp, torch.ones_like(fp))
    assert got.item() == pytest.approx(want.item(), abs=1e-4)


def test_pcb_total_loss_composition():
    torch.manual_seed(0)
    p, k, s, d, c = 3, 2, 6, 8, 5
    labels = torch.arange(p).repeat_interleave(k).repeat(2)
    feats = [torch.randn(2 * p * k, d) for _ in range(s)]
    logits = [torch.randn(2 * p * k, c) for _ in range(s)]
    feat_all = torch.cat(feats, 1)
    crit = loss.ReIDLoss(loss.CenterTripletLoss(margin=0.3), w_center=2.0, label_smooth="on")
    total, parts = crit({"strips": torch.stack(feats), "strip_logits": torch.stack(logits), "feat": feat_all}, labels)
    loss_id, loss_tri, acc = parts["id"], parts["tri"], parts["acc"]
    ce = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    tri = loss.CenterTripletLoss(margin=0.3)
    want_id = sum(ce(z, labels) for z in logits)
    want_tri = tri(feat_all, labels)[0] + 2.0 * sum(tri(f, labels)[0] for f in feats)
    assert loss_id.item() == pytest.approx(want_id.item(), rel=1e-5)
    assert loss_tri.item() == pytest.approx(want_tri.item(), rel=1e-5)
    assert total.item() == pytest.approx((want_id + want_tri).item(), rel=1e-5)
    assert acc.item() == pytest.approx(int(tri(feat_all, labels)[1]) / (2 * p))


def test_global_total_loss_composition():
    torch.manual_seed(1)
    labels = torch.arange(3).repeat_interleave(2).repeat(2)
    x_pool, logits = torch.randn(12, 16), torch.randn(12, 4)
    crit = loss.ReIDLoss(loss.CenterTripletLoss(margin=0.3), w_center=0.5, label_smooth="off")  # the former defaults
    total, _ = crit({"feat": x_pool, "logits": logits}, labels)
    want = torch.nn.functional.cross_entropy(logits, labels) + 0.5 * loss.CenterTripletLoss(margin=0.3)(x_pool, labels)[0]
    assert total.item() == pytest.approx(want.item(), rel=1e-5)


def test_label_smoothing_is_the_authors_formula():
    torch.manual_seed(2)
    logits, labels = torch.randn(6, 5), torch.randint(0, 5, (6,))
    got = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels)
    target = torch.full((6, 5), 0.1 / 5).scatter_(1, labels[:, None], 0.9 + 0.1 / 5)
    want = (-target * logits.log_softmax(1)).sum(1).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="--method must be one of hctri, .*, got 'triplet\\+\\+'"):
        settings.get_method("triplet++")
