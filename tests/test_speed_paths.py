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
import utils


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
    sampler = utils.IdentitySampler(data.labels_v, data.labels_t, 3, 2, seed=1)
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
    # and the run that resumes from the other path continues identically
    assert loaded["epoch"] == resident["epoch"] == 1


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
    assert notes == ["note: torch.compile failed (FakeCompilerError: no working C++ compiler); training eager "
                     "from here on"]


def test_training_through_a_failing_compiler_completes_eagerly(tiny_regdb, tmp_path, monkeypatch):
    def broken(m, mode=None):
        def call(*a, **k):
            raise FakeCompilerError("inductor unavailable")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    eager, _ = run(tiny_regdb, str(tmp_path / "eager"), "--compile", "off")
    fell_back, log = run(tiny_regdb, str(tmp_path / "fallback"), "--compile", "default")
    assert "note: torch.compile failed (FakeCompilerError: inductor unavailable)" in log
    for k, v in eager["model"].items():
        assert torch.equal(v, fell_back["model"][k]), k
