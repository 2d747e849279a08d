"""A new method through the public seams alone (README, "Adding a method"): a network of the two-stream
backbone with a block of its own between layer2 and layer3 (TwoStreamResNet.insert) and the global head as
a part, a loss with a term and a flag of its own (--w_spread, in its entry's own_flags), and one entry of
settings.METHODS; no product file is touched."""
import json
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import flags
import loss as losses
import model_mine
import settings
import test_mine
import train_mine


class ToyBlock(nn.Module):
    """x + conv1x1(x), the convolution zero-initialised: the network starts as the bare backbone, and the
    block learns a correction of its place's features (the way AGW's non-local blocks start)."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return x + self.conv(x)


class ToyNet(model_mine.TwoStreamResNet):
    """The two-stream backbone with a ToyBlock between layer2 and layer3, and the global head as a part
    (avg pooling, BN neck, ID classifier): features 'bn' (reported) and 'pool'."""

    def __init__(self, class_num, arch="resnet50", share_net=2, pretrained="none", head="toy"):
        super().__init__(arch, share_net, pretrained)
        # everything ToyNet(**config) needs to rebuild it from a checkpoint
        self.config = dict(class_num=class_num, head="toy", arch=arch, share_net=share_net)
        self.toy_block = ToyBlock(self.channels("layer2")[1])
        self.insert("layer2", self.toy_block)  # its weights are saved as toy_block.*
        self.neck = model_mine.GlobalHead(self.out_channels, class_num, gm_pool="off", gem_p=3.0)
        self.feature_names = self.neck.feature_names

    def forward(self, x1, x2, modality=None):
        return self.neck(self.backbone(x1, x2, modality))

    def features(self, x, modality):
        return {name: F.normalize(f.float(), dim=1) for name, f in self(x, x, modality).items()}

    def full_rate_parameters(self):
        return list(self.neck.parameters())  # the block trains with the backbone, at --backbone_lr_mult


class ToyLoss(nn.Module):
    """ID + batch-hard triplet + a small penalty on the spread of the pooled features: a fifth named value."""

    def __init__(self, margin, w_spread):
        super().__init__()
        self.id_loss, self.tri = nn.CrossEntropyLoss(), losses.TripletLoss(margin=margin)
        self.w_spread = w_spread

    def forward(self, out, labels, modality=None):
        loss_id = self.id_loss(out["logits"].float(), labels)
        loss_tri, correct = self.tri(out["feat"], labels)
        spread = out["feat"].float().var(0).mean()
        return loss_id + loss_tri + self.w_spread * spread, {
            "id": loss_id, "tri": loss_tri, "acc": correct / labels.numel(), "spread": spread}


def check_toy(s):
    if s.share_net > 2:
        raise ValueError(f"--share_net {s.share_net}: the toy's block follows layer2, which must be shared "
                         f"(--share_net 2 or less)")


TOY = settings.Method(model=ToyNet, config=lambda s: dict(arch=s.arch, share_net=s.share_net, head="toy"),
                      loss=lambda s: ToyLoss(s.margin, s.w_spread), flags=("margin",), heads=("toy",),
                      own_flags=(flags.Flag("w_spread", float, 0.1, "toy: weight of the spread penalty", low=0),),
                      check=check_toy)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(settings.METHODS, "toy", TOY)


class Scalars:
    """A TensorBoard writer that records what it is given."""

    def __init__(self, folder):
        self.tags = set()

    def add_scalar(self, tag, value, step):
        self.tags.add(tag)

    def close(self):
        pass


def train(data, out, *extra):
    args = train_mine.get_args_parser().parse_args([
        "--dataset", "demo", "--method", "toy", "--data_path", data, "--img_h", "32", "--img_w", "16",
        "--batch-size", "2", "--num_pos", "2", "--steps_per_epoch", "2", "--workers", "0", "--gpu", "cpu",
        "--amp", "off", "--eval_start", "0", "--eval_every", "1", "--epochs", "2", "--model_path",
        os.path.join(out, "models"), "--log_path", os.path.join(out, "log"), *extra])
    train_mine.main(args)
    return torch.load(last_checkpoint(out), weights_only=False)


def last_checkpoint(out):
    folder = os.path.join(out, "models")
    return os.path.join(folder, next(p for p in sorted(os.listdir(folder)) if p.endswith("_last.pth")))


def tensors(tree, path=""):
    """{path: tensor} of every tensor in a checkpoint's nested dicts and lists."""
    if torch.is_tensor(tree):
        return {path: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return {k: v for key, sub in items for k, v in tensors(sub, f"{path}/{key}").items()}


def test_the_toy_block_runs_between_layer2_and_layer3(toy):
    net = ToyNet(5, arch="resnet18", share_net=1).eval()
    order = []
    for name in ("layer2", "layer3"):
        getattr(net.base_resnet.base, name).register_forward_hook(lambda *a, name=name: order.append(name))
    net.toy_block.register_forward_hook(lambda m, i, o: order.append(("toy_block", i[0].shape[1])))
    x = torch.randn(2, 3, 32, 16)
    before = net(x, x, "visible")["bn"]
    assert order == ["layer2", ("toy_block", 128), "layer3"]  # layer2's output channels in ResNet-18
    with torch.no_grad():
        net.toy_block.conv.bias.fill_(1)
    assert not torch.allclose(net(x, x, "visible")["bn"], before, atol=1e-3)  # it is on the path


@pytest.mark.slow
def test_a_method_added_through_the_table_trains_resumes_and_evaluates(toy, tiny_regdb, tmp_path, monkeypatch):
    writers = []
    monkeypatch.setattr(train_mine, "tensorboard_writer", lambda folder: writers.append(Scalars(folder)) or
                        writers[-1])
    whole = train(tiny_regdb, str(tmp_path / "whole"), "--w_spread", "0.2")
    assert whole["network"] == dict(class_num=4, head="toy", arch="resnet18", share_net=2)
    assert whole["epoch"] == 1 and whole["name"].startswith("demo_trial1_toy_") and whole["args"]["w_spread"] == 0.2
    # the block's weights are saved, and trained away from their zero start
    assert {"toy_block.conv.weight", "toy_block.conv.bias"} <= set(whole["model"])
    assert whole["model"]["toy_block.conv.weight"].abs().sum() > 0
    log = open(next((tmp_path / "whole" / "log").glob("*.log"))).read()
    assert "epoch 1: loss " in log and " spread " in log.split("epoch 1: ")[1].splitlines()[0]
    assert {"train/loss", "train/id", "train/tri", "train/acc", "train/spread"} <= writers[0].tags
    assert set(whole["train"]) >= {"loss", "id", "tri", "acc", "spread"}

    # one epoch, then a resumed second that takes --w_spread from the checkpoint: every tensor bit for bit
    train(tiny_regdb, str(tmp_path / "split"), "--epochs", "1", "--w_spread", "0.2")
    first = last_checkpoint(str(tmp_path / "split"))
    train_mine.main(train_mine.get_args_parser().parse_args(["--resume", first, "--epochs", "2",
                                                             "--gpu", "cpu", "--log_path", ""]))
    resumed = torch.load(first, weights_only=False)
    assert resumed["epoch"] == 1 and resumed["args"]["w_spread"] == 0.2
    parts = ("model", "optimizer", "scaler")
    want, got = tensors({k: whole[k] for k in parts}), tensors({k: resumed[k] for k in parts})
    assert want.keys() == got.keys() and len(want) > 60
    assert all(torch.equal(got[k], v) for k, v in want.items())
    timing = ("seconds", "img_s")
    assert {k: v for k, v in resumed["train"].items() if k not in timing} == \
        {k: v for k, v in whole["train"].items() if k not in timing}

    out = tmp_path / "toy.json"
    test_mine.main(test_mine.get_args_parser().parse_args([
        "--dataset", "demo", "--data_path", tiny_regdb, "--resume", first, "--trials", "1", "--gpu", "cpu",
        "--workers", "0", "--json", str(out), "--log_path", str(tmp_path / "test-log")]))
    result = json.loads(out.read_text())
    assert result["features"] == ["bn", "pool"]
    assert set(result["mean"]) >= {"rank1", "mAP", "mINP"} and set(result["pool"]["mean"]) >= {"rank1", "mAP"}


def test_a_flag_the_new_method_does_not_read_is_an_error(toy, tiny_regdb, tmp_path):
    with pytest.raises(ValueError, match=r"--num_strips: not used by --method toy; leave it out"):
        train(tiny_regdb, str(tmp_path), "--num_strips", "2")


def resolved(*extra, method="toy"):
    args = train_mine.get_args_parser().parse_args(["--dataset", "demo", "--method", method, *extra])
    args.world_size = 1
    return settings.resolve_training(args, {k for k in settings.experiment_flags() if getattr(args, k) is not None})


def test_the_new_methods_own_flag_is_declared_in_its_entry_alone(toy, tmp_path):
    assert "--w_spread" in train_mine.get_args_parser().format_help()
    assert resolved().w_spread == 0.1  # its declared default
    assert train_mine.run_name(resolved("--w_spread", "0.2")) != train_mine.run_name(resolved())
    with pytest.raises(ValueError, match=r"--w_spread must be >= 0, got -1"):
        resolved("--w_spread", "-1")
    with pytest.raises(ValueError, match=r"--share_net 3: the toy's block follows layer2"):
        resolved("--share_net", "3")  # its own check, before any work
    # a resumed run takes it from its checkpoint
    args = train_mine.get_args_parser().parse_args(["--resume", "x_last.pth"])
    train_mine.resume_flags(args, set(), {"args": dict(vars(resolved("--w_spread", "0.2")))})
    assert args.w_spread == 0.2 and args.method == "toy"
    # another method does not read it, and runs of other methods keep their names
    with pytest.raises(ValueError, match=r"--w_spread: not used by --method hctri --pcb on --gm_pool on; leave it"):
        resolved("--w_spread", "0.2", method="hctri")
    with_toy = train_mine.run_name(resolved(method="hctri"))
    settings.METHODS.pop("toy")
    assert train_mine.run_name(resolved(method="hctri")) == with_toy
