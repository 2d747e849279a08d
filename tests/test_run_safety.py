"""Nothing the user had is lost, and every output is checked before the work: one writer per run,
outputs that are inputs refused, full disks named, temporaries of killed runs removed, a RegDB
checkpoint never tested on its own training identities, and bad numbers refused up front."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

import data_loader
import eval_metrics
import fileio
import test_mine
import train_mine
from test_cli import train_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEAD_PID = 2 ** 22 + 12345  # above the default pid_max: no such process


def digest(folder):
    """{relative path: sha1} of every file under folder."""
    out = {}
    for d, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, folder)] = hashlib.sha1(open(p, "rb").read()).hexdigest()
    return out


def eval_args(data, ckpt, *extra):
    return test_mine.get_args_parser().parse_args(["--dataset", "demo", "--data_path", data, "--resume", ckpt,
                                                   "--gpu", "cpu", "--log_path", "", *extra])


@pytest.fixture(scope="module")
def trained(tiny_regdb, tmp_path_factory):
    """(data, checkpoint) of a one-epoch run on split 1, evaluated once; the data is a copy of its own
    (tests here write into it)."""
    out = str(tmp_path_factory.mktemp("trained"))
    data = shutil.copytree(tiny_regdb, os.path.join(out, "data"))
    train_mine.main(train_args(data, out, "--eval_start", "0"))
    return data, next(os.path.join(out, "models", f) for f in os.listdir(os.path.join(out, "models"))
                            if f.endswith("_best.pth"))


def run_name(args):
    train_mine.init_distributed(args)
    return train_mine.prepare_run(args)[1]


def no_images_read(monkeypatch):
    """Fail the test if any image is read (the refusals below must come before the work)."""
    def refuse(*a, **k):
        raise AssertionError("an image was read before the refusal")
    monkeypatch.setattr(data_loader, "load_images", refuse)


# ----------------------------------------------------------------------------- one run, one writer

@pytest.mark.slow
def test_a_second_process_on_the_same_run_is_refused_naming_the_first(tiny_regdb, tmp_path):
    args = train_args(tiny_regdb, str(tmp_path))
    name = run_name(train_args(tiny_regdb, str(tmp_path)))
    lock = os.path.join(tmp_path, "models", f"{name}.lock")
    os.makedirs(os.path.dirname(lock))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({lock!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\n"
        "print('locked', flush=True)\ntime.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"process {holder.pid} is training run {name} now; wait for it"):
            train_mine.main(args)
        assert os.listdir(tmp_path / "models") == [f"{name}.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # the holder died (as under kill -9): its lock is taken over, said in the log, and released at the end
    train_mine.main(train_args(tiny_regdb, str(tmp_path)))
    log = open(tmp_path / "log" / f"{name}.log").read()
    assert f"took over the lock of run {name} from process {holder.pid}, which is no longer running" in log
    assert sorted(f.rsplit("_", 1)[1] for f in os.listdir(tmp_path / "models")) == ["best.pth", "last.pth"]


def test_flags_outside_the_run_identity_name_the_same_run_so_the_lock_covers_them(tiny_regdb, tmp_path):
    # --gpu, --resident_data, --test-batch and --looped_head change how a run computes, not what it trains
    # (resident and loaded batches are identical; the looped head is the same network): same run, one writer
    base = run_name(train_args(tiny_regdb, str(tmp_path)))
    for extra in (["--resident_data", "off"], ["--test-batch", "7"], ["--looped_head"], ["--print_freq", "3"]):
        assert run_name(train_args(tiny_regdb, str(tmp_path), *extra)) == base
    lock = fileio.RunLock(str(tmp_path), base)
    assert lock.acquire() is None
    try:
        with pytest.raises(ValueError, match=f"process {os.getpid()} is training run"):
            fileio.RunLock(str(tmp_path), base).acquire()
    finally:
        lock.release()
    assert not os.path.exists(lock.path)


@pytest.mark.slow
def test_temporaries_of_killed_runs_are_removed_and_a_live_ones_kept(tiny_regdb, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    dead = f"x_last.pth.tmp-{fileio.temp_tag(DEAD_PID)}"
    kept = [f"y_last.pth.tmp-{fileio.temp_tag()}",  # this process: alive
            f"z_last.pth.tmp-otherhost-{DEAD_PID}",  # another machine writing to a shared folder
            "notes.tmp-draft", "notes.tmp-20240101", f"notes.txt.tmp-{fileio.temp_tag(DEAD_PID)}"]  # not ours
    for name in [dead] + kept:
        (models / name).write_bytes(b"bytes")
    train_mine.main(train_args(tiny_regdb, str(tmp_path)))
    names = os.listdir(models)
    assert dead not in names and all(k in names for k in kept)
    log = open(next((tmp_path / "log").glob("*.log"))).read()
    assert f"removed 1 temporary file(s) of killed runs: {dead}" in log


# ----------------------------------------------------------------------------- outputs

@pytest.mark.slow
def test_json_over_the_checkpoint_being_evaluated_is_refused_and_the_checkpoint_kept(trained, monkeypatch):
    data, ckpt = trained
    before = open(ckpt, "rb").read()
    no_images_read(monkeypatch)
    with pytest.raises(ValueError, match=f"--json {ckpt}: that is the input .* of this run"):
        test_mine.main(eval_args(data, ckpt, "--json", ckpt))
    assert open(ckpt, "rb").read() == before
    listed = os.path.join(data, "idx", "test_visible_1.txt")  # a dataset file is an input too
    before = open(listed, "rb").read()
    with pytest.raises(ValueError, match="an image or list of the data folder"):
        test_mine.main(eval_args(data, ckpt, "--json", listed))
    assert open(listed, "rb").read() == before


@pytest.mark.slow
@pytest.mark.parametrize("case", ["json-dir", "json-under-file", "log-under-file", "vis-is-file", "csv-is-dir"])
def test_unwritable_outputs_are_refused_before_any_image_is_read(case, trained, tmp_path, monkeypatch):
    data, ckpt = trained
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    (tmp_path / "log" / "results.csv").mkdir(parents=True)
    flags, message = {
        "json-dir": (["--json", str(tmp_path)], "--json .*: a folder, not a file"),
        "json-under-file": (["--json", str(blocker / "m.json")], "--json .*a-file/m.json: cannot write there"),
        "log-under-file": (["--log_path", str(blocker / "log")], "--log_path .*: cannot write there .*is a file"),
        "vis-is-file": (["--visualize", "2", "--vis_dir", str(blocker)], "--vis_dir .*a-file: cannot write there"),
        "csv-is-dir": (["--log_path", str(tmp_path / "log")], "--log_path .*results.csv: a folder, not a file"),
    }[case]
    no_images_read(monkeypatch)
    with pytest.raises(ValueError, match=message):
        test_mine.main(eval_args(data, ckpt, *flags))
    assert blocker.read_text() == "mine"


def full_disk(code, limit=4096):
    """Run code in a Python whose files cannot grow past limit bytes (a full disk, as the kernel
    reports it to a writer: EFBIG here, ENOSPC there; both reach the same handler)."""
    prelude = ("import resource, signal, sys\nsys.path.insert(0, %r)\n"
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (%d, %d))\n") % (ROOT, limit, limit)
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_a_full_disk_keeps_the_previous_json_csv_and_checkpoint_and_names_the_file(tmp_path):
    old = {"metrics": list(range(200))}
    target = tmp_path / "m.json"
    target.write_text(json.dumps(old))
    res = full_disk(f"import json, fileio\ntry:\n    fileio.atomic_write({str(target)!r}, lambda f: "
                    f"json.dump({{'x': 'y' * 100000}}, f), binary=False)\nexcept OSError as e:\n    print(e)\n")
    assert res.stdout.strip() == f"cannot write {target}: File too large", res.stderr
    assert json.loads(target.read_text()) == old and os.listdir(tmp_path) == ["m.json"]
    ckpt = tmp_path / "x_last.pth"
    torch.save({"epoch": 3}, ckpt)
    before = ckpt.read_bytes()
    res = full_disk(f"import torch, utils\ntry:\n    utils.atomic_save({{'w': torch.zeros(100000)}}, {str(ckpt)!r})\n"
                    f"except OSError as e:\n    print(e)\n")
    assert res.stdout.strip() == f"cannot write {ckpt}: File too large", res.stderr
    assert ckpt.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["m.json", "x_last.pth"]


@pytest.mark.slow
def test_results_csv_is_appended_whole_or_not_at_all(trained, tmp_path):
    data, ckpt = trained
    log = tmp_path / "log"
    test_mine.main(eval_args(data, ckpt, "--log_path", str(log)))
    first = (log / "results.csv").read_text()
    test_mine.main(eval_args(data, ckpt, "--log_path", str(log)))
    second = (log / "results.csv").read_text()
    assert second.startswith(first) and len(second.splitlines()) == 3 and second.count("time,dataset") == 1
    res = full_disk(f"import test_mine\nargs = test_mine.get_args_parser().parse_args(['--dataset', 'demo', "
                    f"'--data_path', {data!r}, '--resume', {ckpt!r}, '--gpu', 'cpu', '--log_path', {str(log)!r}])\n"
                    f"try:\n    test_mine.main(args)\nexcept OSError as e:\n    print('error:', e)\n",
                    limit=len(second) + 50)
    assert f"error: cannot write {log / 'results.csv'}: File too large" in res.stdout, res.stderr
    assert (log / "results.csv").read_text() == second


# ----------------------------------------------------------------------------- splits

@pytest.mark.slow
def test_a_checkpoint_is_not_tested_on_another_split_unless_asked(trained, tmp_path, monkeypatch):
    data, ckpt = trained
    with pytest.raises(ValueError, match="was trained on split 1 .* testing it on split 2 puts its training "
                                         "identities in the test set: use --trials 1, or pass --cross_split"):
        test_mine.main(eval_args(data, ckpt, "--trial", "2"))
    results = test_mine.main(eval_args(data, ckpt, "--trials", "2", "--cross_split"))
    assert [t["trial"] for t in results["visible->thermal"]["trials"]] == [2]
    with pytest.raises(ValueError, match="--cross_split: not used by --dataset sysu"):
        test_mine.main(test_mine.get_args_parser().parse_args(["--dataset", "sysu", "--data_path", data,
                                                               "--resume", ckpt, "--cross_split", "--gpu", "cpu"]))


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("flags,message", [
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--gem_p", "inf"], "--gem_p must be a finite number, got inf"),
    (["--margin", "nan"], "--margin must be a finite number, got nan"),
    (["--weight_decay", "nan"], "--weight_decay must be a finite number, got nan"),
    (["--seed", "99999999999"], "--seed must be at most 4294967295"),
    (["--batch-size", "1"], "--batch-size 1: the hctri triplet term compares identities and needs at least 2"),
    (["--method", "dgtl", "--batch-size", "1"], "--batch-size 1: the dgtl triplet term"),
])
def test_bad_numbers_are_refused_before_any_work(flags, message, tmp_path):
    data = tmp_path / "never-written"
    with pytest.raises(ValueError, match=message):
        train_mine.main(train_args(str(data), str(tmp_path), *flags))
    assert not data.exists() and not (tmp_path / "log").exists() and not (tmp_path / "models").exists()


@pytest.mark.parametrize("blocker", ["log", "tb"])
def test_a_log_or_tensorboard_path_taken_by_something_else_is_refused_before_any_work(blocker, tmp_path):
    """The run's log file and TensorBoard folder are checked with the other outputs, not when first
    written (after the data and the network are built)."""
    data, log = tmp_path / "never-written", tmp_path / "log"
    name = run_name(train_args(str(data), str(tmp_path / "probe")))
    log.mkdir()
    if blocker == "log":
        (log / f"{name}.log").mkdir()
    else:
        (log / "tb").write_text("mine\n")
    with pytest.raises(ValueError, match=r"--log_path.*(not a file|is a file)"):
        train_mine.main(train_args(str(data), str(tmp_path)))
    assert not data.exists() and not (tmp_path / "models").exists()


@pytest.mark.slow
def test_id_only_trains_with_one_identity_per_batch(tiny_regdb, tmp_path):
    assert train_mine.main(train_args(tiny_regdb, str(tmp_path), "--method", "id-only", "--batch-size", "1"))


@pytest.mark.slow
@pytest.mark.parametrize("flags,message", [
    (["--img_w", "0"], "--img_w must be >= 1, got 0"),
    (["--img_h", "-5"], "--img_h must be >= 1, got -5"),
    (["--trial", "2", "--trials", "1"], "--trial and --trials: give one of them"),
    (["--gem_p", "inf"], "--gem_p must be a finite number > 0, got inf"),
])
def test_test_mine_refuses_values_it_would_ignore_or_misuse(flags, message, trained):
    data, ckpt = trained
    with pytest.raises(ValueError, match=message):
        test_mine.main(eval_args(data, ckpt, *flags))


@pytest.mark.parametrize("case", ["regdb-trial-11", "pretrained", "llcm-npy", "npy-size", "empty-train-list"])
def test_late_data_failures_come_before_any_folder(case, tiny_regdb, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    if case == "pretrained":  # a demo set there already: not the first use's full-size generation
        shutil.copytree(tiny_regdb, data, dirs_exist_ok=True)
    flags, error, message = {
        "regdb-trial-11": (["--dataset", "regdb", "--trial", "11"], ValueError, "--trial 11: RegDB splits are 1..10"),
        "pretrained": (["--pretrained", str(tmp_path / "nope.pth")], FileNotFoundError,
                       "--pretrained: no such file"),
        "llcm-npy": (["--dataset", "llcm"], FileNotFoundError, "run `python pre_process_llcm.py"),
        "npy-size": (["--dataset", "sysu"], ValueError, "holds 8x4 .* images but --img_h 32 --img_w 16"),
        "empty-train-list": (["--dataset", "regdb"], ValueError, "train_thermal_1.txt: no training images listed"),
    }[case]
    if case == "empty-train-list":
        (data / "idx").mkdir()
        (data / "idx" / "train_visible_1.txt").write_text("Visible/1/a.png 0\n")
        (data / "idx" / "train_thermal_1.txt").write_text("\n")
    if case == "npy-size":
        import numpy as np
        for name in train_mine.data_loader.SYSU_NPY:
            np.save(data / name, np.zeros((2, 8, 4, 3), np.uint8) if "img" in name else np.zeros(2, np.int64))
    args = train_args(str(data), str(tmp_path), *flags)
    if case in ("llcm-npy", "npy-size"):
        args.trial = None  # left out: the dataset has no splits
    with pytest.raises(error, match=message):
        train_mine.main(args)
    assert not (tmp_path / "log").exists() and not (tmp_path / "models").exists()


# ----------------------------------------------------------------------------- Ctrl-C

@pytest.mark.slow
def test_ctrl_c_is_one_line_saying_where_and_how_to_resume(tiny_regdb, tmp_path, monkeypatch):
    real = train_mine.train_step

    def interrupt(*a, **k):  # Ctrl-C in the first step of the second epoch
        interrupt.calls += 1
        if interrupt.calls == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    interrupt.calls = 0
    monkeypatch.setattr(train_mine, "train_step", interrupt)
    with pytest.raises(train_mine.Interrupted, match=r"^interrupted at epoch 1, step 0; resume with: python "
                                                     r"train_mine.py --resume .*_last.pth$"):
        train_mine.main(train_args(tiny_regdb, str(tmp_path), "--epochs", "2"))
    assert not list((tmp_path / "models").glob("*.lock"))  # released


@pytest.mark.slow
def test_results_csv_keeps_every_row_of_concurrent_evaluations(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    go = tmp_path / "go"
    code = (f"import os, sys, time, eval_metrics, test_mine\n"
            f"open(os.path.join({str(tmp_path)!r}, 'ready-' + sys.argv[1]), 'w').close()\n"
            f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.01)\n"
            "args = test_mine.get_args_parser().parse_args(['--dataset', 'demo'])\n"
            "model = {'share_net': 2, 'pcb': 'on', 'head': 'pcb'}\n"
            "row = {k: 1.0 for k in eval_metrics.METRICS}\n"
            "results = {'s': {'model': model, 'features': ['parts'], 'trials': [{'trial': 1}], 'mean': row,\n"
            "                 'std': row}}\n"
            f"for _ in range(40):\n    test_mine.append_results_csv({str(log)!r}, args, results)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=ROOT) for i in range(3)]
    deadline = time.time() + 120
    while sum(os.path.exists(tmp_path / f"ready-{i}") for i in range(3)) < 3:  # all three have imported
        assert time.time() < deadline and all(p.poll() is None for p in procs)  # torch, wait at the barrier
        time.sleep(0.05)
    go.write_text("")
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    lines = (log / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + 120 and lines[0].startswith("time,dataset")


@pytest.mark.slow
def test_a_checkpoint_of_another_dataset_is_not_held_to_a_split(trained, monkeypatch):
    data, ckpt = trained
    sysu_like = dict(torch.load(ckpt, weights_only=False))
    sysu_like["args"] = dict(sysu_like["args"], dataset="sysu", trial=1)  # SYSU runs record the default trial
    test_mine.check_split(ckpt, sysu_like, 2, None)  # no split of its own: a cross-dataset test is fine
    with pytest.raises(ValueError, match="was trained on split 1"):
        test_mine.check_split(ckpt, torch.load(ckpt, weights_only=False), 2, None)


@pytest.mark.slow
def test_results_written_before_inside_the_data_folder_do_not_block_a_rerun(trained, tmp_path):
    data, ckpt = trained
    inside = os.path.join(data, "my_results.json")
    try:
        test_mine.main(eval_args(data, ckpt, "--json", inside))
        test_mine.main(eval_args(data, ckpt, "--json", inside))  # an earlier result is no input
        assert json.load(open(inside))["setting"] == "visible->thermal"
    finally:
        os.remove(inside)


def test_the_run_lock_works_where_the_file_system_has_no_flock(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock = fileio.RunLock(str(tmp_path), "run")
    assert lock.acquire() is None  # the pid file alone
    lock.release()
    assert not (tmp_path / "run.lock").exists()
    (tmp_path / "run.lock").write_text(f"{os.getppid()}\n")  # a live process's claim is refused
    with pytest.raises(ValueError, match=f"process {os.getppid()} is training run run now"):
        fileio.RunLock(str(tmp_path), "run").acquire()
    (tmp_path / "run.lock").write_text(f"{DEAD_PID}\n")  # a dead process's pid file is taken over
    lock = fileio.RunLock(str(tmp_path), "run")
    assert lock.acquire() == DEAD_PID
    lock.release()


@pytest.mark.slow
def test_resuming_needs_no_initial_weights_file(tiny_regdb, tmp_path):
    weights = tmp_path / "r18.pth"
    torch.save(__import__("torchvision").models.resnet18().state_dict(), weights)
    train_mine.main(train_args(tiny_regdb, str(tmp_path), "--pretrained", str(weights)))
    os.remove(weights)  # moved away after the first epoch
    last = next(str(p) for p in (tmp_path / "models").glob("*_last.pth"))
    train_mine.main(train_mine.get_args_parser().parse_args(["--resume", last, "--epochs", "2", "--gpu", "cpu",
                                                             "--log_path", ""]))
    assert torch.load(last, weights_only=False)["epoch"] == 1


@pytest.mark.slow
def test_pictures_of_a_checkpoint_of_the_same_name_elsewhere_are_not_replaced(trained, tmp_path):
    import shutil
    data, ckpt = trained
    twin = tmp_path / "other_run" / os.path.basename(ckpt)
    twin.parent.mkdir()
    shutil.copyfile(ckpt, twin)
    vis = tmp_path / "vis"
    test_mine.main(eval_args(data, ckpt, "--visualize", "2", "--vis_dir", str(vis)))
    before = digest(vis)
    with pytest.raises(ValueError, match="holds the pictures of another checkpoint"):
        test_mine.main(eval_args(data, str(twin), "--visualize", "2", "--vis_dir", str(vis)))
    assert digest(vis) == before
    test_mine.main(eval_args(data, ckpt, "--visualize", "3", "--vis_dir", str(vis)))  # its own: replaced


# ----------------------------------------------------------------------------- files of another kind

# results.csv's columns before --flip_test and --half were recorded
OLDER_RESULT_FIELDS = ["time", "dataset", "resume", "setting", "trials", "share_net", "pcb", "re_rank"] + \
    [f"{k}_{s}" for s in ("mean", "std") for k in eval_metrics.METRICS]


def user_files(folder):
    """A folder of what a user may have beside their results: another run's checkpoint and log, a
    results table of earlier evaluations, a stored dataset array, an image and notes of their own."""
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, folder / "other_last.pth")
    (folder / "other.log").write_text("epoch 1: loss 3.2\n")
    (folder / "results.csv").write_text(",".join(OLDER_RESULT_FIELDS) + "\n" + "x," * 19 + "x\n")
    np.save(folder / "train_rgb_resized_img.npy", np.zeros((2, 4, 2, 3), np.uint8))
    Image.new("RGB", (4, 8)).save(folder / "photo.png")
    (folder / "notes.json").write_text('{"mine": 1}')
    return folder


@pytest.mark.parametrize("name", ["other_last.pth", "other.log", "results.csv", "train_rgb_resized_img.npy",
                                  "photo.png", "notes.json"])
def test_json_over_a_file_of_another_kind_is_refused_and_every_file_kept(name, trained, tmp_path, monkeypatch):
    data, ckpt = trained
    mine = user_files(tmp_path / "mine")
    before = digest(mine)
    no_images_read(monkeypatch)
    with pytest.raises(ValueError, match=f"--json {mine / name}: that file exists and is .*, not a result file of "
                                         f"test_mine.py .*; refusing to replace it"):
        test_mine.main(eval_args(data, ckpt, "--json", str(mine / name), "--log_path", str(mine)))
    assert digest(mine) == before


def test_results_csv_of_another_kind_is_refused_and_an_earlier_json_replaced(trained, tmp_path, monkeypatch):
    data, ckpt = trained
    log = tmp_path / "log"
    log.mkdir()
    (log / "results.csv").write_text("name,score\nmine,3\n")  # a table of the user's own
    before = digest(log)
    with pytest.raises(ValueError, match="results.csv: that file exists and is a file of some other kind, not a "
                                         "results table of test_mine.py"):
        test_mine.main(eval_args(data, ckpt, "--log_path", str(log)))
    assert digest(log) == before
    os.remove(log / "results.csv")
    no_images_read(monkeypatch)
    pictures = tmp_path / "vis" / os.path.basename(ckpt)[:-len(".pth")]
    for flags, message in ((["--json", str(log / "results.csv"), "--log_path", str(log)], "this run's results table"),
                           (["--json", str(pictures / "r.json"), "--visualize", "2", "--vis_dir", str(tmp_path / "vis")],
                            "inside this run's picture folder")):
        with pytest.raises(ValueError, match=f"^--json .*: {message}"):  # two outputs of one run at one place
            test_mine.main(eval_args(data, ckpt, *flags))
    assert os.listdir(log) == [] and not os.path.exists(tmp_path / "vis")
    monkeypatch.undo()
    out = tmp_path / "r.json"
    test_mine.main(eval_args(data, ckpt, "--json", str(out)))
    test_mine.main(eval_args(data, ckpt, "--json", str(out)))  # an earlier result of its own kind is replaced
    assert json.load(open(out))["args"]["resume"] == ckpt


def test_results_csv_records_flip_test_and_half_and_keeps_an_older_tables_rows(trained, tmp_path):
    import csv
    data, ckpt = trained
    log = tmp_path / "log"
    log.mkdir()
    older = OLDER_RESULT_FIELDS
    row = {f: str(i) for i, f in enumerate(older)}
    with open(log / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows([older, [row[f] for f in older]])
    test_mine.main(eval_args(data, ckpt, "--log_path", str(log), "--flip_test", "on"))
    test_mine.main(eval_args(data, ckpt, "--log_path", str(log), "--half"))
    rows = list(csv.DictReader(open(log / "results.csv", newline="")))
    assert list(rows[0]) == older + ["flip_test", "half"] and len(rows) == 3  # the older columns in place
    assert rows[0] == {**row, "flip_test": "", "half": ""}  # the older row whole; not recorded then
    assert [(r["flip_test"], r["half"]) for r in rows[1:]] == [("on", "off"), ("off", "on")]


def test_files_written_together_are_all_new_or_all_as_they_were(tmp_path, monkeypatch, fail_replace):
    first, second = tmp_path / "a" / "x.npy", tmp_path / "b" / "x.csv"
    first.parent.mkdir()
    fail_replace(second)
    write = [(first, lambda f: f.write(b"new"), True), (second, lambda f: f.write("new"), False)]
    with pytest.raises(OSError, match=f"^cannot write {second}: No space left on device$"):
        fileio.write_together(write)
    assert os.listdir(first.parent) == [] and os.listdir(second.parent) == []  # the new first file taken back
    first.write_bytes(b"old")
    with pytest.raises(OSError):
        fileio.write_together(write)
    assert os.listdir(first.parent) == ["x.npy"] and first.read_bytes() == b"old"
    monkeypatch.undo()
    assert fileio.write_together(write) == [str(first), str(second)]
    assert first.read_bytes() == b"new" and second.read_text() == "new" and os.listdir(first.parent) == ["x.npy"]
