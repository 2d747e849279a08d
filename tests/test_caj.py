"""CAJ (Ye et al., ICCV 2021) against literal readings of its reference code
(mangye16/Cross-Modal-Re-ID-baseline, ICCV21_CAJ/: loss.py, ChannelAug.py, data_loader.py, train_ext.py, testa.py)."""
import math
import os

import pytest
import torch

import checkpoints
import data_loader
import eval_metrics
import loss
import model_mine
import settings
import test_mine
import train_mine
from test_agw import train  # the same short demo runs


def adp_by_loops(feats, labels, alpha, gamma, square):
    """TripletLoss_ADP read literally, one anchor at a time."""
    n = len(labels)
    d = [[math.sqrt(max(sum((a - b) ** 2 for a, b in zip(feats[i], feats[j])), 1e-12)) for j in range(n)]
         for i in range(n)]
    total, correct = 0.0, 0
    for i in range(n):
        pos = [j for j in range(n) if labels[j] == labels[i]]  # itself included
        neg = [j for j in range(n) if labels[j] != labels[i]]
        m = max(alpha * d[i][j] for j in pos)
        zp = sum(math.exp(alpha * d[i][j] - m) for j in pos) + 1e-6
        dp = sum(d[i][j] * math.exp(alpha * d[i][j] - m) / zp for j in pos)
        zn = sum(math.exp(-alpha * d[i][j]) for j in neg) + 1e-6  # the stabiliser of the negatives is 0
        dn = sum(d[i][j] * math.exp(-alpha * d[i][j]) / zn for j in neg)
        delta = dp - dn
        if square:
            x = min(gamma * delta ** 2, 88.0)
            total += math.log1p(math.exp(x if delta > 0 else -x))
        else:
            total += math.log1p(math.exp(gamma * delta))
        correct += dn >= dp
    return total / n, correct


@pytest.mark.parametrize("alpha,gamma,square", [(1, 1, 1), (1, 1, 0), (2, 3, 1)])
def test_adp_matches_the_reference_on_random_inputs(alpha, gamma, square):
    torch.manual_seed(alpha + gamma + square)
    feats, labels = torch.randn(12, 5), torch.arange(4).repeat_interleave(3)
    got, correct = loss.TripletLoss_ADP(alpha, gamma, square)(feats, labels)
    want, want_correct = adp_by_loops(feats.tolist(), labels.tolist(), alpha, gamma, square)
    assert got.item() == pytest.approx(want, rel=1e-4) and int(correct) == want_correct


def test_adp_by_hand_and_its_clamp():
    # two identities on a line: 0, 1 | 10, 12. Anchor 0: D+ = softmax-weighted (1e-6, 1) ~ 0.731, D- ~ 10
    feats, labels = torch.tensor([[0.0], [1.0], [10.0], [12.0]]), torch.tensor([0, 0, 1, 1])
    got, _ = loss.TripletLoss_ADP(1, 1, 1)(feats, labels)
    assert got.item() == pytest.approx(adp_by_loops(feats.tolist(), labels.tolist(), 1, 1, 1)[0], rel=1e-5)
    # an anchor past gamma * delta^2 = 88 is clamped, as by the reference's clamp_max: the loss stays finite
    feats = torch.tensor([[0.0], [20.0], [1.0], [30.0]], requires_grad=True)
    loss.TripletLoss_ADP(1, 1, 1)(feats, torch.tensor([0, 0, 1, 1]))[0].backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()


def counts(outcomes, n):
    return {k: v / n for k, v in outcomes.items()}


def classify(x, out):
    """Which branch each image took: 'R', 'G', 'B' (one channel replicated), 'gray', 'same'."""
    gray = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    kinds = []
    for i in range(len(x)):
        if torch.equal(out[i], x[i]):
            kinds.append("same")
        elif torch.allclose(out[i], gray[i].expand(3, -1, -1)):
            kinds.append("gray")
        else:
            kinds.append("RGB"[[torch.equal(out[i], x[i, c].expand(3, -1, -1)) for c in range(3)].index(True)])
    return {k: kinds.count(k) for k in ("R", "G", "B", "gray", "same")}


@pytest.mark.slow
def test_channel_exchange_and_adaptive_gray_have_the_reference_probabilities():
    torch.manual_seed(0)
    n = 8000
    x = torch.randn(n, 3, 2, 2)
    # ChannelExchange(gray=2): randint(0, 2) -> R, G, B a third each, never gray, never unchanged
    got = counts(classify(x, data_loader.channel_exchange(x)), n)
    assert all(abs(got[c] - 1 / 3) < 0.02 for c in "RGB") and got["gray"] == got["same"] == 0
    # ChannelAdapGray(0.5): randint(0, 3) -> R, G, B a quarter each; 3 -> gray if uniform <= 0.5, else unchanged
    got = counts(classify(x, data_loader.channel_adap_gray(x, 0.5)), n)
    assert all(abs(got[c] - 1 / 4) < 0.02 for c in "RGB") and abs(got["gray"] - 1 / 8) < 0.015 and \
        abs(got["same"] - 1 / 8) < 0.015
    got = counts(classify(x, data_loader.channel_adap_gray(x, 1.0)), n)
    assert got["same"] == 0 and abs(got["gray"] - 1 / 4) < 0.02
    # a thermal image (three equal channels) is left alone by every channel pick
    t = torch.randn(n, 1, 2, 2).expand(-1, 3, -1, -1)
    assert abs(sum(torch.equal(a, b) for a, b in zip(data_loader.channel_adap_gray(t, 0.5), t)) / n - 7 / 8) < 0.015


@pytest.mark.slow
def test_channel_random_erasing_is_the_references():
    torch.manual_seed(1)
    # the rate over 4000 images at the demo's size: whether an image is erased does not depend on its
    # size (a box fits within 100 attempts at either), and 4000 at the reference's would take seconds
    x = torch.randn(4000, 3, 64, 32)
    erased = (data_loader.channel_random_erasing(x, 0.5) != x).flatten(1).any(1)
    assert abs(erased.float().mean().item() - 0.5) < 0.03  # uniform(0, 1) > p: unchanged
    # the boxes of 200 images at the reference's size, every one erased (p = 1)
    n, h, w = 200, 288, 144
    x = torch.randn(n, 3, h, w)
    out = data_loader.channel_random_erasing(x, 1.0)
    changed = (out != x).any(1)
    assert changed.flatten(1).any(1).all()

    def span(mask):  # [n, L] -> the first and last True of each row, and an [n, L] mask between them
        first, last = mask.int().argmax(1), mask.shape[1] - 1 - mask.flip(1).int().argmax(1)
        at = torch.arange(mask.shape[1])
        return first, last, (at >= first[:, None]) & (at <= last[:, None])
    top, bottom, rows = span(changed.any(2))
    left, right, cols = span(changed.any(1))
    box = rows[:, :, None] & cols[:, None, :]  # each image's bounding box of the changed pixels
    fill = torch.tensor([0.4914, 0.4822, 0.4465])
    assert (out == fill[:, None, None]).all(1)[box].all()  # per channel, in normalised values
    bh, bw = (bottom - top + 1).double(), (right - left + 1).double()
    assert ((0.02 * h * w * 0.9 <= bh * bw) & (bh * bw <= 0.4 * h * w * 1.1) & (bh < h) & (bw < w)).all()
    assert ((0.3 * 0.8 <= bh / bw) & (bh / bw <= (1 / 0.3) * 1.2)).all()
    assert torch.equal(data_loader.channel_random_erasing(x[:50], 0.0), x[:50])


def test_the_joint_batch_layout_and_labels():
    torch.manual_seed(2)
    xv = torch.randint(0, 256, (6, 32, 16, 3), dtype=torch.uint8)
    xt = torch.randint(0, 256, (6, 32, 16, 3), dtype=torch.uint8)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1])
    v, t, joint = data_loader.BatchAugment(caj=True)(xv, xt, labels)
    assert v.shape == (12, 3, 32, 16) and t.shape == (6, 3, 32, 16)
    # [visible P*K; the same images channel-exchanged; thermal P*K], labels cat(label1, label1, label2)
    assert torch.equal(joint, torch.cat((labels[:6], labels[:6], labels[6:])))
    assert all(torch.equal(v[i, 0], v[i, 1]) and torch.equal(v[i, 1], v[i, 2]) for i in range(6, 12))


def test_flip_averaging_is_the_normalised_mean_of_both_views():
    torch.manual_seed(3)
    model = model_mine.embed_net(4, arch="resnet18", pcb="off").eval()
    images = torch.randint(0, 256, (3, 32, 16, 3), dtype=torch.uint8).numpy()
    got = eval_metrics.extract_features(model, images, "visible", torch.device("cpu"), all_features=True, flip=True)
    x = data_loader.normalize(torch.from_numpy(images))
    a, b = model.features(x, "visible"), model.features(x.flip(3), "visible")
    for name in ("bn", "pool"):
        assert torch.allclose(got[name], torch.nn.functional.normalize(a[name] + b[name], dim=1), atol=1e-6)


def test_the_published_setting_is_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = train_mine.get_args_parser().parse_args(["--method", "caj", "--dataset", "regdb", "--data_path", "R"])
    train_mine.init_distributed(args)
    train_mine.prepare_run(args)
    assert (args.caj_aug, args.epochs, args.non_local, args.share_net, args.pcb, args.batch_size, args.num_pos,
            args.eval_start, args.eval_every, args.lr) == ("on", 100, "on", 1, "off", 8, 4, 2, 2, 0.1)
    crit = settings.METHODS["caj"].loss(args)
    assert isinstance(crit.tri, loss.TripletLoss_ADP) and (crit.tri.alpha, crit.tri.gamma, crit.tri.square) == \
        (1, 1, 1)
    bad = train_mine.get_args_parser().parse_args(["--method", "caj", "--dataset", "regdb", "--data_path", "R",
                                                   "--erasing_p", "0.5"])
    train_mine.init_distributed(bad)
    with pytest.raises(ValueError, match=r"^--erasing_p: --caj_aug on is CAJ's augmentation"):
        train_mine.prepare_run(bad)


@pytest.mark.slow
def test_a_short_demo_run_trains_resumes_exactly_and_is_evaluated_with_flips(tiny_regdb, tmp_path):
    whole = torch.load(train(tiny_regdb, str(tmp_path / "whole"), "--method", "caj"), weights_only=False)
    first = train(tiny_regdb, str(tmp_path / "split"), "--method", "caj", "--epochs", "1")
    train_mine.main(train_mine.get_args_parser().parse_args(["--resume", first, "--epochs", "2", "--gpu", "cpu",
                                                             "--log_path", ""]))
    resumed = torch.load(first, weights_only=False)
    assert resumed["args"]["caj_aug"] == "on" and resumed["epoch"] == 1
    assert all(torch.equal(resumed["model"][k], v) for k, v in whole["model"].items())
    flags = ["--dataset", "demo", "--data_path", tiny_regdb, "--resume", first, "--trials", "1", "--gpu", "cpu",
             "--workers", "0", "--log_path", ""]
    flipped = test_mine.main(test_mine.get_args_parser().parse_args(flags))["visible->thermal"]
    plain = test_mine.main(test_mine.get_args_parser().parse_args(flags + ["--flip_test", "off"]))["visible->thermal"]
    # training selects without flips, as train_ext.py; the test flips by default, as testa.py
    assert plain["mean"]["rank1"] == pytest.approx(resumed["metrics"]["rank1"])
    assert os.path.exists(first) and set(flipped["mean"]) == set(plain["mean"])
    unset = test_mine.get_args_parser().parse_args(["--method", "hctri"])
    assert checkpoints.flip_test(unset, resumed) and unset.flip_test == "on"  # the checkpoint's method decides
