"""DEEN (Zhang and Wang, CVPR 2023) against literal readings of its reference code (ZYK100/LLCM, DEEN/model.py,
DEEN/loss.py, DEEN/train.py, DEEN/test.py), written out here operation by operation."""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import checkpoints
import deen
import model_mine
import settings
import test_mine
import train_mine
import utils


# ----------------------------------------------------------------------------- literal readings

def ref_cnl(m, x_h, x_l):
    """DEEN/model.py CNL.forward: views of the contiguous conv outputs, energy / its last size."""
    b, c = x_h.size(0), m.low
    g_x = m.g(x_l).contiguous().view(b, c, -1)
    theta_x = m.theta(x_h).contiguous().view(b, c, -1)
    phi_x = m.phi(x_l).contiguous().view(b, c, -1).permute(0, 2, 1)
    energy = torch.matmul(theta_x, phi_x)
    y = torch.matmul(energy / energy.size(-1), g_x).view(b, c, *x_l.size()[2:])
    return m.W(y) + x_h


def ref_pnl(m, x_h, x_l):
    """DEEN/model.py PNL.forward: the low/2-channel outputs viewed with low_dim rows."""
    b, c = x_h.size(0), m.low
    g_x = m.g(x_l).contiguous().view(b, c, -1).permute(0, 2, 1)
    theta_x = m.theta(x_h).contiguous().view(b, c, -1).permute(0, 2, 1)
    phi_x = m.phi(x_l).contiguous().view(b, c, -1)
    energy = torch.matmul(theta_x, phi_x)
    y = torch.matmul(energy / energy.size(-1), g_x).permute(0, 2, 1).contiguous()
    return m.W(y.view(b, c // 2, *x_h.size()[2:])) + x_h


def ref_dee(m, x):
    x1 = m.FC1(F.relu((m.FC11(x) + m.FC12(x) + m.FC13(x)) / 3))
    x2 = m.FC2(F.relu((m.FC21(x) + m.FC22(x) + m.FC23(x)) / 3))
    return m.dropout(torch.cat((x, x1, x2), 0))


def ref_forward(net, x1, x2, modal, training):
    """DEEN/model.py embed_net.forward on a network holding the reference's module tree (ReferenceNet); modal
    as there: 0 both, 1 visible, 2 thermal."""
    stem = lambda r, x: r.maxpool(r.relu(r.bn1(r.conv1(x))))  # noqa: E731
    if modal == 0:
        x = torch.cat((stem(net.visible_module.visible, x1), stem(net.thermal_module.thermal, x2)), 0)
    else:
        x = stem(net.visible_module.visible, x1) if modal == 1 else stem(net.thermal_module.thermal, x2)
    base = net.base_resnet.base
    mfa = lambda m, x, x0: ref_pnl(m.PNL, ref_cnl(m.CNL, x, x0), x0)  # noqa: E731
    x_ = x
    x_ = mfa(net.MFA1, base.layer1(x_), x_)
    x_ = mfa(net.MFA2, base.layer2(x_), x_)
    if net.regdb:
        x = base.layer3(ref_dee(net.DEE, x_))
    else:
        x_ = mfa(net.MFA3, base.layer3(x_), x_)
        x = base.layer4(ref_dee(net.DEE, x_))
    xp = F.adaptive_avg_pool2d(x, 1)
    x_pool = xp.view(xp.size(0), xp.size(1))
    feat = net.bottleneck(x_pool)
    if training:
        xps = xp.view(xp.size(0), xp.size(1), xp.size(2)).permute(0, 2, 1)
        _, xp2, xp3 = torch.chunk(xps, 3, 0)
        xpss = torch.cat((xp2, xp3), 1)
        ort = torch.triu(torch.bmm(xpss, xpss.permute(0, 2, 1)), diagonal=1).sum() / xp.size(0)
        return x_pool, net.classifier(feat), ort
    norm = lambda v: v.div(v.pow(2).sum(1, keepdim=True).pow(0.5))  # noqa: E731
    return norm(x_pool), norm(feat)


class ReferenceNet(nn.Module):
    """The reference's module tree: three whole ResNet-50s (no fc) from the same weights, DEE, MFA1..3
    (RegDB: MFA1, MFA2), bottleneck, classifier. Its state dict is the one DEEN/train.py saves."""

    def __init__(self, class_num, regdb):
        super().__init__()
        torch.manual_seed(1)
        weights = torchvision.models.resnet50().state_dict()
        self.regdb = regdb
        for owner, name in (("thermal_module", "thermal"), ("visible_module", "visible"), ("base_resnet", "base")):
            r = torchvision.models.resnet50()
            r.load_state_dict(weights)
            r.layer4[0].conv2.stride = r.layer4[0].downsample[0].stride = (1, 1)
            del r.fc
            setattr(self, owner, nn.Module())
            setattr(getattr(self, owner), name, r)
        c = 512 if regdb else 1024
        self.DEE = deen.DEE_module(c)
        self.MFA1, self.MFA2 = deen.MFA_block(256, 64, 1), deen.MFA_block(512, 256, 2)
        if not regdb:
            self.MFA3 = deen.MFA_block(1024, 512, 2)
        self.bottleneck = nn.BatchNorm1d(2 * c)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(2 * c, class_num, bias=False)

    def trained(self):
        """Non-trivial values where training changes them: BN statistics, the zero-initialised W batch norms."""
        used = [self.visible_module.visible.bn1, self.thermal_module.thermal.bn1, self.bottleneck] + \
            [m for part in (self.base_resnet, self.DEE, self.MFA1, self.MFA2, getattr(self, "MFA3", self.MFA2))
             for m in part.modules() if isinstance(m, nn.BatchNorm2d)]
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for bn in used:
                n = bn.num_features
                bn.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                bn.running_var.copy_(0.5 + torch.rand(n, generator=g))
                bn.weight.copy_(0.5 + 0.5 * torch.rand(n, generator=g))
                bn.bias.copy_(0.1 * torch.randn(n, generator=g))
                bn.num_batches_tracked.fill_(7)
            for stem in (self.visible_module.visible.conv1, self.thermal_module.thermal.conv1):
                stem.weight.mul_(1 + 0.1 * torch.randn(stem.weight.shape, generator=g))
        return self


# ----------------------------------------------------------------------------- quirks Q1-Q6

def test_q1_pnl_pairs_each_pixel_with_the_one_half_the_rows_below():
    torch.manual_seed(0)
    m = deen.PNL(6, 4)
    nn.init.normal_(m.W[1].weight)
    x_h, x_l = torch.randn(2, 6, 4, 3), torch.randn(2, 4, 4, 3)
    assert torch.allclose(m(x_h, x_l), ref_pnl(m, x_h, x_l), atol=1e-5)
    # the formula: E_ij = sum_k th_k(i) ph_k(j) + th_k(i+n) ph_k(j+n), divided by n = N/2; top-half outputs
    # aggregate top-half values, bottom-half outputs bottom-half ones
    th, ph, g = (f.flatten(2) for f in (m.theta(x_h), m.phi(x_l), m.g(x_l)))
    n = th.shape[-1] // 2
    e = (th[..., :n].transpose(1, 2) @ ph[..., :n] + th[..., n:].transpose(1, 2) @ ph[..., n:]) / n
    y = torch.cat((g[..., :n] @ e.transpose(1, 2), g[..., n:] @ e.transpose(1, 2)), -1)
    assert torch.allclose(m(x_h, x_l), x_h + m.W(y.reshape(2, 2, 4, 3)), atol=1e-5)
    standard = torch.einsum("bki,bkj,bcj->bci", th, ph, g) / (2 * n)  # a per-pixel non-local: another model
    assert not torch.allclose(y, standard, atol=1e-2)


def test_q2_no_softmax_cnl_divides_by_the_channels_and_starts_as_the_identity():
    torch.manual_seed(0)
    m = deen.CNL(6, 4, 2)
    x_h, x_l = torch.randn(2, 6, 2, 3), torch.randn(2, 4, 4, 6)
    assert torch.equal(m(x_h, x_l), x_h)  # W.1 = 0: the identity at initialisation
    nn.init.normal_(m.W[1].weight)
    assert torch.allclose(m(x_h, x_l), ref_cnl(m, x_h, x_l), atol=1e-5)
    th, ph, g = m.theta(x_h).flatten(2), m.phi(x_l).flatten(2), m.g(x_l).flatten(2)
    y = (th @ ph.transpose(1, 2)) / 4 @ g  # E / c, c = 4 channels
    assert torch.allclose(m(x_h, x_l), x_h + m.W(y.reshape(2, 4, 4, 6)), atol=1e-5)


def test_q3_dee_joins_the_batch_and_its_dropout_hits_the_original_rows():
    torch.manual_seed(0)
    m = deen.DEE_module(8)
    x = torch.rand(5, 8, 4, 3) + 0.5
    assert torch.equal(m.eval()(x), ref_dee(m, x)) and m(x).shape == (15, 8, 4, 3)
    assert torch.equal(m(x)[:5], x)  # not residual: the original rows first, unchanged in evaluation
    m.train()
    torch.manual_seed(3)
    out = m(x)
    torch.manual_seed(3)
    assert torch.equal(out, ref_dee(m, x))
    dropped = out[:5] == 0
    assert dropped.any() and torch.allclose(out[:5][~dropped], x[~dropped] / 0.99)


def test_q4_orthogonality_is_the_raw_dot_product_of_the_expansions_over_3b():
    torch.manual_seed(0)
    ours = deen.DEEN(5, arch="resnet18").train()
    x = torch.randn(4, 3, 64, 32)
    out = ours(x[:2], x[2:])
    xp = out["feat"]
    xps = xp[:, None, :]
    _, a, b = torch.chunk(xps, 3, 0)
    s = torch.cat((a, b), 1)
    ref = torch.triu(torch.bmm(s, s.permute(0, 2, 1)), diagonal=1).sum() / xp.size(0)
    assert torch.allclose(out["ort"], ref, rtol=1e-5) and out["ort"] > 0


def ref_cpm(inputs, targets):
    """DEEN/loss.py CPMLoss.forward: centres by chunk position, mask of the sorted unique labels."""
    fts = [f.chunk(len(torch.chunk(targets, 4, 0)[0].unique()), 0) for f in torch.chunk(inputs, 4, 0)]
    c1, c2, c3, c4 = (torch.cat([t.mean(0, keepdim=True) for t in f]) for f in fts)
    lbs = torch.chunk(targets, 4, 0)[0].unique()
    n = lbs.size(0)
    mask = lbs.expand(n, n).eq(lbs.expand(n, n).t())
    d = lambda a, b: (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None] - 2 * a @ b.t()).clamp(min=1e-12).sqrt()  # noqa: E731,E501
    rank = nn.MarginRankingLoss(margin=0.2)

    def pick(dist, same, largest):
        return torch.cat([(dist[i][mask[i] == same].max() if largest else dist[i][mask[i] == same].min())[None]
                          for i in range(n)])
    ap1, an1, a33, a11 = pick(d(c2, c3), 1, True), pick(d(c1, c3), 1, False).detach(), pick(d(c3, c3), 0, False), \
        pick(d(c1, c1), 0, False)
    ap2, an2, a44, a22 = pick(d(c1, c4), 1, True), pick(d(c2, c4), 1, False).detach(), pick(d(c4, c4), 0, False), \
        pick(d(c2, c2), 0, False)
    one = torch.ones_like(ap1)
    l123 = rank(an1, ap1, one) + (rank(a33, ap1, one) + rank(a11, ap1, one)) * 0.5
    l124 = rank(an2, ap2, one) + (rank(a44, ap2, one) + rank(a22, ap2, one)) * 0.5
    return (l123 + l124) / 2


def ref_triplet(x, t, margin=0.3):
    n = x.size(0)
    dist = x.pow(2).sum(1, keepdim=True).expand(n, n)
    dist = (dist + dist.t() - 2 * x @ x.t()).clamp(min=1e-12).sqrt()
    mask = t.expand(n, n).eq(t.expand(n, n).t())
    ap = torch.cat([dist[i][mask[i]].max()[None] for i in range(n)])
    an = torch.cat([dist[i][mask[i] == 0].min()[None] for i in range(n)])
    return nn.MarginRankingLoss(margin=margin)(an, ap, torch.ones_like(an))


def deen_batch(p=3, k=2, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    l1 = torch.tensor([7, 2, 5][:p]).repeat_interleave(k)  # unsorted identity order, as the sampler draws
    feat = torch.rand(3 * 2 * p * k, d, generator=g).requires_grad_()
    return l1, {"feat": feat, "logits": torch.randn(3 * 2 * p * k, 9, generator=g), "ort": torch.tensor(3.0)}


def test_q5_cpm_is_the_reference_computation_and_its_layout_is_checked():
    l1, out = deen_batch()
    feat, labs = out["feat"], torch.cat((l1, l1, l1, l1))
    n = 2 * len(l1)
    for k in (1, 2):
        x = torch.cat((feat[:n], feat[k * n:(k + 1) * n]))
        ours, ref = deen.cpm_loss(x, 2), ref_cpm(x, labs)
        assert torch.allclose(ours, ref, rtol=1e-5) and ours > 0
        g1, = torch.autograd.grad(ours, feat)
        g2, = torch.autograd.grad(ref, feat)
        assert torch.allclose(g1, g2, atol=1e-6)  # the an_123/an_124 distances detached alike
    crit = deen.DEENLoss(0.3, 0.8, 0.01, 2)
    modality = utils.modality_column(n // 2, n - n // 2)
    for bad in (torch.cat((l1, l1.flip(0))), torch.cat((l1[[0, 2, 1, 3, 4, 5]],) * 2),
                torch.tensor([7, 7, 7, 7, 2, 2] * 2)):
        with pytest.raises(ValueError, match="its CPM loss needs the batch"):
            crit(out, bad, modality)
    with pytest.raises(ValueError, match="its CPM loss needs the batch"):  # CAJ's [visible; visible; thermal]
        crit(out, torch.cat((l1, l1)), utils.modality_column(3, 9))


def test_q6_the_total_is_ce_and_triplet_over_all_3b_rows_plus_the_weighted_terms():
    l1, out = deen_batch()
    total, terms = deen.DEENLoss(0.3, 0.8, 0.01, 2)(out, torch.cat((l1, l1)), utils.modality_column(len(l1), len(l1)))
    labels, labs = torch.cat((l1, l1, l1, l1, l1, l1)), torch.cat((l1, l1, l1, l1))
    f1, f2, f3 = torch.chunk(out["feat"], 3, 0)
    want = dict(id=F.cross_entropy(out["logits"], labels), tri=ref_triplet(out["feat"], labels),
                cpm=(ref_cpm(torch.cat((f1, f2)), labs) + ref_cpm(torch.cat((f1, f3)), labs)) * 0.8,
                ort=torch.tensor(0.03))
    assert list(terms) == ["id", "tri", "cpm", "ort"]
    assert all(torch.allclose(terms[k], want[k], rtol=1e-5) for k in want)
    assert torch.allclose(total, want["id"] + want["tri"] + want["cpm"] + want["ort"], rtol=1e-5)


# ----------------------------------------------------------------------------- reference checkpoints

def save_reference(tmp_path, regdb):
    net = ReferenceNet(206 if regdb else 7, regdb).trained().eval()
    path = tmp_path / ("regdb_deen_p4_n6_lr_0.1_seed_0_trial_1_best.t" if regdb else "sysu_deen_best.t")
    torch.save({"net": net.state_dict(), "cmc": np.zeros(20, np.float32), "mAP": np.float64(0.5),
                "mINP": np.float64(0.3), "epoch": 40}, path)
    return net, str(path)


def eval_args(method, dataset="sysu"):
    args = test_mine.get_args_parser().parse_args(["--method", method, "--dataset", dataset, "--data_path", "ROOT"])
    checkpoints.resolve_model_flags(args, skip=("img_w", "img_h", "trial"), log=lambda *a: None)
    return args


@pytest.mark.slow
@pytest.mark.parametrize("regdb", [False, True])
def test_a_reference_checkpoint_evaluates_as_it_is(tmp_path, regdb):
    net, path = save_reference(tmp_path, regdb)
    assert len(net.state_dict()) == (1022 if regdb else 1048)
    args = eval_args("deen", "regdb" if regdb else "sysu")
    ours, _ = checkpoints.model_from_checkpoint(path, args, args.explicit)
    assert ours.config["last_stage"] == (3 if regdb else 4)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        for modality, modal in (("visible", 1), ("thermal", 2)):  # ours, the reference's
            pool, bn = ref_forward(net, x, x, modal, training=False)
            got = ours.eval()(x, x, modality)
            norm = lambda v: v / v.norm(dim=1, keepdim=True)  # noqa: E731
            assert torch.allclose(norm(got["pool"]), pool, atol=1e-5) and torch.allclose(norm(got["bn"]), bn,
                                                                                          atol=1e-5)
            f = ours.features(x, modality)["distmat7"]  # six unit vectors side by side: pool, bn per branch
            assert torch.allclose(f[:, :pool.shape[1]].float(), pool[:2], atol=1e-5)
    # this checkpoint under another method, and another method's under --method deen: named
    with pytest.raises(ValueError, match="looks like one of --method deen"):
        checkpoints.model_from_checkpoint(path, eval_args("agw"), ())
    if not regdb:
        agw = model_mine.embed_net(6, arch="resnet50", share_net=1, pcb="off", non_local="on")
        torch.save({"net": model_mine.to_dgtl_state_dict(agw), "epoch": 3}, tmp_path / "agw.t")
        with pytest.raises(ValueError, match="looks like one of --method agw .* not of --method deen"):
            checkpoints.model_from_checkpoint(str(tmp_path / "agw.t"), eval_args("deen"), ())


@pytest.mark.slow
def test_the_training_forward_and_loss_equal_the_reference(tmp_path):
    torch.manual_seed(0)
    net = ReferenceNet(5, regdb=False).trained().train()
    ours = deen.DEEN(5)
    sd = {k: v for k, v in net.state_dict().items() if k in ours.state_dict()}
    ours.load_state_dict(sd)
    ours.train()
    x = torch.randn(4, 3, 64, 32)
    torch.manual_seed(5)
    x_pool, logits, ort = ref_forward(net, x[:2], x[2:], 0, training=True)
    torch.manual_seed(5)
    out = ours(x[:2], x[2:])
    assert torch.allclose(out["feat"], x_pool, atol=1e-4) and torch.allclose(out["logits"], logits, atol=1e-5)
    assert torch.allclose(out["ort"], ort, rtol=1e-4)


def test_the_table_entry_is_the_reference_setting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = train_mine.get_args_parser().parse_args(["--method", "deen", "--dataset", "llcm", "--data_path", "ROOT"])
    train_mine.init_distributed(args)
    _, name, notes = train_mine.prepare_run(args)
    assert {k: getattr(args, k) for k in ("share_net", "img_h", "img_w", "batch_size", "num_pos", "epochs", "optim",
                                          "lr", "backbone_lr_mult", "warmup_epochs", "lr_steps", "eval_start",
                                          "eval_every", "margin", "lambda_1", "lambda_2", "pad", "erasing_p")} == dict(
        share_net=1, img_h=384, img_w=144, batch_size=6, num_pos=4, epochs=151, optim="sgd", lr=0.1,
        backbone_lr_mult=0.1, warmup_epochs=10, lr_steps="20,80", eval_start=1, eval_every=1, margin=0.3,
        lambda_1=0.8, lambda_2=0.01, pad=10, erasing_p=0.5)
    assert args.pcb is None and not notes and name.startswith("llcm_deen_share1_p6k4")
    assert settings.METHODS["deen"].reproduction.extra_batch and settings.flip_default("deen") == "on"
    model = train_mine.build_model(5, args, "none")
    opt = train_mine.build_optimizer(model, args)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in opt.param_groups[1]["params"]) == ["bottleneck.weight", "classifier.weight"]
    assert {names[id(p)].split(".")[0] for p in opt.param_groups[0]["params"]} == {
        "visible_module", "thermal_module", "base_resnet", "DEE", "MFA1", "MFA2", "MFA3"}
    for flag, value in (("--share_net", "2"), ("--pcb", "on")):
        bad = train_mine.get_args_parser().parse_args(["--method", "deen", "--dataset", "sysu", "--data_path", "R",
                                                       flag, value])
        train_mine.init_distributed(bad)
        with pytest.raises(ValueError, match=flag):
            train_mine.prepare_run(bad)


@pytest.mark.slow
def test_flip_features_sum_unit_vectors_without_renormalising():
    import eval_metrics
    torch.manual_seed(0)
    m = deen.DEEN(5, arch="resnet18").eval()
    images = (torch.rand(3, 64, 32, 3) * 255).to(torch.uint8).numpy()
    f = eval_metrics.extract_features(m, images, "visible", torch.device("cpu"), all_features=True, flip=True)
    assert f["distmat7"].dtype == torch.float64 and f["distmat7"].shape == (3, 6 * 512)
    x = eval_metrics.data_loader.normalize(torch.from_numpy(images))
    parts = [a + b for a, b in zip(m.parts(x, "visible"), m.parts(x.flip(3), "visible"))]
    assert torch.allclose(f["distmat7"], torch.cat(parts, 1).double())
    norms = f["distmat7"][:, :512].norm(dim=1)
    assert (norms < 2 - 1e-6).all() and (norms > 1).all()  # sqrt(2 + 2 cos): not renormalised
    d7 = f["distmat7"] @ f["distmat7"].T
    d8 = f["distmat8"] @ f["distmat8"].T
    sims = [p.double() @ p.double().T for p in parts]
    assert torch.allclose(d7, sum(sims)) and torch.allclose(d8, 0.1 * (sims[0] + sims[2] + sims[4]) +
                                                            0.9 * (sims[1] + sims[3] + sims[5]))


def test_the_augmentation_grays_both_modalities_and_erases_with_the_dataset_areas():
    from PIL import Image
    import data_loader
    x = torch.randint(0, 256, (6, 20, 10, 3), dtype=torch.uint8)
    gray = data_loader.random_grayscale(x, 1.0)  # torchvision's RandomGrayscale: PIL's convert('L')
    assert np.array_equal(gray[..., 1].numpy(), np.stack([np.array(Image.fromarray(a.numpy()).convert("L"))
                                                          for a in x]))
    assert torch.equal(data_loader.random_grayscale(x, 0.0), x)
    for dataset, area in (("sysu", (0.2, 0.8)), ("llcm", (0.02, 0.4)), ("regdb", (0.02, 0.4))):
        kw = settings.METHODS["deen"].augment(argparse_namespace(dataset=dataset))
        assert kw == dict(gray_p=0.5, erasing=dict(sl=area[0], sh=area[1], mean=(0.485, 0.456, 0.406)))
    torch.manual_seed(0)
    aug = data_loader.BatchAugment(1.0, pad=2, gray_p=1.0, erasing=dict(sl=0.2, sh=0.8, mean=data_loader.MEAN))
    v, t, _ = aug(x, x, torch.zeros(12))
    for y in (v, t):
        filled = (y == torch.tensor(data_loader.MEAN)[None, :, None, None]).all(1)
        assert (filled.flatten(1).float().mean(1) >= 0.1).all()  # every image erased, with at least 0.2 x area
    assert settings.METHODS["hctri"].augment(argparse_namespace(dataset="sysu")) == {}


def argparse_namespace(**kw):
    import types
    return types.SimpleNamespace(**kw)


def test_a_384_high_training_set_is_stored_beside_the_root_one(tmp_path):
    import data_loader
    assert data_loader.stored_set_folder("ROOT", 288) == "ROOT" and data_loader.stored_set_folder("ROOT", 32) == "ROOT"
    assert data_loader.stored_set_folder("ROOT", 384) == os.path.join("ROOT", "train_h384")
    with pytest.raises(FileNotFoundError, match=r"train_h384.*run `python pre_process_sysu.py --data_path "
                                                r".* --img_h 384 --img_w 144` first"):
        data_loader.sysu_train_data(str(tmp_path), 144, 384)


def test_the_regdb_stem_swap_is_an_explicit_compatibility_mode(monkeypatch):
    import eval_metrics
    seen = {}

    def extract(model, images, modality, *a, **k):
        seen[images] = modality
        return {}
    monkeypatch.setattr(eval_metrics, "extract_features", extract)
    for swap, want in ((False, {"v": "visible", "t": "thermal"}), (True, {"v": "thermal", "t": "visible"})):
        ev = eval_metrics.RegDBEval.__new__(eval_metrics.RegDBEval)
        ev.images, ev.swap_stems, ev.directions = {"visible": "v", "thermal": "t"}, swap, ()
        ev.split = 1
        assert ev.run(argparse_namespace(feature_names=("distmat7",)), torch.device("cpu")) == []
        assert seen == want  # DEEN's RegDB test.py: thermal images through the visible stem and the reverse
    s = settings.with_test_flags(argparse_namespace(dataset="regdb", data_path="R", workers=1))
    assert s.stem_swap == "off"
    args = test_mine.get_args_parser().parse_args(["--dataset", "sysu", "--data_path", "R", "--stem_swap", "on"])
    with pytest.raises(ValueError, match="--stem_swap: not used by --dataset sysu"):
        test_mine.resolve_search_flags(args, False)


@pytest.mark.slow
def test_the_feature_extractor_gives_one_vector_per_image_whose_inner_products_are_distmat7(tmp_path):
    import extract
    torch.manual_seed(0)
    m = deen.DEEN(5, arch="resnet18").eval()
    path = tmp_path / "demo_deen_best.t"
    torch.save({"net": m.state_dict(), "epoch": 1}, path)
    ex = extract.FeatureExtractor(path, "cpu", method="deen", arch="resnet18", dataset="demo", img_h=64, img_w=32)
    assert ex.flip and ex.feature == "distmat7"  # flips on by default, as DEEN's test.py
    images = (np.random.default_rng(0).random((3, 64, 32, 3)) * 255).astype(np.uint8)
    f = ex(images, "thermal", all_features=True)
    x = eval_metrics_normalize(images)
    with torch.no_grad():
        parts = [a + b for a, b in zip(m.parts(x, "thermal"), m.parts(x.flip(3), "thermal"))]
    sims = [p.double() @ p.double().T for p in parts]
    assert np.allclose(f["distmat7"] @ f["distmat7"].T, sum(sims).numpy())
    assert np.allclose(f["distmat8"] @ f["distmat8"].T, (0.1 * (sims[0] + sims[2] + sims[4]) +
                                                        0.9 * (sims[1] + sims[3] + sims[5])).numpy())


def eval_metrics_normalize(images):
    import data_loader
    return data_loader.normalize(torch.from_numpy(images))
