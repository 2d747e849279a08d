import copy

import pytest
import torch
import torchvision

import checkpoints
import model_mine
import data_manager


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return model_mine.embed_net(7, share_net=2, pcb="on", gem_p=10.0)


def images(n=2, h=96, w=48, seed=0):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("share_net,specific,shared", [
    (0, [], ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]),
    (1, ["conv1", "bn1"], ["layer1", "layer2", "layer3", "layer4"]),
    (2, ["conv1", "bn1", "layer1"], ["layer2", "layer3", "layer4"]),
    (4, ["conv1", "bn1", "layer1", "layer2", "layer3"], ["layer4"]),
    (5, ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"], []),
])
def test_share_net_split_and_original_key_names(share_net, specific, shared):
    keys = model_mine.embed_net(3, share_net=share_net).state_dict().keys()

    def tops(prefix):
        return sorted({k[len(prefix):].split(".")[0] for k in keys if k.startswith(prefix)})

    assert tops("visible_module.visible.") == sorted(specific)
    assert tops("thermal_module.thermal.") == sorted(specific)
    assert tops("base_resnet.base.") == sorted(shared)
    assert not any(".fc." in k for k in keys)


def test_last_stride_one_feature_map():
    m = model_mine.embed_net(3).eval()
    with torch.no_grad():
        x = m.backbone(images(1, 288, 144), None, modality="visible")
    assert x.shape == (1, 2048, 18, 9)


def test_streams_start_from_their_own_copy_of_the_weights(tmp_path):
    torch.manual_seed(0)
    sd = model_mine.resnet50_last_stride1().state_dict()
    path = tmp_path / "r50.pth"
    torch.save(sd, path)
    m = model_mine.embed_net(3, share_net=2, pretrained=str(path))
    v, t = m.visible_module.visible.conv1.weight, m.thermal_module.thermal.conv1.weight
    assert torch.equal(v, sd["conv1.weight"]) and torch.equal(t, sd["conv1.weight"])
    assert v.data_ptr() != t.data_ptr()
    assert torch.equal(m.base_resnet.base.layer4[0].conv1.weight, sd["layer4.0.conv1.weight"])


def test_modality_selects_streams(net):
    net.eval()
    x1, x2 = images(2, seed=1), images(2, seed=2)
    assert net.feature_names == ("parts",)
    with torch.no_grad():
        out = net(x1, x2, modality=None)
        assert tuple(out) == net.feature_names
        both = torch.nn.functional.normalize(out["parts"], dim=1)  # what features() gives, of both streams
        visible, thermal = net.features(x1, "visible")["parts"], net.features(x2, "thermal")["parts"]
        assert torch.equal(net(x1, x2, "visible")["parts"], net(x1, x1, "visible")["parts"])  # x1 only
        assert torch.equal(net(x1, x2, "thermal")["parts"], net(x2, x2, "thermal")["parts"])  # x2 only
        assert torch.allclose(both[:2], visible, atol=1e-5)
        assert torch.allclose(both[2:], thermal, atol=1e-5)
    assert both.shape == (4, 6 * 256)
    assert torch.allclose(torch.cat([visible, thermal]).norm(dim=1), torch.ones(4), atol=1e-5)


def test_old_int_modality_is_refused(net):
    """The reference codes' ints (0 both, 1 visible, 2 thermal) are one-line errors naming the accepted
    values, never another stream (their 1 would otherwise be MODALITIES' index of thermal)."""
    x = images(1, seed=1)
    for old in (0, 1, 2):
        for call in (lambda: net(x, x, old), lambda: net.backbone(x, x, old), lambda: net.streams(x, x, old)):
            with pytest.raises(ValueError, match=rf"^modality must be 'visible', 'thermal' or None \(both\), "
                                                 rf"got {old}$"):
                call()
        with pytest.raises(ValueError, match=rf"^modality must be 'visible' or 'thermal', got {old}$"):
            net.features(x, old)
    with pytest.raises(ValueError, match=r"^modality must be 'visible' or 'thermal', got None$"):
        net.features(x, None)  # features are one modality's: both streams would give 2N rows
    with pytest.raises(ValueError, match=r"^modality must be 'visible', 'thermal' or None \(both\), "
                                         r"got 'both'$"):
        net(x, x, "both")


def test_training_outputs(net):
    net.train()
    out = net(images(2), images(2, seed=3))
    assert set(out) == {"strips", "strip_logits", "feat"}
    feats, logits, feat_all = out["strips"], out["strip_logits"], out["feat"]
    assert len(feats) == 6 and len(logits) == 6
    assert feats.shape == (6, 4, 256) and logits.shape == (6, 4, 7) and feat_all.shape == (4, 1536)
    assert torch.equal(torch.cat(list(feats), 1), feat_all)


def test_fast_pcb_head_equals_the_looped_one(net):
    x = torch.rand(4, 2048, 6, 3) * 3
    for training in (True, False):
        a, b = copy.deepcopy(net.head).train(training), copy.deepcopy(net.head).train(training)
        fa, la = a(x)
        fb, lb = b.forward_looped(x)
        assert torch.allclose(fa, fb, atol=1e-4) and torch.allclose(la, lb, atol=1e-5)
        assert torch.allclose(a.bn.running_mean, b.bn.running_mean, atol=1e-6)
        assert torch.allclose(a.bn.running_var, b.bn.running_var, atol=1e-5)
        assert int(a.bn.num_batches_tracked) == int(b.bn.num_batches_tracked)


def test_gem_matches_formula_and_is_float32_under_autocast():
    x = torch.rand(2, 4, 6, 3) * 4
    x[0, 0] = 0  # the 1e-12 floor: (1e-12)^(1/10) = 0.063
    want = (x.double().pow(10).mean(dim=(2, 3)) + 1e-12).pow(0.1)
    assert torch.allclose(model_mine.gem(x, 10.0, (2, 3)).double(), want, rtol=1e-6)
    big = x * 1e4  # x^10 = 1e40 overflows float32; the pooled value does not
    want = (big.double().pow(10).mean(dim=(2, 3)) + 1e-12).pow(0.1)
    assert torch.allclose(model_mine.gem(big, 10.0, (2, 3)).double(), want, rtol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model_mine.gem(x.bfloat16(), 10.0, (2, 3))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_global_head_outputs():
    m = model_mine.embed_net(5, pcb="off")
    m.train()
    out = m(images(2), images(2))
    assert set(out) == {"feat", "logits"}
    x_pool, logits = out["feat"], out["logits"]
    assert x_pool.shape == (4, 2048) and logits.shape == (4, 5)
    assert not m.bottleneck.bias.requires_grad
    m.eval()
    with torch.no_grad():
        out = m(images(2), images(2), modality="visible")
    assert tuple(out) == m.feature_names == ("bn", "pool")
    pool, feat = out["pool"], out["bn"]
    assert pool.shape == feat.shape == (2, 2048)


def test_strips_must_divide_the_height(net):
    net.eval()
    with pytest.raises(ValueError, match="num_strips"):
        with torch.no_grad():
            net(images(1, 80, 48), None, modality="visible")


@pytest.mark.slow
def test_original_checkpoint_loads_and_gives_identical_features(net, tmp_path):
    net.eval()
    path = tmp_path / "orig.t"
    torch.save({"net": model_mine.to_original_state_dict(net), "cmc": None, "mAP": 0.5, "mINP": 0.3, "epoch": 3},
               path)
    keys = torch.load(path, weights_only=False)["net"].keys()
    assert "local_conv_list.5.0.weight" in keys and "fc_list.0.bias" in keys and "local_conv_list.0.1.running_var" in keys
    args = type("A", (), dict(method="hctri", arch="resnet50",
                              share_net=2, pcb="on", local_feat_dim=256, num_strips=6, gem_p=10.0, gm_pool="on"))
    loaded, _ = checkpoints.model_from_checkpoint(str(path), args)
    loaded.eval()
    x = images(3, seed=5)
    with torch.no_grad():
        for modality in data_manager.MODALITIES:
            a, b = loaded(x, x, modality), net(x, x, modality)
            assert list(a) == list(b) == ["parts"]
            for k in b:
                assert torch.equal(a[k], b[k]), (modality, k)


def test_dataparallel_prefix_is_removed(net, tmp_path):
    path = tmp_path / "dp.t"
    torch.save({"net": {"module." + k: v for k, v in model_mine.to_original_state_dict(net).items()}}, path)
    args = type("A", (), dict(method="hctri", arch="resnet50",
                              share_net=2, pcb="on", local_feat_dim=256, num_strips=6, gem_p=10.0, gm_pool="on"))
    checkpoints.model_from_checkpoint(str(path), args)


def test_checkpoint_of_another_architecture_is_a_clear_error(net, tmp_path):
    path = tmp_path / "orig.t"
    torch.save({"net": model_mine.to_original_state_dict(net)}, path)
    args = type("A", (), dict(method="hctri", arch="resnet50",
                              share_net=3, pcb="on", local_feat_dim=256, num_strips=6, gem_p=10.0, gm_pool="on"))
    with pytest.raises(ValueError, match=r"does not fit the model \(share_net=3.*missing keys.*unexpected keys"):
        checkpoints.model_from_checkpoint(str(path), args)


def test_missing_checkpoint_never_evaluates_random_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        checkpoints.model_from_checkpoint(str(tmp_path / "nope.t"), None)


def test_imagenet_offline_says_where_to_put_the_weights(monkeypatch):
    def offline(*a, **k):
        raise OSError("network is unreachable")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(OSError, match=r"resnet50-0676ba61\.pth.*--pretrained PATH"):
        model_mine.embed_net(3, pretrained="imagenet")


def test_pretrained_path_must_exist():
    with pytest.raises(FileNotFoundError, match="--pretrained"):
        model_mine.embed_net(3, pretrained="/no/such/weights.pth")


# ---------------------------------------------------------------- --arch resnet18, --no_local

@pytest.mark.parametrize("share_net,specific,shared", [
    (0, [], ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]),
    (2, ["conv1", "bn1", "layer1"], ["layer2", "layer3", "layer4"]),
    (5, ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"], []),
])
def test_resnet18_share_net_split_and_original_key_names(share_net, specific, shared):
    keys = model_mine.embed_net(3, arch="resnet18", share_net=share_net).state_dict().keys()

    def tops(prefix):
        return sorted({k[len(prefix):].split(".")[0] for k in keys if k.startswith(prefix)})

    assert tops("visible_module.visible.") == sorted(specific)
    assert tops("thermal_module.thermal.") == sorted(specific)
    assert tops("base_resnet.base.") == sorted(shared)
    assert not any(".fc." in k or "conv3" in k for k in keys)  # BasicBlocks: two convs each
    assert any(k.endswith("layer4.1.conv2.weight") for k in keys)


def test_resnet18_last_stride_one_and_zero_init_residual():
    m = model_mine.embed_net(3, arch="resnet18").eval()
    with torch.no_grad():
        x = m.backbone(images(1, 288, 144), None, modality="visible")
    assert x.shape == (1, 512, 18, 9)
    bn2 = [mod.bn2.weight for mod in m.modules() if isinstance(mod, torchvision.models.resnet.BasicBlock)]
    assert len(bn2) == 2 + 2 + 6 and all(torch.count_nonzero(w) == 0 for w in bn2)  # two layer1s, layer2..4


@pytest.mark.parametrize("kw,train_shapes,eval_shapes", [
    (dict(pcb="on", num_strips=2, local_feat_dim=16),
     dict(strips=(2, 4, 16), strip_logits=(2, 4, 7), feat=(4, 32)), dict(parts=(4, 32))),
    (dict(pcb="off"), dict(feat=(4, 512), logits=(4, 7)), dict(bn=(4, 512), pool=(4, 512))),
    (dict(head="dgtl", cpool="max"), dict(feat=(4, 512), logits=(4, 7), coarse=(4, 512), coarse_logits=(4, 7)),
     dict(coarse=(4, 512), fine=(4, 512))),
    (dict(head="dgtl", cpool="gem", fuse="cat"),
     dict(feat=(4, 512), logits=(4, 7), coarse=(4, 1024), coarse_logits=(4, 7)), dict(coarse=(4, 1024), fine=(4, 512))),
    (dict(head="dgtl", cpool="no"), dict(feat=(4, 512), logits=(4, 7)), dict(fine=(4, 512))),
])
@pytest.mark.slow
def test_resnet18_outputs_for_each_head(kw, train_shapes, eval_shapes):
    m = model_mine.embed_net(7, arch="resnet18", **kw)
    m.train()
    out = m(images(2, 32, 16), images(2, 32, 16, seed=1))
    if kw.get("pcb") == "on":
        assert m.head.conv_weight.shape == (2, 16, 512)
    assert {k: tuple(t.shape) for k, t in out.items()} == train_shapes
    m.eval()
    with torch.no_grad():
        out = m(images(2, 32, 16), images(2, 32, 16, seed=1))
    assert tuple(out) == m.feature_names  # the reported feature first
    assert {k: tuple(t.shape) for k, t in out.items()} == eval_shapes


@pytest.mark.parametrize("kw", [dict(pcb="on", num_strips=2), dict(head="dgtl", bpool="max", cpool="avg")])
def test_resnet18_checkpoint_round_trip(tmp_path, kw):
    torch.manual_seed(0)
    m = model_mine.embed_net(7, arch="resnet18", share_net=3, **kw).eval()
    path = tmp_path / "r18.pth"
    torch.save({"model": m.state_dict(), "arch": m.config}, path)
    loaded, _ = checkpoints.model_from_checkpoint(str(path))
    assert loaded.config == m.config and loaded.config["arch"] == "resnet18"
    loaded.eval()
    x = images(2, 32, 16, seed=4)
    with torch.no_grad():
        a, b = loaded(x, x, "thermal"), m(x, x, "thermal")
    assert list(a) == list(b) == list(m.feature_names)
    for k in b:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("old", [
    dict(class_num=4, gm_pool="on", share_net=2, pcb="on", local_feat_dim=256, num_strips=6, gem_p=10.0),
    dict(class_num=4, gm_pool="off", share_net=3, pcb="off", local_feat_dim=256, num_strips=6, gem_p=3.0),
])
@pytest.mark.slow
def test_configs_saved_before_arch_and_head_still_build(old):
    m = model_mine.embed_net(**old)
    assert m.config["arch"] == "resnet50" and m.config["head"] == ("strips" if old["pcb"] == "on" else "global")
    assert {k: m.config[k] for k in old} == old
    assert model_mine.embed_net(**m.config).config == m.config


@pytest.mark.slow
def test_pretrained_resnet18_file_loads_and_must_match_the_arch(tmp_path):
    torch.manual_seed(0)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "r18.pth"
    torch.save(sd, path)
    m = model_mine.embed_net(3, arch="resnet18", pretrained=str(path))
    assert torch.equal(m.visible_module.visible.conv1.weight, sd["conv1.weight"])
    assert torch.equal(m.base_resnet.base.layer4[1].bn2.weight, sd["layer4.1.bn2.weight"])
    with pytest.raises(ValueError, match=r"--pretrained: not a torchvision ResNet-50 state dict, as --arch resnet50"):
        model_mine.embed_net(3, arch="resnet50", pretrained=str(path))
    path50 = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path50)
    with pytest.raises(ValueError, match=r"--pretrained: not a torchvision ResNet-18 state dict, as --arch resnet18"):
        model_mine.embed_net(3, arch="resnet18", pretrained=str(path50))


def test_imagenet_resnet18_offline_says_where_to_put_the_weights(monkeypatch):
    def offline(*a, **k):
        raise OSError("network is unreachable")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(OSError, match=r"ImageNet ResNet-18 weights.*resnet18-f37072fd\.pth.*--pretrained PATH"):
        model_mine.embed_net(3, arch="resnet18", pretrained="imagenet")


@pytest.mark.slow
def test_imagenet_weights_are_torchvisions_for_each_arch(monkeypatch):
    urls = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **k: urls.append(url) or
                        {"resnet18-f37072fd.pth": torchvision.models.resnet18,
                         "resnet50-0676ba61.pth": torchvision.models.resnet50}[url.rsplit("/", 1)[1]]().state_dict())
    model_mine.embed_net(3, arch="resnet18", pretrained="imagenet")
    model_mine.embed_net(3, arch="resnet50", pretrained="imagenet")
    assert urls == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url,
                    torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url]


def test_unknown_arch_and_no_local_are_errors():
    with pytest.raises(ValueError, match="--arch must be one of resnet18, resnet50, got resnet34"):
        model_mine.embed_net(3, arch="resnet34")
    with pytest.raises(ValueError, match="--non_local must be 'on' or 'off', got 'yes'"):
        model_mine.embed_net(3, non_local="yes")
