"""DGTL through the scripts: the published settings by default, a demo run that checkpoints and resumes
exactly, and test_mine.py on checkpoints of this project and of the reference code (both features)."""
import json
import os

import pytest
import torch

import model_mine
import test_mine
import train_mine
import utils


def prepared(monkeypatch, tmp_path, *flags):
    monkeypatch.chdir(tmp_path)
    args = train_mine.get_args_parser().parse_args(["--method", "dgtl", *flags])
    train_mine.init_distributed(args)
    train_mine.prepare_run(args)
    return args


PUBLISHED = ("bpool", "cpool", "fuse", "hcloss", "margin", "margin_hc", "batch_size", "num_pos", "epochs",
             "label_smooth", "optim", "lr", "backbone_lr_mult", "warmup_epochs", "lr_steps", "eval_start",
             "eval_every", "pcb", "share_net", "img_h", "img_w", "pad", "pretrained")


def test_published_settings_are_the_defaults(monkeypatch, tmp_path):
    # hijune6/DGTL-for-VT-ReID, README's commands: RegDB --bpool max --cpool max --hcloss HcTri;
    # SYSU --bpool avg --cpool max --margin_hc 0.5
    regdb = prepared(monkeypatch, tmp_path, "--dataset", "regdb", "--data_path", "ROOT", "--trial", "1")
    assert {k: getattr(regdb, k) for k in PUBLISHED} == dict(
        bpool="max", cpool="max", fuse="sum", hcloss="HcTri", margin=0.3, margin_hc=0.0, batch_size=8, num_pos=4,
        epochs=31, label_smooth="off", optim="sgd", lr=0.1, backbone_lr_mult=0.1, warmup_epochs=10,
        lr_steps="20,50", eval_start=5, eval_every=5, pcb="off", share_net=2, img_h=288, img_w=144, pad=10,
        pretrained="imagenet")
    sysu = prepared(monkeypatch, tmp_path, "--dataset", "sysu", "--data_path", "ROOT")
    assert {k: getattr(sysu, k) for k in PUBLISHED} == dict(
        bpool="avg", cpool="max", fuse="sum", hcloss="HcTri", margin=0.3, margin_hc=0.5, batch_size=6, num_pos=8,
        epochs=61, label_smooth="off", optim="sgd", lr=0.1, backbone_lr_mult=0.1, warmup_epochs=10,
        lr_steps="20,50", eval_start=5, eval_every=5, pcb="off", share_net=2, img_h=288, img_w=144, pad=10,
        pretrained="imagenet")
    # the HcTri paper's flags are not DGTL's: left out, they are not set either
    assert (sysu.w_center, sysu.num_strips, sysu.local_feat_dim, sysu.gm_pool) == (None, None, None, None)
    # a flag given explicitly wins
    assert prepared(monkeypatch, tmp_path, "--dataset", "sysu", "--data_path", "ROOT", "--cpool", "gem",
                    "--margin_hc", "0").margin_hc == 0.0


def run(data_path, out, *extra):
    args = train_mine.get_args_parser().parse_args([
        "--method", "dgtl", "--dataset", "demo", "--data_path", data_path, "--img_h", "32", "--img_w", "16",
        "--batch-size", "2", "--num_pos", "2", "--steps_per_epoch", "2", "--workers", "0", "--gpu", "cpu",
        "--amp", "off", "--eval_start", "1", "--eval_every", "1", "--seed", "2", "--optim", "sgd",
        "--model_path", os.path.join(out, "models"), "--log_path", os.path.join(out, "log"), *extra])
    best = train_mine.main(args)
    return args, best


@pytest.mark.slow
def test_two_epochs_write_checkpoints_and_resume_is_exact(tiny_regdb, tmp_path):
    full, _ = run(tiny_regdb, str(tmp_path / "full"), "--epochs", "3")
    name = train_mine.run_name(full)
    last = torch.load(tmp_path / "full" / "models" / f"{name}_last.pth", weights_only=False)
    assert last["network"]["head"] == "dgtl" and last["epoch"] == 2
    best = torch.load(tmp_path / "full" / "models" / f"{name}_best.pth", weights_only=False)
    assert best["best"]["epoch"] == best["epoch"] and best["network"] == last["network"]
    log = open(tmp_path / "full" / "log" / f"{name}.log").read()
    assert "epoch 1 eval coarse: Rank-1" in log and "epoch 1 eval fine: Rank-1" in log
    cut, _ = run(tiny_regdb, str(tmp_path / "cut"), "--epochs", "2")
    path = tmp_path / "cut" / "models" / f"{train_mine.run_name(cut)}_last.pth"
    train_mine.main(train_mine.get_args_parser().parse_args(["--resume", str(path), "--epochs", "3", "--gpu", "cpu",
                                                             "--log_path", ""]))
    end = torch.load(path, weights_only=False)
    assert end["epoch"] == 2
    for k, v in last["model"].items():
        assert torch.equal(v, end["model"][k]), k


def kept(evaluations, tiny_regdb, tmp_path, monkeypatch):
    """The best record of a 3-epoch run whose evaluations give these ((coarse rank1, mAP), (fine rank1, mAP))."""
    results = iter([{"coarse": ([c] * 20, cm, cm), "fine": ([f] * 20, fm, fm)} for (c, cm), (f, fm) in evaluations])
    monkeypatch.setattr(train_mine, "evaluate", lambda *a: next(results))
    return run(tiny_regdb, str(tmp_path), "--epochs", "3", "--eval_start", "0")[1]


@pytest.mark.slow
def test_the_kept_checkpoint_is_selected_on_the_coarse_feature(tiny_regdb, tmp_path, monkeypatch):
    best = kept([((0.2, 0.1), (0.9, 0.9)), ((0.5, 0.2), (0.1, 0.1)), ((0.3, 0.3), (0.95, 0.9))],
                tiny_regdb, tmp_path, monkeypatch)
    assert best["epoch"] == 1 and best["rank1"] == pytest.approx(50.0)


@pytest.mark.slow
def test_a_tie_keeps_the_later_epoch_as_the_reference_does(tiny_regdb, tmp_path, monkeypatch):
    # hijune6/DGTL-for-VT-ReID, train.py: the reference saves whenever the coarse Rank-1 is >= the best so far
    best = kept([((0.5, 0.1), (0.9, 0.9)), ((0.5, 0.2), (0.1, 0.1)), ((0.4, 0.3), (0.95, 0.9))],
                tiny_regdb, tmp_path, monkeypatch)
    assert best["epoch"] == 1 and best["mAP"] == pytest.approx(20.0)


def test_the_optimiser_has_the_reference_groups_and_rates(monkeypatch, tmp_path):
    # hijune6/DGTL-for-VT-ReID, train.py: SGD, Nesterov, momentum 0.9, weight decay 5e-4; the heads (BN1, W1, W2, the
    # coarse layer's BN2) at lr, everything else at 0.1 lr; frozen BN biases are not optimised
    args = prepared(monkeypatch, tmp_path, "--dataset", "sysu", "--data_path", "ROOT")
    model = train_mine.build_model(5, args, "none")
    opt = train_mine.build_optimizer(model, args)
    names = {id(p): n for n, p in model.named_parameters()}
    head = sorted(names[id(p)] for p in opt.param_groups[1]["params"])
    assert head == sorted(["bottleneck.weight", "classifier.weight", "classifier_att.weight",
                           "cpool_layer.bottleneck.weight"])
    backbone = {names[id(p)] for p in opt.param_groups[0]["params"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert backbone == trainable - set(head) and all(n.startswith(("visible", "thermal", "base")) for n in backbone)
    assert "bottleneck.bias" not in trainable and "cpool_layer.bottleneck.bias" not in trainable
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 5e-4
    for epoch, rate in {0: 0.01, 9: 0.1, 19: 0.1, 20: 0.01, 50: 0.001}.items():
        train_mine.adjust_learning_rate(opt, epoch, args.lr, **train_mine.schedule(args))
        assert opt.param_groups[1]["lr"] == pytest.approx(rate)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * rate)


def evaluate(data_path, ckpt, out, *flags):
    return test_mine.main(test_mine.get_args_parser().parse_args([
        "--dataset", "regdb", "--data_path", data_path, "--resume", ckpt, "--trials", "1", "--gpu", "cpu",
        "--workers", "1", "--json", str(out), "--log_path", "", *flags]))


@pytest.mark.slow
def test_mine_reports_the_coarse_feature_and_stores_the_fine_one(tiny_regdb, tmp_path, capsys):
    torch.manual_seed(0)
    model = model_mine.embed_net(4, head="dgtl", bpool="avg", cpool="max")
    ours = str(tmp_path / "ours.pth")
    utils.atomic_save({"model": model.state_dict(), "arch": model.config, "args": {"img_w": 16, "img_h": 32}}, ours)
    results = evaluate(tiny_regdb, ours, tmp_path / "ours.json", "--tvsearch", "both")
    out = capsys.readouterr().out
    assert "visible->thermal, coarse feature, trial 1: Rank-1" in out.splitlines()[0]
    saved = json.load(open(tmp_path / "ours.json"))
    for setting in ("visible->thermal", "thermal->visible"):
        assert set(saved[setting]) >= {"trials", "mean", "std", "fine"}
        assert set(saved[setting]["fine"]) == {"trials", "mean", "std"}
        assert results[setting]["mean"] != results[setting]["fine"]["mean"]

    # the same weights in the reference code's layout ({'net': ...}, three whole ResNets) give the same figures
    reference = str(tmp_path / "reference.pth")
    torch.save({"net": model_mine.to_dgtl_state_dict(model), "mAP": 0.0, "epoch": 3}, reference)
    again = evaluate(tiny_regdb, reference, tmp_path / "ref.json", "--tvsearch", "both", "--method", "dgtl",
                     "--bpool", "avg", "--cpool", "max", "--img_h", "32", "--img_w", "16")
    for setting in ("visible->thermal", "thermal->visible"):
        assert again[setting]["mean"] == pytest.approx(results[setting]["mean"])
        assert again[setting]["fine"]["mean"] == pytest.approx(results[setting]["fine"]["mean"])
    # ... and a reference file whose head does not fit the flags names the offending keys
    with pytest.raises(ValueError, match="classifier_att"):
        evaluate(tiny_regdb, reference, tmp_path / "x.json", "--method", "dgtl", "--cpool", "no",
                 "--img_h", "32", "--img_w", "16")


@pytest.mark.slow
def test_flags_that_contradict_our_checkpoint_are_errors(tiny_regdb, tmp_path):
    model = model_mine.embed_net(4, head="dgtl", bpool="max", cpool="max")
    path = str(tmp_path / "ours.pth")
    utils.atomic_save({"model": model.state_dict(), "arch": model.config, "args": {"img_w": 16, "img_h": 32}}, path)
    with pytest.raises(ValueError, match=r"records its architecture, which differs from --bpool avg \(the file: max\)"):
        evaluate(tiny_regdb, path, tmp_path / "x.json", "--bpool", "avg")
    evaluate(tiny_regdb, path, tmp_path / "y.json", "--bpool", "max", "--method", "dgtl")  # agreeing flags are fine
