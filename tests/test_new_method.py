"""A new method through the public seams alone (README, "Adding a method"): a network, a loss with a
term of its own and one entry of settings.METHODS; train_mine.py and test_mine.py are not touched."""
import json
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import flags
import loss as losses
import settings
import test_mine
import train_mine


class ToyNet(nn.Module):
    """Two one-convolution streams, average pooling and a BN neck: features 'bn' (reported) and 'pool'."""
    feature_names = ("bn", "pool")

    def __init__(self, class_num, width=8, pretrained="none", head="toy"):
        super().__init__()
        self.config = dict(class_num=class_num, head="toy", width=width)  # what rebuilds it from a checkpoint
        self.visible = nn.Conv2d(3, width, 3, stride=2)
        self.thermal = nn.Conv2d(3, width, 3, stride=2)
        self.bn = nn.BatchNorm1d(width)
        self.classifier = nn.Linear(width, class_num, bias=False)

    def forward(self, x1, x2, modal=0):
        x = {0: lambda: torch.cat((self.visible(x1), self.thermal(x2))), 1: lambda: self.visible(x1),
             2: lambda: self.thermal(x2)}[modal]()
        pool = F.relu(x).mean((2, 3))
        bn = self.bn(pool)
        return {"feat": pool, "logits": self.classifier(bn)} if self.training else {"bn": bn, "pool": pool}

    def features(self, x, modal):
        return {name: F.normalize(f.float(), dim=1) for name, f in self(x, x, modal).items()}

    def head_parameters(self):
        return list(self.bn.parameters()) + list(self.classifier.parameters())


class ToyLoss(nn.Module):
    """ID + batch-hard triplet + a small penalty on the spread of the pooled features: a fifth named value."""

    def __init__(self, margin, w_spread):
        super().__init__()
        self.id_loss, self.tri = nn.CrossEntropyLoss(), losses.TripletLoss(margin=margin)
        self.w_spread = w_spread

    def forward(self, out, labels, modal=None):
        loss_id = self.id_loss(out["logits"].float(), labels)
        loss_tri, correct = self.tri(out["feat"], labels)
        spread = out["feat"].float().var(0).mean()
        return loss_id + loss_tri + self.w_spread * spread, {
            "id": loss_id, "tri": loss_tri, "acc": correct / labels.numel(), "spread": spread}


TOY = settings.Method(model=ToyNet, config=lambda s: dict(width=8),
                      loss=lambda s: ToyLoss(s.margin, s.w_spread), flags=("margin",), heads=("toy",),
                      own_flags=(flags.Flag("w_spread", float, 0.1, "toy: weight of the spread penalty", low=0),))


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


@pytest.mark.slow
def test_a_method_added_through_the_table_trains_resumes_and_evaluates(toy, tiny_regdb, tmp_path, monkeypatch):
    writers = []
    monkeypatch.setattr(train_mine, "tensorboard_writer", lambda folder: writers.append(Scalars(folder)) or
                        writers[-1])
    whole = train(tiny_regdb, str(tmp_path / "whole"))
    assert whole["arch"]["head"] == "toy" and whole["epoch"] == 1 and whole["name"].startswith("demo_trial1_toy_")
    log = open(next((tmp_path / "whole" / "log").glob("*.log"))).read()
    assert "epoch 1: loss " in log and " spread " in log.split("epoch 1: ")[1].splitlines()[0]
    assert {"train/loss", "train/id", "train/tri", "train/acc", "train/spread"} <= writers[0].tags
    assert set(whole["train"]) >= {"loss", "id", "tri", "acc", "spread"}

    # one epoch, then a resumed second: the same weights bit for bit
    train(tiny_regdb, str(tmp_path / "split"), "--epochs", "1")
    first = last_checkpoint(str(tmp_path / "split"))
    train_mine.main(train_mine.get_args_parser().parse_args(["--resume", first, "--epochs", "2",
                                                             "--gpu", "cpu", "--log_path", ""]))
    resumed = torch.load(first, weights_only=False)
    assert resumed["epoch"] == 1
    assert all(torch.equal(resumed["model"][k], v) for k, v in whole["model"].items())

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
