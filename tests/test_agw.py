"""AGW (Ye et al., TPAMI 2021) against literal readings of its reference code
(mangye16/Cross-Modal-Re-ID-baseline: model.py's Non_local and embed_net, loss.py, train.py)."""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import checkpoints
import data_loader
import loss
import model_mine
import settings
import test_mine
import train_mine


def test_the_non_local_block_is_the_reference_computation():
    torch.manual_seed(0)
    block = model_mine.NonLocal(8).eval()
    # one inter-channel (reduc_ratio // reduc_ratio), 1x1 convolutions with bias, the output BN zeroed
    assert [tuple(block.state_dict()[k].shape) for k in ("g.0.weight", "theta.weight", "phi.weight", "W.0.weight")] \
        == [(1, 8, 1, 1), (1, 8, 1, 1), (1, 8, 1, 1), (8, 1, 1, 1)]
    assert all(k in block.state_dict() for k in ("g.0.bias", "theta.bias", "phi.bias", "W.0.bias", "W.1.running_var"))
    x = torch.randn(3, 8, 5, 4)
    assert torch.equal(block(x), x)  # the identity at initialisation
    nn.init.normal_(block.W[1].weight)
    nn.init.normal_(block.W[1].bias)
    # y_i = (1/N) sum_j theta_i phi_j g_j: no softmax, normalised by the N = 20 positions, by loops
    theta, phi, g = (m(x).flatten(1).tolist() for m in (block.theta, block.phi, block.g))
    y = torch.tensor([[sum(theta[b][i] * phi[b][j] * g[b][j] for j in range(20)) / 20 for i in range(20)]
                      for b in range(3)])
    assert torch.allclose(block(x), x + block.W(y.reshape(3, 1, 5, 4)), atol=1e-5)


@pytest.mark.slow
def test_five_blocks_after_the_last_two_of_layer2_and_the_last_three_of_layer3():
    net = model_mine.embed_net(5, arch="resnet50", share_net=1, pcb="off", non_local="on")
    assert net.non_local_at == {"layer2": (2, 3), "layer3": (3, 4, 5)}
    assert [b.W[1].num_features for b in net.NL_2] == [512, 512] and \
        [b.W[1].num_features for b in net.NL_3] == [1024] * 3
    order = []
    for name, m in list(net.base_resnet.base.named_children()):
        for i, block in enumerate(m):
            block.register_forward_hook(lambda *a, n=f"{name}.{i}": order.append(n))
    for name in ("NL_2", "NL_3"):
        for i, block in enumerate(getattr(net, name)):
            block.register_forward_hook(lambda *a, n=f"{name}.{i}": order.append(n))
    net.eval()(torch.zeros(1, 3, 64, 32), torch.zeros(1, 3, 64, 32), "visible")
    assert order == ["layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1", "layer2.2", "NL_2.0", "layer2.3",
                     "NL_2.1", "layer3.0", "layer3.1", "layer3.2", "layer3.3", "NL_3.0", "layer3.4", "NL_3.1",
                     "layer3.5", "NL_3.2", "layer4.0", "layer4.1", "layer4.2"]
    # the reference's layout: three whole ResNet-50s, the five blocks, the BN neck, the classifier
    sd = model_mine.to_dgtl_state_dict(model_mine.embed_net(395, arch="resnet50", share_net=1, pcb="off",
                                                            non_local="on"))
    assert len(sd) == 1025 and sum(not k.endswith("num_batches_tracked") for k in sd) == 860
    with pytest.raises(ValueError, match="--non_local on: the non-local blocks go into layer2 and layer3, which "
                                         "--share_net 3 makes modality-specific"):
        model_mine.embed_net(5, share_net=3, non_local="on")


def test_the_published_setting_is_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = train_mine.get_args_parser().parse_args(["--method", "agw", "--dataset", "sysu", "--data_path", "ROOT"])
    train_mine.init_distributed(args)
    _, name, notes = train_mine.prepare_run(args)
    assert {k: getattr(args, k) for k in ("pcb", "share_net", "non_local", "gm_pool", "gem_p", "label_smooth",
                                          "w_center", "batch_size", "num_pos", "epochs", "eval_start", "eval_every",
                                          "optim", "lr", "backbone_lr_mult", "warmup_epochs", "lr_steps",
                                          "erasing_p", "pad", "img_h", "img_w", "arch")} == dict(
        pcb="off", share_net=1, non_local="on", gm_pool="on", gem_p=3.0, label_smooth="off", w_center=1.0,
        batch_size=8, num_pos=4, epochs=81, eval_start=2, eval_every=2, optim="sgd", lr=0.1, backbone_lr_mult=0.1,
        warmup_epochs=10, lr_steps="20,50", erasing_p=0.0, pad=10, img_h=288, img_w=144, arch="resnet50")
    assert (args.margin, args.num_strips) == (0.3, None) and name.startswith("sysu_agw_pcb-off_share1_p8k4")
    assert not notes
    # the loss: ID (no smoothing) + WRT on the pooled feature, weight 1; the heads at lr, the rest at 0.1 lr
    crit = settings.METHODS["agw"].loss(args)
    assert isinstance(crit.tri, loss.TripletLoss_WRT) and crit.w_center == 1.0 and crit.id_loss.label_smoothing == 0
    model = train_mine.build_model(5, args, "none")
    opt = train_mine.build_optimizer(model, args)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in opt.param_groups[1]["params"]) == ["bottleneck.weight", "classifier.weight"]
    assert any(names[id(p)].startswith("NL_3.") for p in opt.param_groups[0]["params"])  # the blocks at 0.1 lr


def test_a_combination_no_reference_ran_is_said_to_be_ours(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert all(m.reproduction.reference.get("caj_aug") == "off" for name, m in settings.METHODS.items()
               if name != "caj")
    for method, flag, value in (("agw", "--pcb", "on"), ("hctri", "--non_local", "on"), ("hctri", "--caj_aug", "on"),
                                ("dgtl", "--caj_aug", "on")):
        args = train_mine.get_args_parser().parse_args(["--method", method, "--dataset", "sysu", "--data_path",
                                                        "ROOT", flag, value])
        train_mine.init_distributed(args)
        _, _, notes = train_mine.prepare_run(args)
        assert f"note: --method {method} with {flag} {value}: a combination no reference code ran " \
               f"(this project's)" in notes


def reference_checkpoint(tmp_path):
    """A checkpoint as the AGW code writes it ({'net', 'cmc', 'mAP', 'mINP', 'epoch'}, three whole ResNets)."""
    torch.manual_seed(0)
    model = model_mine.embed_net(6, arch="resnet50", share_net=1, pcb="off", non_local="on")
    for block in list(model.NL_2) + list(model.NL_3):  # trained blocks are no identities
        nn.init.normal_(block.W[1].weight, std=0.1)
    path = tmp_path / "sysu_agw_p4_n8_lr_0.1_seed_0_best.t"
    torch.save({"net": model_mine.to_dgtl_state_dict(model), "cmc": np.zeros(20, np.float32),
                "mAP": np.float64(0.5), "mINP": np.float64(0.3), "epoch": 26}, path)
    return model.eval(), str(path)


@pytest.mark.slow
def test_a_reference_checkpoint_evaluates_as_it_is_and_another_method_is_named(tmp_path):
    model, path = reference_checkpoint(tmp_path)
    args = test_mine.get_args_parser().parse_args(["--method", "agw", "--dataset", "sysu", "--data_path", "ROOT"])
    checkpoints.resolve_model_flags(args, skip=("img_w", "img_h", "trial"), log=lambda *a: None)
    loaded, _ = checkpoints.model_from_checkpoint(path, args, args.explicit)
    x = torch.randn(2, 3, 64, 32)
    want, got = model.features(x, "thermal"), loaded.eval().features(x, "thermal")
    assert list(got) == ["bn", "pool"] and all(torch.equal(want[k], got[k]) for k in want)
    # and back: our model in the reference's layout, then loaded again, is the same network
    assert model_mine.to_dgtl_state_dict(loaded).keys() == torch.load(path, weights_only=False)["net"].keys()
    for method in ("hctri", "wrt"):
        args = test_mine.get_args_parser().parse_args(["--method", method, "--dataset", "sysu", "--data_path", "R"])
        checkpoints.resolve_model_flags(args, skip=("img_w", "img_h", "trial"), log=lambda *a: None)
        with pytest.raises(ValueError, match=rf"looks like one of --method agw .*not of --method {method}: pass "
                                             r"--method agw"):
            checkpoints.model_from_checkpoint(path, args, args.explicit)
    assert os.path.exists(path)


def train(data, out, *extra):
    train_mine.main(train_mine.get_args_parser().parse_args([
        "--dataset", "demo", "--method", "agw", "--data_path", data, "--img_h", "32", "--img_w", "16",
        "--batch-size", "2", "--num_pos", "2", "--steps_per_epoch", "2", "--workers", "0", "--gpu", "cpu",
        "--amp", "off", "--eval_start", "0", "--eval_every", "1", "--epochs", "2", "--log_path", "",
        "--model_path", os.path.join(out, "models"), *extra]))
    folder = os.path.join(out, "models")
    return os.path.join(folder, next(p for p in sorted(os.listdir(folder)) if p.endswith("_last.pth")))


@pytest.mark.slow
def test_a_short_demo_run_trains_resumes_exactly_and_is_evaluated(tiny_regdb, tmp_path):
    whole = torch.load(train(tiny_regdb, str(tmp_path / "whole")), weights_only=False)
    assert whole["network"]["non_local"] == "on" and whole["network"]["share_net"] == 1 and whole["epoch"] == 1
    first = train(tiny_regdb, str(tmp_path / "split"), "--epochs", "1")
    train_mine.main(train_mine.get_args_parser().parse_args(["--resume", first, "--epochs", "2", "--gpu", "cpu",
                                                             "--log_path", ""]))
    resumed = torch.load(first, weights_only=False)
    assert resumed["epoch"] == 1 and all(torch.equal(resumed["model"][k], v) for k, v in whole["model"].items())
    results = test_mine.main(test_mine.get_args_parser().parse_args([
        "--dataset", "demo", "--data_path", tiny_regdb, "--resume", first, "--trials", "1", "--gpu", "cpu",
        "--workers", "0", "--log_path", ""]))
    entry = results["visible->thermal"]
    assert entry["features"] == ["bn", "pool"] and entry["model"]["non_local"] == "on"
    assert entry["mean"]["rank1"] == pytest.approx(resumed["metrics"]["rank1"])


def test_wrt_by_hand_with_its_negative_weights_quirk():
    # identities {0, 1} at 0 and 30 on a line: the negatives' weights are exp(-d) / (sum exp(-d) + 1e-6)
    # with no shift by the row's maximum (it is 0), so at d = 30 they sum to ~1e-7 and D- collapses
    feats, labels = torch.tensor([[0.0], [0.0], [30.0], [30.0]]), torch.tensor([0, 0, 1, 1])
    got, correct = loss.TripletLoss_WRT()(feats, labels)
    d_pos = 1e-6  # both positives (itself included) at sqrt(1e-12)
    w_neg = np.exp(-30.0) / (2 * np.exp(-30.0) + 1e-6)
    d_neg = 2 * w_neg * 30.0
    assert d_neg < 1e-5 and got.item() == pytest.approx(np.log1p(np.exp(d_pos - d_neg)), rel=1e-5)
    assert int(correct) == 4  # D- >= D+ still, barely


def test_an_epoch_has_the_references_number_of_steps():
    # AGW's and CAJ's sampler draws N // (P*K) + 1 batches and their loop runs them all: RegDB's 2,060
    # visible images at P=8, K=4 give 65 steps, SYSU-MM01's 22,258 give 696; the paper's method keeps 64
    for n, want in ((2060, 65), (22258, 696)):
        labels = np.arange(n) % 206
        for method in ("agw", "caj"):
            sampler = data_loader.IdentitySampler(labels, labels, 4, 8,
                                                  extra_batch=settings.METHODS[method].reproduction.extra_batch)
            assert len(sampler) == want and len(list(sampler)) == want
    assert len(data_loader.IdentitySampler(np.arange(2060) % 206, np.arange(2060) % 206, 4, 8)) == 64
