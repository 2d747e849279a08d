"""DGTL (Liu et al. SPL 2021): the dual-granularity loss against a literal reading of the reference's
loss.py and train.py (hijune6/DGTL-for-VT-ReID), the DGTL head of embed_net (its model_main.py) and
the reference code's checkpoint layout."""
import pytest
import torch
import torch.nn.functional as F

import checkpoints
import data_manager
import loss
import model_mine
import train_mine
import utils


# ---------------------------------------------------------------- literal readings of the reference's loss.py

def literal_distance(a, b):
    """§2.2: sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-12))."""
    return torch.sqrt(torch.clamp((a * a).sum() + (b * b).sum() - 2 * (a * b).sum(), min=1e-12))


def literal_hardest_ranking(points, targets, margin):
    """Hardest positive (self included) and negative of each point, then MarginRankingLoss(margin)
    with x1 = d_an, x2 = d_ap, y = 1 (mean reduction); loops everywhere."""
    n = len(points)
    d_ap, d_an = [], []
    for i in range(n):
        d = [literal_distance(points[i], points[j]) for j in range(n)]
        d_ap.append(max(d[j] for j in range(n) if targets[j] == targets[i]))
        d_an.append(min(d[j] for j in range(n) if targets[j] != targets[i]))
    d_ap, d_an = torch.stack(d_ap), torch.stack(d_an)
    value = F.margin_ranking_loss(d_an, d_ap, torch.ones_like(d_an), margin=margin)
    return value, int((d_an >= d_ap).sum())


def literal_sample_triplet(feats, labels, margin):
    """§2.4: batch-hard over all 2PK samples of both modalities."""
    return literal_hardest_ranking(list(feats), [int(y) for y in labels], margin)


def literal_center_triplet(feats, labels, margin):
    """§2.5 as the reference computes it: 2P contiguous chunks of K rows (the layout [visible ids x K;
    thermal ids x K]), each chunk's mean a center, labelled by the sorted unique labels twice."""
    uniq = sorted({int(y) for y in labels})
    k = len(labels) // (2 * len(uniq))
    centers = [feats[c * k:(c + 1) * k].mean(0) for c in range(2 * len(uniq))]
    return literal_hardest_ranking(centers, uniq + uniq, margin)


def reference_batch(p=4, k=3, d=16, seed=0, spread=1.0, separation=0.0):
    """The reference's layout: visible [id_1 x K .. id_P x K], then thermal in the same id order;
    features around a random mean per identity, separation apart."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(50, generator=g)[:p]  # labels need not be sorted nor consecutive
    labels = ids.repeat_interleave(k).repeat(2)
    modality = utils.modality_column(p * k, p * k)
    means = torch.randn(p, d, generator=g) * separation
    feats = torch.randn(2 * p * k, d, generator=g) * spread + means.repeat_interleave(k, 0).repeat(2, 1)
    return feats, labels, modality


def value_and_grad(fn, feats):
    x = feats.clone().requires_grad_()
    value = fn(x)
    return value, torch.autograd.grad(value, x)[0]


@pytest.mark.parametrize("seed", range(4))
def test_sample_triplet_is_the_literal_reading_in_value_and_gradient(seed):
    feats, labels, modality = reference_batch(seed=seed)
    crit = loss.TripletLoss(margin=0.3)
    got, g_got = value_and_grad(lambda x: crit(x, labels)[0], feats)
    want, g_want = value_and_grad(lambda x: literal_sample_triplet(x, labels, 0.3)[0], feats)
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(g_got, g_want, atol=1e-5)
    assert g_want.abs().sum() > 0  # the hinge is active: the gradient comparison means something
    assert int(crit(feats, labels)[1]) == literal_sample_triplet(feats, labels, 0.3)[1]


@pytest.mark.parametrize("seed", range(4))
def test_center_triplet_is_the_literal_reading_in_value_and_gradient(seed):
    feats, labels, modality = reference_batch(seed=seed, spread=0.5)
    crit = loss.CenterTripletLoss(margin=0.8)
    got, g_got = value_and_grad(lambda x: crit(x, labels, modality)[0], feats)
    want, g_want = value_and_grad(lambda x: literal_center_triplet(x, labels, 0.8)[0], feats)
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(g_got, g_want, atol=1e-5)
    assert g_want.abs().sum() > 0
    assert int(crit(feats, labels, modality)[1]) == literal_center_triplet(feats, labels, 0.8)[1]


@pytest.mark.parametrize("seed", range(3))
def test_both_granularities_ignore_batch_order(seed):
    feats, labels, modality = reference_batch(p=5, k=2, seed=seed)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + 10))
    for crit in (loss.TripletLoss(margin=0.3), loss.CenterTripletLoss(margin=0.3)):
        ref, g_ref = value_and_grad(lambda x: crit(x, labels, modality)[0], feats)
        got, g_got = value_and_grad(lambda x: crit(x, labels[perm], modality[perm])[0], feats[perm])
        assert torch.allclose(got, ref, atol=1e-6)
        assert torch.allclose(g_got, g_ref[perm], atol=1e-6)
    # and the whole DGTL loss, on an output with a coarse branch whose rows are permuted together
    out = dgtl_out(feats, labels, seed)
    crit = loss.DGTLLoss(margin=0.3, margin_hc=0.5, hcloss="HcTri", label_smooth="off")
    ref_total, ref = crit(out, labels, modality)
    got_total, got = crit({k: t[perm] for k, t in out.items()}, labels[perm], modality[perm])
    assert torch.allclose(got_total, ref_total, atol=1e-6)
    assert list(got) == list(ref) == ["id", "tri", "acc"]
    for k in ref:
        assert torch.allclose(got[k], ref[k], atol=1e-6), k


def dgtl_out(feats, labels, seed=0, classes=60):
    g = torch.Generator().manual_seed(seed + 100)
    n = len(labels)
    logits = torch.randn(n, classes, generator=g)
    coarse = feats * 0.3 + torch.randn(feats.shape, generator=g) * 0.8
    return {"feat": feats, "logits": logits, "coarse": coarse, "coarse_logits": torch.randn(n, classes, generator=g)}


@pytest.mark.parametrize("hcloss", ["HcTri", "OriTri", "no"])
@pytest.mark.parametrize("coarse", [True, False])
@pytest.mark.parametrize("label_smooth", ["off", "on"])
def test_total_loss_is_spec_term_by_term(hcloss, coarse, label_smooth):
    feats, labels, modality = reference_batch(seed=7, separation=1.0)
    out = dgtl_out(feats, labels)
    f, logits, h, logits_h = out["feat"], out["logits"], out["coarse"], out["coarse_logits"]
    if not coarse:
        out = {"feat": f, "logits": logits}
    crit = loss.DGTLLoss(margin=0.3, margin_hc=0.5, hcloss=hcloss, label_smooth=label_smooth)
    eps = 0.1 if label_smooth == "on" else 0.0

    def ce(z):  # §2.3: target (1 - eps) onehot + eps / C, batch mean of -target . log softmax
        target = F.one_hot(labels, z.shape[1]).float() * (1 - eps) + eps / z.shape[1]
        return (-target * z.log_softmax(1)).sum(1).mean()

    tri_f, correct = literal_sample_triplet(f, labels, 0.3)
    assert 0 < correct < len(labels) and tri_f > 0  # the accuracy and the hinge both mean something
    want = {"id_fine": ce(logits), "tri_fine": tri_f}
    if coarse:
        want["id_coarse"] = ce(logits_h)
        if hcloss == "HcTri":
            want["tri_coarse"] = literal_center_triplet(h, labels, 0.3 + 0.5)[0]
        elif hcloss == "OriTri":  # margin_hc is not added here
            want["tri_coarse"] = literal_sample_triplet(h, labels, 0.3)[0]
    terms = crit.terms(out, labels, modality)
    assert sorted(terms) == sorted(want)
    for k in want:
        assert torch.allclose(terms[k], want[k], atol=1e-5), k
    total, parts = crit(out, labels, modality)
    assert sorted(parts) == ["acc", "id", "tri"]
    loss_id, loss_tri, acc = parts["id"], parts["tri"], parts["acc"]
    want_id = sum(v for k, v in want.items() if k.startswith("id"))
    want_tri = sum(v for k, v in want.items() if k.startswith("tri"))
    assert torch.allclose(loss_id, want_id, atol=1e-5) and torch.allclose(loss_tri, want_tri, atol=1e-5)
    assert torch.allclose(total, want_id + want_tri, atol=1e-5)
    assert acc.item() == pytest.approx(correct / len(labels))
    assert all(t.dtype == torch.float32 for t in (total, loss_id, loss_tri))


def test_loss_is_float32_from_half_inputs_and_modality_defaults_to_halves():
    feats, labels, modality = reference_batch(seed=3)
    out = dgtl_out(feats, labels)
    crit = loss.DGTLLoss(margin=0.3, margin_hc=0.2, hcloss="HcTri", label_smooth="off")  # the former defaults
    ref = crit(out, labels, modality)
    half = crit({k: t.bfloat16() for k, t in out.items()}, labels)
    assert all(t.dtype == torch.float32 for t in (half[0], half[1]["id"], half[1]["tri"]))
    assert torch.allclose(half[0], ref[0], rtol=0.05)
    assert torch.equal(crit(out, labels)[0], ref[0])


@pytest.mark.parametrize("flags", [["--hcloss", "hctri"], ["--label_smooth", "yes"], ["--bpool", "mean"]])
def test_bad_loss_options_are_clear_errors(flags, capsys):
    # the scripts check these flags once, at the parser (DGTLLoss takes them as resolved)
    with pytest.raises(SystemExit) as err:
        train_mine.get_args_parser().parse_args(["--method", "dgtl", *flags])
    assert err.value.code == 2 and f"invalid choice: '{flags[1]}'" in capsys.readouterr().err


# ---------------------------------------------------------------- the DGTL head (the reference's model_main.py)

def images(n=2, h=32, w=16, seed=0):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def dgtl(class_num=5, **kw):
    torch.manual_seed(kw.pop("seed", 0))
    return model_mine.embed_net(class_num, head="dgtl", **kw)


@pytest.fixture(scope="module")
def net():
    return dgtl(bpool="avg", cpool="max")


def test_pooling_is_the_reference_formulas():
    x = torch.rand(3, 8, 6, 3) * 2
    assert torch.allclose(model_mine.global_pool(x, "avg"), F.adaptive_avg_pool2d(x, 1).flatten(1))
    assert torch.equal(model_mine.global_pool(x, "max"), F.adaptive_max_pool2d(x, 1).flatten(1))
    want = (x.flatten(2).pow(3).mean(-1) + 1e-12).pow(1 / 3)
    assert torch.allclose(model_mine.global_pool(x, "gem", 3.0), want, rtol=1e-6)


def batch_norm(t, bn, training):
    mean, var = (t.mean(0), t.var(0, unbiased=False)) if training else (bn.running_mean, bn.running_var)
    return (t - mean) / torch.sqrt(var + bn.eps) * bn.weight


@pytest.mark.parametrize("bpool,cpool,fuse", [("avg", "max", "sum"), ("max", "max", "sum"), ("gem", "avg", "cat"),
                                              ("avg", "gem", "sum")])
@pytest.mark.slow
def test_train_and_eval_outputs_follow_the_spec(bpool, cpool, fuse):
    m = dgtl(bpool=bpool, cpool=cpool, fuse=fuse)
    x1, x2 = images(3, seed=1), images(3, seed=2)
    dim = 4096 if fuse == "cat" else 2048
    for training in (True, False):
        m.train(training)
        with torch.no_grad():
            x = m.backbone(x1, x2)
            out = m(x1, x2)
        f = model_mine.global_pool(x, bpool, 3.0)
        # b = BN1(f) and h = BN2(fuse(cpool(X), b)), written out; bias 0, batch or running statistics
        b = batch_norm(f, m.bottleneck, training)
        y = model_mine.global_pool(x, cpool, 3.0)
        h = batch_norm(y + b if fuse == "sum" else torch.cat([y, b], 1), m.cpool_layer.bottleneck, training)
        if training:
            assert set(out) == {"feat", "logits", "coarse", "coarse_logits"}
            assert torch.allclose(out["feat"], f, atol=1e-5)
            assert torch.allclose(out["logits"], b @ m.classifier.weight.t(), atol=1e-5)
            assert out["coarse"].shape == (6, dim) and torch.allclose(out["coarse"], h, atol=1e-4)
            assert out["coarse_logits"].shape == (6, 5)
            assert torch.allclose(out["coarse_logits"], h @ m.classifier_att.weight.t(), atol=1e-5)
        else:
            assert tuple(out) == m.feature_names == ("coarse", "fine")
            # what evaluation ranks with: each modality's L2-normalised features (eval batch norms are
            # per sample, so rows 0..2 of the two-stream batch are the visible images', 3..5 the thermal)
            with torch.no_grad():
                feats = [m.features(x1, "visible"), m.features(x2, "thermal")]
            for rows, got in zip((slice(0, 3), slice(3, 6)), feats):
                assert tuple(got) == ("coarse", "fine")
                assert torch.allclose(got["fine"], F.normalize(b[rows], dim=1), atol=1e-5)
                assert torch.allclose(got["coarse"], F.normalize(h[rows], dim=1), atol=1e-5)
                assert all(torch.allclose(t.norm(dim=1), torch.ones(3)) for t in got.values())  # unit norms


def test_without_coarse_branch():
    m = dgtl(bpool="max", cpool="no")
    assert not hasattr(m, "classifier_att") and not hasattr(m, "cpool_layer")
    m.train()
    out = m(images(2), images(2, seed=1))
    assert set(out) == {"feat", "logits"}
    f, logits = out["feat"], out["logits"]
    assert f.shape == (4, 2048) and logits.shape == (4, 5)
    m.eval()
    assert m.feature_names == ("fine",)
    with torch.no_grad():
        out = m(images(2), None, modality="visible")
        b = m.features(images(2), "visible")
        f = model_mine.global_pool(m.backbone(images(2), None, modality="visible"), "max")
    assert list(out) == list(b) == ["fine"]
    assert torch.allclose(b["fine"], F.normalize(m.bottleneck(f), dim=1), atol=1e-5)


def test_head_initialisation_and_frozen_bn_biases(net):
    for bn in (net.bottleneck, net.cpool_layer.bottleneck):
        assert not bn.bias.requires_grad and torch.count_nonzero(bn.bias) == 0
        assert abs(bn.weight.mean().item() - 1) < 2e-3 and 0.005 < bn.weight.std().item() < 0.015
    for fc in (net.classifier, net.classifier_att):
        assert fc.bias is None and 0.0008 < fc.weight.std().item() < 0.0012


def test_full_rate_parameters_are_the_reference_groups(net):
    names = {id(p): n for n, p in net.named_parameters()}
    assert sorted(names[id(p)] for p in net.full_rate_parameters()) == [
        "bottleneck.bias", "bottleneck.weight", "classifier.weight", "classifier_att.weight",
        "cpool_layer.bottleneck.bias", "cpool_layer.bottleneck.weight"]
    m = dgtl(cpool="no")
    names = {id(p): n for n, p in m.named_parameters()}
    assert sorted(names[id(p)] for p in m.full_rate_parameters()) == ["bottleneck.bias", "bottleneck.weight",
                                                                        "classifier.weight"]


@pytest.mark.parametrize("share_net", range(6))
@pytest.mark.slow
def test_every_share_point_trains_one_step(share_net):
    m = dgtl(share_net=share_net, bpool="avg", cpool="max")
    crit = loss.DGTLLoss(margin=0.3, margin_hc=0.5, hcloss="HcTri", label_smooth="off")
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    labels = torch.arange(2).repeat_interleave(2).repeat(2)
    m.train()
    out = m(images(4, seed=1), images(4, seed=2))
    total, _ = crit(out, labels)
    assert torch.isfinite(total)
    opt.zero_grad()
    total.backward()
    modules = ([m.visible_module.visible, m.thermal_module.thermal] if share_net else []) + \
              ([m.base_resnet.base] if share_net < 5 else [])
    for mod in modules:  # the gradient reaches every part of the backbone
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
    opt.step()
    assert torch.count_nonzero(m.bottleneck.bias) == 0 and torch.count_nonzero(m.cpool_layer.bottleneck.bias) == 0


def test_heads_run_in_float32_under_autocast(net):
    net.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(images(2), images(2, seed=1))
    assert set(out) == {"feat", "logits", "coarse", "coarse_logits"}
    assert all(t.dtype == torch.float32 for t in out.values())


def test_config_rebuilds_the_model(net):
    cfg = net.config
    assert (cfg["head"], cfg["pcb"], cfg["bpool"], cfg["cpool"], cfg["fuse"], cfg["gem_p"], cfg["arch"]) == \
        ("dgtl", "off", "avg", "max", "sum", 3.0, "resnet50")
    again = model_mine.embed_net(**cfg)
    checkpoints.load_weights(again, net.state_dict(), "x")  # the same keys and shapes
    # options left out (None) take their defaults
    assert model_mine.embed_net(5, head="dgtl", pcb=None, gm_pool=None, bpool=None, cpool=None, fuse=None).config == \
        dict(cfg, cpool="no")


@pytest.mark.parametrize("kw,match", [
    (dict(pcb="on"), "--pcb on: the DGTL head uses global features"),
    (dict(bpool="mean"), "--bpool must be one of avg, max, gem, got mean"),
    (dict(cpool="wpa"), r"--cpool wpa \(IWPA\) is not implemented: use avg, max, gem or no"),
    (dict(cpool="attention"), "--cpool must be one of avg, max, gem or no, got attention"),
    (dict(cpool="max", fuse="concat"), "--fuse must be sum or cat, got concat"),
    (dict(cpool="no", fuse="cat"), "--fuse cat .* --cpool no"),
    (dict(gm_pool="off"), "--gm_pool off: the DGTL head pools with --bpool"),
])
def test_bad_dgtl_options_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        model_mine.embed_net(3, head="dgtl", **kw)


@pytest.mark.parametrize("kw,match", [
    (dict(head="bnneck"), "head must be one of strips, global, dgtl, got bnneck"),
    (dict(head="strips", pcb="off"), "head strips needs --pcb on"),
    (dict(pcb="on", cpool="max"), "--cpool max: only the DGTL head"),
    (dict(pcb="off", bpool="max"), "--bpool max: only the DGTL head"),
    (dict(pcb="off", fuse="cat"), "--fuse cat: only the DGTL head"),
])
def test_dgtl_options_on_other_heads_are_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        model_mine.embed_net(3, **kw)


# ---------------------------------------------------------------- the reference code's checkpoints

def reference_file(model, tmp_path, edit=None):
    sd = model_mine.to_dgtl_state_dict(model)
    if edit:
        edit(sd)
    path = tmp_path / "regdb_bpool_max_cpool_max_best.t"
    torch.save({"net": sd, "cmc": None, "mAP": 0.7, "epoch": 30}, path)
    return str(path)


def load_reference(path, share_net=2, **kw):
    """What test/train do with an {'net': ...} file: read it, drop the unused stages, strict load."""
    sd, _ = checkpoints.checkpoint_weights(checkpoints.load_checkpoint(path), path)
    sd, ignored = model_mine.drop_unused_stages(sd, share_net)
    model = dgtl(share_net=share_net, seed=123, **kw)
    checkpoints.load_weights(model, sd, path)
    return model, ignored


def test_reference_layout_holds_three_whole_resnets_and_the_reference_head_names(tmp_path):
    m = dgtl(bpool="max", cpool="max")
    keys = torch.load(reference_file(m, tmp_path), weights_only=False)["net"].keys()
    for prefix in ("visible_module.visible.", "thermal_module.thermal.", "base_resnet.base."):
        for stage in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer4.2.bn3.weight",
                      "layer4.0.downsample.0.weight"):
            assert prefix + stage in keys
    for k in ("bottleneck.weight", "bottleneck.bias", "bottleneck.running_mean", "classifier.weight",
              "classifier_att.weight", "cpool_layer.bottleneck.weight", "cpool_layer.bottleneck.running_var",
              "cpool_layer.bottleneck.num_batches_tracked"):
        assert k in keys
    assert "classifier.bias" not in keys and "classifier_att.bias" not in keys


@pytest.mark.parametrize("share_net,arch", [(2, "resnet50"), (0, "resnet18"), (3, "resnet18"), (5, "resnet18")])
@pytest.mark.slow
def test_reference_checkpoint_loads_and_gives_identical_features(tmp_path, share_net, arch):
    m = dgtl(share_net=share_net, arch=arch, bpool="max", cpool="max")
    m.train()
    with torch.no_grad():  # running statistics that differ from a fresh model's
        m(images(4, seed=8), images(4, seed=9))
    m.eval()
    loaded, ignored = load_reference(reference_file(m, tmp_path), share_net, arch=arch, bpool="max", cpool="max")
    loaded.eval()
    specific, shared = model_mine.split_names(share_net)
    streams = ("visible_module.visible.", "thermal_module.thermal.")
    want = {(p, s) for p in streams for s in shared} | {("base_resnet.base.", s) for s in specific}
    got = {(p, k[len(p):].split(".")[0]) for k in ignored for p in streams + ("base_resnet.base.",)
           if k.startswith(p)}
    assert all(k.startswith(streams + ("base_resnet.base.",)) for k in ignored)
    assert got == {(p, s) for p, s in want if s not in ("relu", "maxpool")}
    x = images(3, seed=5)
    with torch.no_grad():
        for modality in data_manager.MODALITIES:
            a, b = loaded(x, x, modality), m(x, x, modality)
            assert list(a) == list(b) == ["coarse", "fine"]
            for k in b:
                assert torch.equal(a[k], b[k]), (modality, k)


@pytest.mark.parametrize("edit,match", [
    (lambda sd: sd.__setitem__("classifier_att.bias", torch.zeros(5)), r"unexpected keys \(1\): classifier_att\.bias"),
    (lambda sd: sd.pop("cpool_layer.bottleneck.running_mean"),
     r"missing keys \(1\): cpool_layer\.bottleneck\.running_mean"),
    (lambda sd: sd.pop("visible_module.visible.layer1.0.conv2.weight"),
     r"missing keys \(1\): visible_module\.visible\.layer1\.0\.conv2\.weight"),
])
def test_reference_checkpoint_that_does_not_fit_names_the_keys(tmp_path, edit, match):
    m = dgtl(bpool="max", cpool="max")
    with pytest.raises(ValueError, match=match):
        load_reference(reference_file(m, tmp_path, edit), bpool="max", cpool="max")


def test_only_the_whole_resnet_layout_is_trimmed():
    # the HcTri code's files hold only the stages they run: a share point that does not fit them
    # must keep both its missing and its unexpected keys for the strict load to report
    m = model_mine.embed_net(3, share_net=2, arch="resnet18", pcb="off")
    sd = model_mine.to_original_state_dict(m)
    kept, ignored = model_mine.drop_unused_stages(sd, 3)
    assert ignored == [] and list(kept) == list(sd)


@pytest.mark.slow
def test_reference_checkpoint_of_another_share_point_is_an_error(tmp_path):
    # every stage is in such a file at any share point; what the reference trained tells them apart
    m = dgtl(arch="resnet18", bpool="max", cpool="max")

    def trained(key):  # a stage the reference ran (and so changed) in one of its copies
        return lambda sd: sd[key].add_(0.01)

    path = reference_file(m, tmp_path, trained("thermal_module.thermal.layer1.0.conv1.weight"))
    load_reference(path, 2, arch="resnet18", bpool="max", cpool="max")
    with pytest.raises(ValueError, match=r"--share_net 1: .* different layer1 weights .* larger --share_net"):
        load_reference(path, 1, arch="resnet18", bpool="max", cpool="max")
    path = reference_file(m, tmp_path, trained("base_resnet.base.layer2.1.bn2.running_var"))
    load_reference(path, 2, arch="resnet18", bpool="max", cpool="max")
    with pytest.raises(ValueError, match=r"--share_net 3: .* trained layer2 in the shared base only.* smaller"):
        load_reference(path, 3, arch="resnet18", bpool="max", cpool="max")
