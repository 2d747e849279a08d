import copy
import os

import numpy as np
import pytest
import torch

import data_loader
import loss as losses
import model_mine
import test_mine
import train_mine
import settings
import utils


def tiny_args(data_path, out, *extra):
    return train_mine.get_args_parser().parse_args([
        "--dataset", "demo", "--data_path", data_path, "--img_h", "32", "--img_w", "16", "--num_strips", "2",
        "--local_feat_dim", "16", "--batch-size", "2", "--num_pos", "2", "--steps_per_epoch", "2",
        "--workers", "0", "--gpu", "cpu", "--model_path", os.path.join(out, "models"),
        "--log_path", os.path.join(out, "log"), "--eval_start", "100", "--seed", "3", "--optim", "sgd",
        "--amp", "off", *extra])


def resolved(*flags):
    """train_mine.py's settings of these flags (SYSU-MM01's defaults), resolved as train_mine resolves them."""
    args = train_mine.get_args_parser().parse_args(["--data_path", "unused", *flags])
    args.world_size = 1
    return settings.resolve_training(args, explicit=set())


def test_learning_rate_schedule_and_groups():
    model = model_mine.embed_net(5, share_net=2, pcb="on")
    opt = train_mine.build_optimizer(model, resolved("--lr", "0.1"))
    head = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == head
    assert len(opt.param_groups[0]["params"]) + len(head) == len(list(model.parameters()))
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 5e-4
    expected = {0: 0.01, 9: 0.1, 10: 0.1, 19: 0.1, 20: 0.01, 49: 0.01, 50: 0.001, 60: 0.001}
    for epoch, lr in expected.items():
        train_mine.adjust_learning_rate(opt, epoch, 0.1)
        assert opt.param_groups[1]["lr"] == pytest.approx(lr)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * lr)


def test_global_head_groups():
    model = model_mine.embed_net(5, pcb="off")
    opt = train_mine.build_optimizer(model, resolved("--lr", "0.1", "--optim", "adam", "--pcb", "off"))
    assert isinstance(opt, torch.optim.Adam)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in opt.param_groups[1]["params"]) == ["bottleneck.weight", "classifier.weight"]


def test_sampler_layout_and_balance():
    labels_v = np.repeat(np.arange(10), 7)
    labels_t = np.repeat(np.arange(10), 3)
    s = data_loader.IdentitySampler(labels_v, labels_t, num_pos=4, batch_size=5, seed=1)
    assert len(s) == 70 // 20
    seen = set()
    for idx_v, idx_t in s:
        assert idx_v.shape == idx_t.shape == (20,)
        lv, lt = labels_v[idx_v].reshape(5, 4), labels_t[idx_t].reshape(5, 4)
        assert (lv == lv[:, :1]).all() and np.array_equal(lv, lt)  # identity-contiguous, same order
        assert len(set(lv[:, 0])) == 5  # P distinct identities
        seen |= set(lv[:, 0])
    assert len(seen) > 5
    # deterministic per (seed, epoch), different across epochs
    a = [x.tolist() for x, _ in s]
    assert a == [x.tolist() for x, _ in s]
    s.set_epoch(1)
    assert a != [x.tolist() for x, _ in s]


def test_sampler_rejects_more_identities_than_exist():
    with pytest.raises(ValueError, match="--batch-size 6 identities per batch.*only 5"):
        data_loader.IdentitySampler(np.arange(5), np.arange(5), 2, 6)


def test_published_defaults():
    args = train_mine.get_args_parser().parse_args(["--dataset", "sysu", "--data_path", "x"])
    settings.fill_defaults(args)
    assert (args.batch_size, args.num_pos, args.w_center, args.label_smooth, args.gem_p) == (6, 8, 1.0, "off", 3.0)
    assert (args.epochs, args.img_h, args.img_w, args.pretrained, args.share_net, args.pcb) == \
        (61, 288, 144, "imagenet", 2, "on")
    args = train_mine.get_args_parser().parse_args(["--dataset", "regdb", "--data_path", "x", "--trial", "3"])
    settings.fill_defaults(args)
    assert (args.batch_size, args.num_pos, args.w_center, args.label_smooth, args.gem_p, args.trial) == \
        (8, 4, 2.0, "on", 10.0, 3)
    # the global head pools with p = 3 on every dataset (the authors' code); an explicit --gem_p wins
    for flags, p in (([], 3.0), (["--gem_p", "5"], 5.0)):
        args = train_mine.get_args_parser().parse_args(["--dataset", "regdb", "--data_path", "x", "--pcb", "off"]
                                                       + flags)
        assert settings.fill_defaults(args).gem_p == p
    args = test_mine.get_args_parser().parse_args(["--dataset", "regdb", "--data_path", "x", "--pcb", "off"])
    assert settings.fill_defaults(args).gem_p == 3.0


@pytest.mark.slow
def test_two_epochs_write_checkpoints_and_resume_is_exact(tiny_regdb, tmp_path):
    full = tiny_args(tiny_regdb, str(tmp_path / "full"), "--epochs", "3")
    train_mine.main(full)
    name = train_mine.run_name(full)
    last = torch.load(tmp_path / "full" / "models" / f"{name}_last.pth", weights_only=False)
    assert last["epoch"] == 2 and (tmp_path / "full" / "models" / f"{name}_best.pth").exists()
    assert os.path.exists(tmp_path / "full" / "log" / f"{name}.log")

    first = tiny_args(tiny_regdb, str(tmp_path / "cut"), "--epochs", "2")
    train_mine.main(first)
    cut = train_mine.run_name(first)
    assert cut != name  # --epochs is part of the experiment
    ckpt_path = tmp_path / "cut" / "models" / f"{cut}_last.pth"
    assert torch.load(ckpt_path, weights_only=False)["epoch"] == 1
    # the resumed run continues the run it resumes: same files, flags from the checkpoint but --epochs
    resumed = train_mine.get_args_parser().parse_args(["--resume", str(ckpt_path), "--epochs", "3",
                                                       "--gpu", "cpu", "--log_path", str(tmp_path / "cut" / "log")])
    train_mine.main(resumed)
    assert sorted(os.listdir(tmp_path / "cut" / "models")) == [f"{cut}_best.pth", f"{cut}_last.pth"]
    end = torch.load(ckpt_path, weights_only=False)
    assert end["epoch"] == 2 and end["args"]["epochs"] == 3 and end["args"]["steps_per_epoch"] == 2
    assert end["args"]["data_path"] == tiny_regdb
    for k, v in last["model"].items():
        assert torch.equal(v, end["model"][k]), k
    log = open(tmp_path / "cut" / "log" / f"{cut}.log").read()
    assert "resume: --epochs 3 as given (the checkpoint's run had 2)" in log


def test_missing_sysu_npy_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_rgb_resized_img.npy.*pre_process_sysu.py"):
        data_loader.sysu_train_data(str(tmp_path))


def test_strips_not_dividing_the_height_is_a_clear_error(tiny_regdb, tmp_path):
    args = tiny_args(tiny_regdb, str(tmp_path), "--epochs", "1", "--img_h", "48")
    with pytest.raises(ValueError, match="--img_h 48.*multiple of 32"):
        train_mine.main(args)


def test_too_many_identities_per_batch_is_a_clear_error(tiny_regdb, tmp_path):
    args = tiny_args(tiny_regdb, str(tmp_path), "--epochs", "1", "--batch-size", "50")
    with pytest.raises(ValueError, match="--batch-size 50"):
        train_mine.main(args)


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_and_step(tiny_regdb, tmp_path):
    args = tiny_args(tiny_regdb, str(tmp_path), "--epochs", "1", "--lr", "1e30", "--print_freq", "1")
    with pytest.raises(FloatingPointError, match=r"non-finite loss at epoch 0, step \d"):
        train_mine.main(args)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # mkldnn.flags' own note
def test_bf16_autocast_tracks_fp32():
    """The mixed-precision forward (bf16 autocast; on the CPU here) against fp32 on the same weights
    and images, with the demo's network at its image size (settings.DEMO_SETTING): the embeddings agree
    and the training losses stay finite (GeM, the heads and the losses run in float32 either way), with
    RegDB's GeM power p = 10. Training-mode features are not compared:
    with random weights all samples pool to nearly the same vector, and the head's batch norm
    divides by a spread that is rounding noise."""
    demo = settings.DEMO_SETTING
    torch.manual_seed(0)
    model = model_mine.embed_net(8, arch=demo["arch"], num_strips=demo["num_strips"], gem_p=10.0)
    v, t = (torch.randn(16, 3, demo["img_h"], demo["img_w"]) for _ in range(2))
    labels = torch.arange(4).repeat_interleave(4).repeat(2)
    crit = losses.ReIDLoss(losses.CenterTripletLoss(margin=0.3), w_center=2.0, label_smooth="on")
    emb = {}
    # oneDNN's AMX bf16 kernels gave NaN on Xeons (README): off, the test means the same on every CPU
    with torch.backends.mkldnn.flags(enabled=False):
        for amp in (False, True):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                emb[amp] = torch.nn.functional.normalize(model.eval()(v, t)["parts"], dim=1)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = copy.deepcopy(model).train()(v, t)
            total, terms = crit(out, labels)
            assert all(np.isfinite(x.item()) for x in (total, *terms.values()))
    assert emb[True].dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(emb[False], emb[True], dim=1).min() > 0.99


class Stop(Exception):
    pass


def first_lines(args, monkeypatch, capsys):
    """What a run logs before it touches any data (nothing trains: the check must not depend on
    this CPU's bf16 kernels, which on AMX were seen to give NaN)."""
    def stop(*a):
        raise Stop
    monkeypatch.setattr(train_mine, "build_train_data", stop)
    with pytest.raises(Stop):
        train_mine.main(args)
    return capsys.readouterr().out


def test_amp_auto_is_full_precision_on_cpus_and_bf16_on_amx_warns(tiny_regdb, tmp_path, monkeypatch, capsys):
    cpu = torch.device("cpu")
    assert train_mine.amp_dtype("auto", cpu) is None  # whatever the CPU: bf16 only when asked
    assert train_mine.amp_dtype("off", cpu) is None
    assert train_mine.amp_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="--amp"):
        train_mine.amp_dtype("fp8", cpu)
    monkeypatch.setattr(utils, "cpu_has_amx", lambda: True)
    out = first_lines(tiny_args(tiny_regdb, str(tmp_path / "a"), "--amp", "bf16"), monkeypatch, capsys)
    assert "--amp bf16 (bfloat16)" in out.splitlines()[0]
    assert "warning: bf16 on a CPU with AMX" in out
    out = first_lines(tiny_args(tiny_regdb, str(tmp_path / "b"), "--amp", "auto"), monkeypatch, capsys)
    assert "--amp auto (off (float32))" in out.splitlines()[0] and "AMX" not in out
