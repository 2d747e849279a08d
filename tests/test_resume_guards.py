"""What a resumed run, test_mine.py and extract.py take from a checkpoint, and what they refuse: the
split is locked on resume as the dataset is, an old --method agw file resumes as the WRT run it was,
a --method or --dataset that differs from the file's recorded one is refused naming the file's, and
a resume into a folder that holds the run says so plainly."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoints
import export
import extract
import model_mine
import test_mine
import train_mine
from test_cli import TINY
from test_run_safety import digest


def train(data, out, *extra):
    """A TINY demo run into out/models (its _last.pth returned), logged in out/log; without the strips'
    flags for AGW's global head."""
    tiny = list(TINY)
    if "agw" in extra:
        for flag in ("--num_strips", "--local_feat_dim"):
            del tiny[tiny.index(flag):tiny.index(flag) + 2]
    train_mine.main(train_mine.get_args_parser().parse_args(tiny + [
        "--data_path", data, "--model_path", os.path.join(out, "models"), "--log_path", os.path.join(out, "log"),
        *extra]))
    folder = os.path.join(out, "models")
    return os.path.join(folder, next(f for f in sorted(os.listdir(folder)) if f.endswith("_last.pth")))


def resume(path, *extra):
    args = train_mine.get_args_parser().parse_args(["--resume", path, "--gpu", "cpu", *extra])
    train_mine.init_distributed(args)
    return args


def as_before_agw_was_agw(ckpt):
    """A checkpoint of --method wrt as --method agw wrote it before AGW: that method's name, and no
    record of the flags that came with AGW (non_local) and after it (caj_aug)."""
    args = {k: v for k, v in ckpt["args"].items() if k not in ("non_local", "caj_aug")}
    return dict(ckpt, args=dict(args, method="agw"), name=ckpt["name"].replace("_wrt_", "_agw_"))


# ----------------------------------------------------------------------------- the split (defect 3)

@pytest.mark.slow
def test_a_resume_on_another_split_is_refused_in_one_line_and_nothing_changes(tiny_regdb, tmp_path):
    last = train(tiny_regdb, str(tmp_path))
    assert "_trial1_" in os.path.basename(last)
    before = digest(tmp_path)
    with pytest.raises(ValueError) as e:  # the command: --resume <trial1 run>_last.pth --epochs 2 --trial 2
        train_mine.main(resume(last, "--epochs", "2", "--trial", "2"))
    assert "--trial 2: the checkpoint" in str(e.value) and "was trained with --trial 1" in str(e.value)
    assert "\n" not in str(e.value)
    assert digest(tmp_path) == before


# ----------------------------------------------------------------------------- share_net 0 with non-local blocks (5)

def test_share_net_0_puts_agws_blocks_in_the_shared_layers_where_agw_puts_them():
    net = model_mine.embed_net(5, arch="resnet50", share_net=0, pcb="off", non_local="on").eval()
    assert not list(net.visible_module.visible.children()) and "conv1" in dict(net.base_resnet.base.named_children())
    assert net.non_local_at == {"layer2": (2, 3), "layer3": (3, 4, 5)}
    order = []
    for name, m in net.base_resnet.base.named_children():
        if name.startswith("layer"):
            for i, block in enumerate(m):
                block.register_forward_hook(lambda *a, n=f"{name}.{i}": order.append(n))
    for name in ("NL_2", "NL_3"):
        for i, block in enumerate(getattr(net, name)):
            block.register_forward_hook(lambda *a, n=f"{name}.{i}": order.append(n))
    out = net(torch.zeros(1, 3, 64, 32), torch.zeros(1, 3, 64, 32), "visible")
    assert out["bn"].shape == (1, 2048)
    assert order[3:18] == ["layer2.0", "layer2.1", "layer2.2", "NL_2.0", "layer2.3", "NL_2.1", "layer3.0", "layer3.1",
                           "layer3.2", "layer3.3", "NL_3.0", "layer3.4", "NL_3.1", "layer3.5", "NL_3.2"]


@pytest.mark.slow
@pytest.mark.parametrize("flags", [("--method", "agw", "--share_net", "0"),
                                   ("--method", "hctri", "--non_local", "on", "--share_net", "0")])
def test_share_net_0_with_non_local_blocks_trains(flags, tiny_regdb, tmp_path):
    ckpt = torch.load(train(tiny_regdb, str(tmp_path), *flags), weights_only=False)
    assert ckpt["network"]["share_net"] == 0 and ckpt["network"]["non_local"] == "on" and ckpt["epoch"] == 0
    keys = ckpt["model"].keys()
    assert "base_resnet.base.conv1.weight" in keys and not any(k.startswith("visible_module.") for k in keys)
    # ResNet-18's two-block stages: one block after each (AGW's rule for a stage with fewer blocks)
    model, _ = checkpoints.model_from_checkpoint("f", ckpt=ckpt)
    assert model.non_local_at == {"layer2": (0, 1), "layer3": (0, 1)}
    assert sorted({k.split(".")[0] + "." + k.split(".")[1] for k in keys if k.startswith("NL_")}) == \
        ["NL_2.0", "NL_2.1", "NL_3.0", "NL_3.1"]


# ----------------------------------------------------------------------------- an old --method agw file (11)

def old_agw_checkpoint(tmp_path):
    """An old-format --method agw checkpoint (WRT on the PCB network) of epoch 0, without weights: what
    prepare_run reads."""
    args = train_mine.get_args_parser().parse_args(TINY + ["--method", "wrt", "--data_path", str(tmp_path / "d"),
                                                           "--model_path", str(tmp_path), "--log_path", ""])
    train_mine.init_distributed(args)
    _, name, _ = train_mine.prepare_run(args)
    ckpt = as_before_agw_was_agw({"model": {}, "arch": {"pcb": "on"}, "optimizer": {}, "epoch": 0,
                                  "args": vars(args), "name": name})
    path = str(tmp_path / f"{ckpt['name']}_last.pth")
    torch.save(ckpt, path)
    return path


def test_an_old_agw_checkpoint_resumes_as_the_wrt_run_it_was_and_says_so(tmp_path):
    path = old_agw_checkpoint(tmp_path)
    args = resume(path, "--epochs", "3")
    _, name, notes = train_mine.prepare_run(args)
    assert args.method == "wrt" and args.non_local == "off" and "_agw_pcb-on_" in name
    assert any(n.startswith(f"resume: {path} it records --method agw from before --method agw became AGW") and
               n.endswith("it resumes as --method wrt, exactly as it ran") for n in notes)
    with pytest.raises(ValueError, match=r"^--method agw: the checkpoint .* records --method agw from before "
                                         r".*that is --method wrt now; it resumes only as it ran \(leave --method "
                                         r"out\)$"):
        train_mine.prepare_run(resume(path, "--epochs", "3", "--method", "agw"))


@pytest.mark.slow
def test_an_old_agw_checkpoint_resumes_bit_for_bit(tiny_regdb, tmp_path):
    # full epochs: WRT runs N // (P*K) = 8 steps an epoch here, AGW's sampler 9
    whole = torch.load(train(tiny_regdb, str(tmp_path / "whole"), "--method", "wrt", "--steps_per_epoch", "0",
                             "--epochs", "2"), weights_only=False)
    first = train(tiny_regdb, str(tmp_path / "split"), "--method", "wrt", "--steps_per_epoch", "0")
    old = as_before_agw_was_agw(torch.load(first, weights_only=False))
    folder = tmp_path / "old"
    folder.mkdir()
    path = str(folder / f"{old['name']}_last.pth")
    torch.save(old, path)
    train_mine.main(resume(path, "--epochs", "2", "--log_path", ""))
    resumed = torch.load(path, weights_only=False)
    assert resumed["epoch"] == 1 and all(torch.equal(resumed["model"][k], v) for k, v in whole["model"].items())
    assert resumed["args"]["method"] == "wrt"  # what it is: a later resume is a plain --method wrt one


# ----------------------------------------------------------------------------- the config's key before 'network' (27)

def as_written_before_network(ckpt, head=True):
    """One of our checkpoints as this project wrote it before: its network config under 'arch' (the name of
    --arch, the backbone's, too), the strips head named 'pcb' (head=False: the oldest files, no head)."""
    config = {k: v for k, v in ckpt["network"].items() if k != "head" or head}
    if config.get("head") == "strips":
        config["head"] = "pcb"
    return {("arch" if k == "network" else k): (config if k == "network" else v) for k, v in ckpt.items()}


@pytest.mark.parametrize("head", [True, False])
def test_a_file_with_its_config_under_arch_loads_as_it_did(tmp_path, head):
    torch.manual_seed(0)
    model = model_mine.embed_net(4, arch="resnet18", num_strips=2, local_feat_dim=16).eval()
    path = str(tmp_path / "old.pth")
    old = as_written_before_network({"model": model.state_dict(), "network": model.config, "args": {}}, head)
    assert "network" not in old and old["arch"].get("head", "pcb") == "pcb"
    torch.save(old, path)
    loaded, _ = checkpoints.model_from_checkpoint(path)
    assert loaded.config == model.config and loaded.config["head"] == "strips"
    x = torch.rand(2, 3, 32, 16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x, x, "visible")["parts"], model(x, x, "visible")["parts"])


@pytest.mark.slow
def test_a_file_with_its_config_under_arch_resumes_bit_for_bit(tiny_regdb, tmp_path):
    whole = torch.load(train(tiny_regdb, str(tmp_path / "whole"), "--epochs", "2"), weights_only=False)
    first = torch.load(train(tiny_regdb, str(tmp_path / "split")), weights_only=False)
    assert first["network"]["head"] == "strips" and "arch" not in first
    folder = tmp_path / "old"
    folder.mkdir()
    path = str(folder / f"{first['name']}_last.pth")
    torch.save(as_written_before_network(first), path)
    train_mine.main(resume(path, "--epochs", "2", "--log_path", ""))
    resumed = torch.load(path, weights_only=False)
    assert resumed["epoch"] == 1 and resumed["network"] == whole["network"] and "arch" not in resumed
    assert all(torch.equal(resumed["model"][k], v) for k, v in whole["model"].items())


# ----------------------------------------------------------------------------- --method and --dataset (12)

def our_checkpoint(tmp_path, method, **arch):
    """A checkpoint of this project's (a tiny ResNet-18 network) that records method and the demo."""
    torch.manual_seed(0)
    model = model_mine.embed_net(4, arch="resnet18", **arch)
    args = {"method": method, "dataset": "demo", "img_w": 16, "img_h": 32}
    if method != "agw-before":
        args["non_local"] = arch.get("non_local", "off")
    else:
        args["method"] = "agw"
    path = str(tmp_path / f"{method}_best.pth")
    torch.save({"model": model.state_dict(), "arch": model.config, "args": args, "epoch": 0}, path)
    return path


def loaded(path, *flags):
    args = test_mine.get_args_parser().parse_args(["--dataset", "demo", "--resume", path, *flags])
    checkpoints.resolve_model_flags(args, skip=("img_w", "img_h", "trial"), log=lambda *a: None)
    checkpoints.model_from_checkpoint(path, args, args.explicit)
    return args


AGW_NET = dict(share_net=1, pcb="off", non_local="on")


@pytest.mark.parametrize("method, given, said", [("agw", "hctri", "agw"), ("agw", "caj", "agw"),
                                                 ("caj", "agw", "caj"), ("agw", "dgtl", "agw"),
                                                 ("agw-before", "hctri", "agw, that is wrt")])
@pytest.mark.slow
def test_test_mine_refuses_a_method_other_than_the_files(method, given, said, tmp_path):
    arch = dict(share_net=2, pcb="on", num_strips=2, local_feat_dim=16) if method == "agw-before" else AGW_NET
    path = our_checkpoint(tmp_path, method, **arch)
    with pytest.raises(ValueError) as e:
        loaded(path, "--method", given)
    assert f"--method {given} (the file: {said})" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_test_mine_takes_the_files_method_given_or_not(tmp_path):
    agw = our_checkpoint(tmp_path, "agw", **AGW_NET)
    assert loaded(agw, "--method", "agw").method == "agw"
    assert loaded(agw).method == "agw"  # what the JSON records: the file's method, not the default hctri
    old = our_checkpoint(tmp_path, "agw-before", share_net=2, pcb="on", num_strips=2, local_feat_dim=16)
    assert loaded(old, "--method", "agw").method == "agw" and loaded(old, "--method", "wrt").method == "wrt"
    assert loaded(old).method == "wrt"


def test_extract_and_export_refuse_a_dataset_other_than_the_files(tmp_path):
    path = our_checkpoint(tmp_path, "agw", **AGW_NET)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((32, 16, 3), np.uint8)).save(images / "a.png")
    out = tmp_path / "out" / "f.npy"
    base = ["--resume", path, "--images", str(images), "--out", str(out), "--gpu", "cpu", "--workers", "0"]
    for flags, message in ((["--dataset", "llcm"], r"^--dataset llcm: .* records --dataset demo, which sets its "
                                                   r"model and image size; leave --dataset out$"),
                           (["--method", "hctri"], r"--method hctri \(the file: agw\)")):
        with pytest.raises(ValueError, match=message):
            extract.main(base + flags, log=lambda *a: None)
        assert not out.parent.exists() or not os.listdir(out.parent)
    with pytest.raises(ValueError, match=r"^--dataset sysu: .* records --dataset demo"):
        export.main(["--resume", path, "--out", str(tmp_path / "exported"), "--dataset", "sysu"], log=lambda *a: None)
    assert not (tmp_path / "exported").exists()
    assert extract.main(base + ["--dataset", "demo"], log=lambda *a: None).shape == (1, 512)


# ----------------------------------------------------------------------------- the run's folder (18)

def test_a_resume_into_a_folder_holding_the_run_says_so_plainly(tmp_path):
    (tmp_path / "there").mkdir()
    (tmp_path / "there" / "run_last.pth").write_bytes(b"")
    args = SimpleNamespace(resume=str(tmp_path / "here" / "run_last.pth"), model_path=str(tmp_path / "there"))
    with pytest.raises(ValueError) as e:
        train_mine.check_run_files(args, "run", {"epoch": 0})
    assert str(e.value) == (f"--model_path {args.model_path}: {tmp_path / 'there' / 'run_last.pth'} already holds "
                            f"run run, which resuming {args.resume} there would write over: continue that copy "
                            f"with --resume {tmp_path / 'there' / 'run_last.pth'}, or give another --model_path "
                            f"(nothing was overwritten)")
