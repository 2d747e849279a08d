"""Faults and bad input as a new user meets them: every case gets a clear one-line error naming the flag
or file and the way out, before any work, and a run never destroys another run's files."""
import argparse
import os
import shlex

import pytest
import torch

import settings
import test_mine
import train_mine
import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TINY = ["--dataset", "demo", "--img_h", "32", "--img_w", "16", "--num_strips", "2", "--local_feat_dim", "16",
        "--batch-size", "2", "--num_pos", "2", "--steps_per_epoch", "1", "--workers", "0", "--gpu", "cpu",
        "--amp", "off", "--eval_start", "100", "--optim", "sgd", "--epochs", "1"]


def train_args(data_path, out, *extra):
    return train_mine.get_args_parser().parse_args(TINY + [
        "--data_path", data_path, "--model_path", os.path.join(out, "models"), "--log_path", os.path.join(out, "log"),
        *extra])


def run_name(tmp_path, *flags):
    """The name train_mine.prepare_run gives a fresh run of these flags (nothing is trained)."""
    args = train_mine.get_args_parser().parse_args(["--dataset", "demo", "--data_path", "data/demo",
                                                    "--model_path", str(tmp_path), "--log_path", "", *flags])
    train_mine.init_distributed(args)
    return train_mine.prepare_run(args)[1]


DGTL = ("--method", "dgtl")
SYSU = ("--dataset", "sysu")
# for every experiment flag: (the flags of a base run it applies to, the flag with another value)
CHANGES = {
    "dataset": ((), ("--dataset", "regdb")), "data_path": ((), ("--data_path", "elsewhere")),
    "trial": ((), ("--trial", "2")), "mode": (SYSU, ("--mode", "indoor")), "img_w": ((), ("--img_w", "24")),
    "img_h": ((), ("--img_h", "192")), "pad": ((), ("--pad", "5")), "erasing_p": ((), ("--erasing_p", "0.5")),
    "channel_aug": ((), ("--channel_aug", "0.5")), "cpu_aug": ((), ("--cpu_aug",)),
    "arch": ((), ("--arch", "resnet50")), "share_net": ((), ("--share_net", "3")), "pcb": ((), ("--pcb", "off")),
    "local_feat_dim": ((), ("--local_feat_dim", "128")), "num_strips": ((), ("--num_strips", "2")),
    "gm_pool": ((), ("--gm_pool", "off")), "gem_p": ((), ("--gem_p", "5")),
    "pretrained": ((), ("--pretrained", "imagenet")), "bpool": (DGTL, ("--bpool", "avg")),
    "cpool": (DGTL, ("--cpool", "avg")), "fuse": (DGTL, ("--fuse", "cat")),
    "method": ((), ("--method", "batch-hard")), "margin": ((), ("--margin", "0.5")),
    "w_center": ((), ("--w_center", "2")), "label_smooth": ((), ("--label_smooth", "on")),
    "hcloss": (DGTL, ("--hcloss", "OriTri")), "margin_hc": (DGTL, ("--margin_hc", "0.2")),
    "optim": ((), ("--optim", "sgd")), "lr": ((), ("--lr", "0.01")), "weight_decay": ((), ("--weight_decay", "0.001")),
    "backbone_lr_mult": ((), ("--backbone_lr_mult", "0.5")), "warmup_epochs": ((), ("--warmup_epochs", "3")),
    "lr_steps": ((), ("--lr_steps", "8")), "epochs": ((), ("--epochs", "30")),
    "batch_size": ((), ("--batch-size", "4")), "num_pos": ((), ("--num_pos", "2")),
    "steps_per_epoch": ((), ("--steps_per_epoch", "5")), "seed": ((), ("--seed", "1")),
    "eval_start": ((), ("--eval_start", "3")), "eval_every": ((), ("--eval_every", "3")),
    "amp": ((), ("--amp", "bf16")), "non_local": ((), ("--non_local", "on")),
    "caj_aug": ((), ("--caj_aug", "on")),
    # each method's own flags (Method.own_flags), under that method
    **{f.name: (("--method", name), (f"--{f.name}", "0.5")) for name, m in settings.METHODS.items()
       for f in m.own_flags},
}


# 1. checkpoints are never silently overwritten

def test_every_experiment_flag_is_covered():
    assert set(CHANGES) == set(settings.experiment_flags())


@pytest.mark.parametrize("flag", sorted(CHANGES))
def test_every_experiment_flag_changes_the_run_name(flag, tmp_path):
    base, change = CHANGES[flag]
    name = run_name(tmp_path, *base)
    assert run_name(tmp_path, *base, *change) != name
    assert run_name(tmp_path, *base) == name  # and the same settings give the same name


@pytest.mark.slow
def test_a_fresh_run_over_an_existing_run_is_refused_and_nothing_is_touched(tiny_regdb, tmp_path):
    train_mine.main(train_args(tiny_regdb, str(tmp_path)))
    models = tmp_path / "models"
    before = {f: (models / f).read_bytes() for f in os.listdir(models)}
    with pytest.raises(ValueError, match=r"already holds a run with these settings: continue it with --resume "
                                         r".*_last.pth, or write elsewhere with --model_path"):
        train_mine.main(train_args(tiny_regdb, str(tmp_path)))
    assert {f: (models / f).read_bytes() for f in os.listdir(models)} == before
    # another experiment in the same folder is a different run
    train_mine.main(train_args(tiny_regdb, str(tmp_path), "--margin", "0.4"))
    assert len(os.listdir(models)) == 4


@pytest.mark.slow
def test_one_trial_template_reaches_every_split_of_a_regdb_experiment(tiny_regdb, tmp_path):
    # the split is in the readable name, not in the hash: the README's template works as written
    names = [train_mine.main(train_args(tiny_regdb, str(tmp_path), "--trial", str(t))) and
             next((tmp_path / "models").glob(f"demo_trial{t}_*_best.pth")).name for t in (1, 2)]
    assert names[0].replace("trial1", "trial2") == names[1]
    template = str(tmp_path / "models" / names[0].replace("trial1", "trial{trial}"))
    results = test_mine.main(test_mine.get_args_parser().parse_args([
        "--dataset", "demo", "--data_path", tiny_regdb, "--resume", template, "--trials", "1-2", "--gpu", "cpu",
        "--log_path", ""]))
    assert [t["trial"] for t in results["visible->thermal"]["trials"]] == [1, 2]


# 2. a resumed run continues its run; architecture flags cannot change under it

@pytest.mark.slow
def test_resume_refuses_a_different_architecture_and_a_finished_run(tiny_regdb, tmp_path):
    train_mine.main(train_args(tiny_regdb, str(tmp_path)))
    last = [f for f in os.listdir(tmp_path / "models") if f.endswith("_last.pth")][0]
    path = str(tmp_path / "models" / last)
    with pytest.raises(ValueError, match="--share_net 3: the checkpoint .* was trained with --share_net 2"):
        train_mine.main(train_mine.get_args_parser().parse_args(["--resume", path, "--share_net", "3",
                                                                 "--epochs", "3", "--gpu", "cpu", "--log_path", ""]))
    with pytest.raises(ValueError, match="has finished epoch 0 of --epochs 1; pass a larger --epochs"):
        train_mine.main(train_mine.get_args_parser().parse_args(["--resume", path, "--gpu", "cpu", "--log_path", ""]))


@pytest.mark.slow
def test_resuming_from_an_earlier_best_never_writes_over_the_later_last(tiny_regdb, tmp_path, monkeypatch):
    monkeypatch.setattr(train_mine, "evaluate", lambda *a: {"": ([0.5] * 20, 0.5, 0.5)})
    train_mine.main(train_args(tiny_regdb, str(tmp_path), "--epochs", "2", "--eval_start", "0", "--eval_every", "1",
                               "--steps_per_epoch", "1"))
    models = tmp_path / "models"
    best = str(next(models.glob("*_best.pth")))  # epoch 0 (a tie at epoch 1 keeps the first)
    before = {f.name: f.read_bytes() for f in models.iterdir()}
    with pytest.raises(ValueError, match="would write over .*_last.pth, which holds epoch 1 of the same run"):
        train_mine.main(train_mine.get_args_parser().parse_args(["--resume", best, "--epochs", "3", "--gpu", "cpu",
                                                                 "--log_path", ""]))
    assert {f.name: f.read_bytes() for f in models.iterdir()} == before
    # elsewhere it branches
    train_mine.main(train_mine.get_args_parser().parse_args(["--resume", best, "--epochs", "2", "--gpu", "cpu",
                                                             "--log_path", "", "--model_path", str(tmp_path / "b")]))
    assert torch.load(next((tmp_path / "b").glob("*_last.pth")), weights_only=False)["epoch"] == 1


# 6. bad settings are caught before any work, naming the flag

@pytest.mark.parametrize("flags,message", [
    (["--test-batch", "0"], "--test_batch must be >= 1, got 0"),
    (["--eval_every", "0"], "--eval_every must be >= 1, got 0"),
    (["--lr_steps", "20;50"], "--lr_steps: expected comma-separated epochs"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch_size must be >= 1"),
    (["--erasing_p", "2"], "--erasing_p is a probability"),
    (["--method", "dgtl", "--w_center", "2"], "--w_center.*: not used by --method dgtl"),
    (["--bpool", "max"], "--bpool: not used by --method hctri"),
    (["--pcb", "off"], "--local_feat_dim, --num_strips: not used by --method hctri --pcb off"),
    (["--method", "dgtl", "--cpool", "no", "--hcloss", "OriTri"], "--hcloss: not used by --method dgtl --cpool no"),
    (["--method", "dgtl", "--hcloss", "OriTri", "--margin_hc", "0.5"],
     "--margin_hc: not used by --method dgtl --cpool max --hcloss OriTri"),
    (["--cpu_aug", "--resident_data", "on"], "--cpu_aug runs the per-image transform in the loader's workers"),
    (["--sync_bn"], "--sync_bn synchronises batch norm across the processes of a torchrun launch"),
    (["--mode", "indoor"], "--mode: only SYSU-MM01 has search modes"),
    (["--dataset", "llcm", "--trial", "2"], "--trial: --dataset llcm has one training set"),
    (["--gpu", "0,1"], "--gpu 0,1: one device per process; for several GPUs launch with torchrun"),
    (["--method", "wrt", "--margin", "0.5"], "--margin: not used by --method wrt"),
    (["--method", "agw", "--margin", "0.5"],
     "--margin, --local_feat_dim, --num_strips: not used by --method agw --pcb off"),
    (["--method", "id-only", "--w_center", "2"], "--w_center: not used by --method id-only"),
    (["--method", "dgtl", "--cpool", "no", "--fuse", "sum"], "--fuse: not used by --method dgtl --cpool no"),
    (["--cpu_aug", "--erasing_p", "0.5"], "--erasing_p: not used by .* --cpu_aug"),
])
def test_bad_settings_fail_before_any_work(flags, message, tmp_path):
    data = tmp_path / "never-written"
    args = train_args(str(data), str(tmp_path), *flags)
    with pytest.raises(ValueError, match=message):
        train_mine.main(args)
    assert not data.exists() and not (tmp_path / "log").exists() and not (tmp_path / "models").exists()


@pytest.mark.parametrize("script", [train_mine, test_mine])
@pytest.mark.parametrize("flags", [["--share_net", "7"], ["--method", "dgtl", "--cpool", "wpa"], ["--method", "pcb"],
                                   ["--dataset", "market"], ["--pcb", "yes"], ["--arch", "resnet34"]])
def test_closed_sets_are_the_parsers_choices(script, flags, capsys):
    with pytest.raises(SystemExit) as err:
        script.get_args_parser().parse_args(flags)
    assert err.value.code == 2 and f"argument {flags[-2]}: invalid choice: " in capsys.readouterr().err


def test_a_value_from_elsewhere_is_checked_against_the_same_choices():
    # a namespace built by hand, or a resumed run's checkpoint, never went through the parser
    with pytest.raises(ValueError, match=r"^--share_net must be one of 0, 1, 2, 3, 4, 5, got 7$"):
        settings.check_choices(argparse.Namespace(share_net=7), settings.CHOICES)


def test_the_per_strip_loop_is_refused_without_strips(tmp_path):
    args = train_mine.get_args_parser().parse_args(["--dataset", "demo", "--pcb", "off", "--looped_head",
                                                    "--data_path", str(tmp_path / "never-written"), "--gpu", "cpu",
                                                    "--model_path", str(tmp_path / "models"), "--log_path", ""])
    with pytest.raises(ValueError, match="--looped_head: the per-strip loop exists for the PCB head only"):
        train_mine.main(args)
    assert not (tmp_path / "never-written").exists() and not (tmp_path / "models").exists()


def test_an_unwritable_model_path_fails_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = train_args(str(tmp_path / "never-written"), str(tmp_path))
    args.model_path = str(blocker / "models")
    with pytest.raises(ValueError, match="--model_path .*a-file/models: cannot write there"):
        train_mine.main(args)
    assert not (tmp_path / "never-written").exists()


def test_errors_print_one_line_without_traceback(tmp_path, run_script):
    for argv in (["--dataset", "demo", "--epochs", "0"], ["--dataset", "demo", "--lr_steps", "x"]):
        code, _, err = run_script(os.path.join(ROOT, "train_mine.py"), *argv, "--log_path", "", cwd=tmp_path)
        assert code != 0 and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: --")


def test_a_missing_dataset_creates_nothing_and_a_failed_run_leaves_its_error_in_its_log(tiny_regdb, tmp_path,
                                                                                        capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = train_args(str(empty), str(tmp_path))
    args.dataset = "regdb"
    with pytest.raises(FileNotFoundError, match="RegDB: missing"):
        train_mine.main(args)
    assert not (tmp_path / "log").exists() and not (tmp_path / "models").exists()

    def diverge(*a, **k):
        raise FloatingPointError("non-finite loss at epoch 0, step 0")
    monkeypatch.setattr(train_mine, "train_one_epoch", diverge)
    with pytest.raises(FloatingPointError):
        train_mine.main(train_args(tiny_regdb, str(tmp_path)))
    logs = [n for n in os.listdir(tmp_path / "log") if n.endswith(".log")]  # (and tb/ where tensorboard is installed)
    assert len(logs) == 1 and "error: non-finite loss at epoch 0" in open(tmp_path / "log" / logs[0]).read()
    assert "error:" not in capsys.readouterr().out  # on the screen once: the script's own one line


# 8. tracebacks become one-line errors

def test_a_checkpoint_that_holds_a_tensor_is_a_clear_error(tiny_regdb, tmp_path):
    path = str(tmp_path / "tensor.pth")
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match="not a training checkpoint of this project"):
        train_mine.main(train_mine.get_args_parser().parse_args(["--resume", path, "--log_path", ""]))
    with pytest.raises(ValueError, match="not a checkpoint of this project .* nor of a reference code"):
        test_mine.main(test_mine.get_args_parser().parse_args(["--dataset", "regdb", "--data_path", tiny_regdb,
                                                               "--resume", path, "--gpu", "cpu", "--log_path", ""]))


@pytest.mark.parametrize("text", ["2-1", "a", "-1", ""])
def test_bad_trials_are_clear_errors(text):
    with pytest.raises(ValueError, match="--trials"):
        utils.parse_trials(text)


def test_trials_accept_spaces_commas_and_ranges():
    args = test_mine.get_args_parser().parse_args(["--trials", "0", "1", "2"])
    assert utils.parse_trials(args.trials) == [0, 1, 2]
    assert utils.parse_trials(["0,1,2"]) == utils.parse_trials("0-2") == utils.parse_trials("0 1 2") == [0, 1, 2]
    assert utils.parse_trials(["1-3", "7"]) == [1, 2, 3, 7]


# 9. small ones

@pytest.mark.slow
def test_the_printed_command_is_shell_quoted(tiny_regdb, tmp_path, capsys):
    spaced = tmp_path / "with space"
    args = train_args(tiny_regdb, str(spaced))
    args.workers = None  # left out: the first line shows what it resolved to
    train_mine.main(args)
    out = capsys.readouterr().out
    command = shlex.split(out.split("re-evaluate with: ")[1].splitlines()[0])
    assert os.path.exists(command[command.index("--resume") + 1])
    first = out.splitlines()[0]
    assert first.startswith("settings: ") and "--workers 0" in first and "None" not in first
    assert "--gpu cpu (cpu)" in first and "--amp off (off (float32))" in first and "--compile auto (eager)" in first


def test_query_dir_without_gallery_dir_says_so(tmp_path):
    with pytest.raises(ValueError, match="--query_dir and --gallery_dir go together"):
        test_mine.main(test_mine.get_args_parser().parse_args(["--query_dir", str(tmp_path), "--resume", "x.pth",
                                                               "--gpu", "cpu"]))


def test_a_gpu_that_is_not_there_is_an_error_not_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--gpu 1: this machine has no CUDA device; use --gpu cpu"):
        utils.select_device("1")
    assert utils.select_device(None) == utils.select_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="--gpu must be"):
        utils.select_device("first")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"--gpu 1: only 1 CUDA device\(s\) visible \(0..0\)"):
        utils.select_device("1")
    assert utils.select_device("0") == torch.device("cuda", 0)
