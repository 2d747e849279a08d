"""The fast paths change speed, never results: a resident training set gives the loader's batches
and weights; CUDA graphs are off on the CPU and say so; a compiler failure falls back to eager."""
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import data_loader
import demo_data
import train_mine


@pytest.fixture(scope="module")
def tiny_regdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "regdb"
    return str(demo_data.make_regdb_demo(str(root), num_ids=8, imgs_per_id=4, img_w=16, img_h=32, num_trials=1))


def run(data_path, out, *extra):
    args = train_mine.get_args_parser().parse_args([
        "--dataset", "demo", "--data_path", data_path, "--img_h", "32", "--img_w", "16", "--num_strips", "2",
        "--local_feat_dim", "16", "--batch-size", "2", "--num_pos", "2", "--steps_per_epoch", "3", "--epochs", "2",
        "--workers", "0", "--gpu", "cpu", "--amp", "off", "--eval_start", "100", "--seed", "4", "--optim", "sgd",
        "--model_path", os.path.join(out, "models"), "--log_path", os.path.join(out, "log"), *extra])
    train_mine.main(args)
    name = train_mine.run_name(args)
    return torch.load(os.path.join(out, "models", f"{name}_last.pth"), weights_only=False), \
        open(os.path.join(out, "log", f"{name}.log")).read()


def test_resident_batches_equal_the_loaders():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 4, 3), dtype=np.uint8)
    thermal = rng.integers(0, 256, (30, 8, 4, 3), dtype=np.uint8)
    data = data_loader.TrainData(images, np.repeat(np.arange(5), 8), thermal, np.repeat(np.arange(5), 6))
    sampler = data_loader.IdentitySampler(data.labels_v, data.labels_t, 3, 2, seed=1)
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        loader = list(DataLoader(data_loader.BatchData(data), sampler=sampler, batch_size=None))
        resident = list(data_loader.ResidentBatches(data, sampler, "cpu", chunk_bytes=100))  # many small chunks
        assert len(loader) == len(resident) == len(sampler)
        for a, b in zip(loader, resident):
            for x, y in zip(a, b):
                assert x.dtype == y.dtype and torch.equal(x, y)


def test_resident_and_loader_training_give_identical_weights(tiny_regdb, tmp_path):
    loaded, log_l = run(tiny_regdb, str(tmp_path / "loader"), "--resident_data", "off")
    resident, log_r = run(tiny_regdb, str(tmp_path / "resident"), "--resident_data", "on")
    assert "data: loader with 0 worker(s)" in log_l and "data: training set resident on cpu" in log_r
    for k, v in loaded["model"].items():
        assert torch.equal(v, resident["model"][k]), k
    assert loaded["epoch"] == resident["epoch"] == 1


def test_a_run_resumed_on_the_other_data_path_continues_identically(tiny_regdb, tmp_path):
    full, _ = run(tiny_regdb, str(tmp_path / "full"), "--resident_data", "off", "--epochs", "3")
    cut, _ = run(tiny_regdb, str(tmp_path / "cut"), "--resident_data", "off")  # epochs 0..1 through the loader
    path = os.path.join(tmp_path, "cut", "models", cut["name"] + "_last.pth")
    train_mine.main(train_mine.get_args_parser().parse_args(["--resume", path, "--epochs", "3", "--gpu", "cpu",
                                                             "--resident_data", "on", "--log_path", ""]))
    end = torch.load(path, weights_only=False)
    assert end["epoch"] == 2
    for k, v in full["model"].items():
        assert torch.equal(v, end["model"][k]), k


def test_the_per_image_transform_keeps_the_loader_and_restarts_its_workers(tiny_regdb, monkeypatch):
    args = train_mine.get_args_parser().parse_args(["--cpu_aug", "--workers", "1", "--img_h", "32",
                                                    "--img_w", "16", "--pad", "2"])
    data = train_mine.build_train_data(argparse_namespace(args, dataset="demo", data_path=tiny_regdb, trial=1))
    sampler = data_loader.IdentitySampler(data.labels_v, data.labels_t, 2, 2)
    # auto picks the loader even where the set would be resident (a CUDA device), and says why
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (80 << 30, 80 << 30), raising=False)
    loader, line = train_mine.build_batches(data, sampler, args, torch.device("cuda", 0))  # builds, never runs
    assert isinstance(loader, DataLoader) and "--cpu_aug transforms each image in the loader's workers" in line
    # workers draw their seeds when they start: they restart every epoch, so its reseeding reaches them
    assert not loader.persistent_workers
    args.cpu_aug = False
    assert train_mine.build_batches(data, sampler, args, torch.device("cpu"))[0].persistent_workers


def argparse_namespace(args, **values):
    for k, v in values.items():
        setattr(args, k, v)
    return args


def test_graphs_are_off_on_the_cpu_and_the_log_says_which_path_runs(tiny_regdb, tmp_path):
    _, log = run(tiny_regdb, str(tmp_path))
    step = [line for line in log.splitlines() if line.startswith("step: ")]
    assert step == ["step: eager (CUDA graphs need a CUDA device); data: loader with 0 worker(s) (0.00 GiB of "
                    "images; the CPU gathers batches in memory itself); amp: off (float32)"]
    args = train_mine.get_args_parser().parse_args(["--compile", "off"])
    args.world_size = 1
    assert train_mine.compile_mode(args, torch.device("cpu")) == (None, "eager (--compile off)")
    args.compile = "auto"
    assert train_mine.compile_mode(args, torch.device("cpu"))[0] is None


class FakeCompilerError(Exception):
    pass


FakeCompilerError.__module__ = "torch._dynamo.exc"  # what compiler_error recognises


def test_a_compiler_failure_falls_back_to_eager_with_a_note(monkeypatch):
    notes = []
    model = torch.nn.Linear(3, 2)

    def broken(m, mode=None):
        def call(*a, **k):
            raise FakeCompilerError("no working C++ compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    wrapped = train_mine.CompiledModel(model, "default", notes.append)
    x = torch.randn(4, 3)
    with pytest.raises(FakeCompilerError) as e:
        wrapped(x)
    assert train_mine.compiler_error(e.value) and not train_mine.compiler_error(ValueError("data"))
    wrapped.fall_back(e.value)
    assert torch.equal(wrapped(x), model(x))
    assert wrapped.eval() is wrapped and not model.training and wrapped.train() is wrapped and model.training
    assert notes == ["note: torch.compile failed (FakeCompilerError: no working C++ compiler); training eager "
                     "from here on"]


def test_a_fall_back_restores_the_batch_norm_statistics_of_the_failed_step(monkeypatch):
    model = torch.nn.BatchNorm1d(3)

    def forward_then_fail(m, mode=None):  # as a backward compiled lazily fails after the forward ran
        def call(*a, **k):
            m(*a, **k)
            raise FakeCompilerError("backward compilation failed")
        return call

    monkeypatch.setattr(torch, "compile", forward_then_fail)
    wrapped = train_mine.CompiledModel(model, "default", lambda line: None)
    before = wrapped.buffers_copy()
    with pytest.raises(FakeCompilerError) as e:
        wrapped(torch.randn(8, 3) + 5)
    assert not torch.equal(model.running_mean, before["running_mean"])
    wrapped.fall_back(e.value, before)
    for k, b in model.named_buffers():
        assert torch.equal(b, before[k]), k


def test_training_through_a_failing_compiler_completes_eagerly(tiny_regdb, tmp_path, monkeypatch):
    def broken(m, mode=None):
        def call(*a, **k):
            raise FakeCompilerError("inductor unavailable")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    eager, _ = run(tiny_regdb, str(tmp_path / "eager"), "--compile", "off")
    fell_back, log = run(tiny_regdb, str(tmp_path / "fallback"), "--compile", "default")
    assert "note: torch.compile failed (FakeCompilerError: inductor unavailable)" in log
    assert "compilation and capture" not in log  # nothing was compiled
    for k, v in eager["model"].items():
        assert torch.equal(v, fell_back["model"][k]), k
