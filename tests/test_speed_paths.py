"""The fast paths change speed, never results: a resident training set gives the loader's batches
and weights; CUDA graphs are off on the CPU and say so; a compiler failure falls back to eager."""
import os
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import data_loader
import train_mine


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


@pytest.fixture(scope="module")
def loader_run(tiny_regdb, tmp_path_factory):
    """(folder, checkpoint, log) of the 2-epoch run through the loader, trained once for the tests that
    compare with it (they read it, never change it)."""
    out = str(tmp_path_factory.mktemp("loader"))
    return (out, *run(tiny_regdb, out, "--resident_data", "off"))


@pytest.fixture(scope="module")
def eager_run(tiny_regdb, tmp_path_factory):
    """(checkpoint, log) of the 2-epoch eager run (--compile off), trained once for the tests that compare
    with it (they read it, never change it)."""
    return run(tiny_regdb, str(tmp_path_factory.mktemp("eager")), "--compile", "off")


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


@pytest.mark.slow
def test_resident_and_loader_training_give_identical_weights(tiny_regdb, tmp_path, loader_run):
    _, loaded, log_l = loader_run
    resident, log_r = run(tiny_regdb, str(tmp_path / "resident"), "--resident_data", "on")
    assert "data: loader with 0 worker(s)" in log_l and "data: training set resident on cpu" in log_r
    for k, v in loaded["model"].items():
        assert torch.equal(v, resident["model"][k]), k
    assert loaded["epoch"] == resident["epoch"] == 1


@pytest.mark.slow
def test_a_run_resumed_on_the_other_data_path_continues_identically(tiny_regdb, tmp_path, loader_run):
    full, _ = run(tiny_regdb, str(tmp_path / "full"), "--resident_data", "off", "--epochs", "3")
    shared, cut, _ = loader_run  # epochs 0..1 through the loader, resumed here on a copy of its folder
    shutil.copytree(os.path.join(shared, "models"), tmp_path / "cut")
    path = os.path.join(tmp_path, "cut", cut["name"] + "_last.pth")
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


@pytest.mark.slow
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


# Real torch.compile on the CPU with the aot_eager backend (graph capture and the autograd split, run
# by eager kernels: bit-identical to eager, no C++ compiler needed); failures are injected as backends.

def eager_backend(gm, example_inputs):
    from torch._dynamo.backends.registry import lookup_backend
    return lookup_backend("aot_eager")(gm, example_inputs)


def fails_in_the_forward(gm, example_inputs):
    def run(*args):
        raise RuntimeError("injected: the forward failed")
    return run


def fails_in_the_backward(gm, example_inputs):
    """The forward runs (and updates the batch-norm statistics); the backward, compiled lazily, fails."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._dynamo.backends.debugging import boxed_nop
    from torch._functorch.aot_autograd import make_boxed_func

    def backward(bw_gm, bw_inputs):
        def run(*args):
            raise RuntimeError("injected: the lazily compiled backward failed")
        return make_boxed_func(run)
    return aot_autograd(fw_compiler=boxed_nop, bw_compiler=backward)(gm, example_inputs)


def fails_at_the_second_step(gm, example_inputs):
    """As a CUDA-graph capture fails at step 1, after a good step 0."""
    compiled, calls = eager_backend(gm, example_inputs), []

    def run(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected: capture failed at the second step")
        return compiled(*args)
    return run


def compiled_run(data_path, out, monkeypatch, backend=eager_backend, *extra):
    monkeypatch.setitem(train_mine.BACKENDS, "aot_eager", backend)
    return run(data_path, out, "--compile", "default", "--compile_backend", "aot_eager", *extra)


@pytest.mark.slow
def test_the_compiled_step_trains_bit_identically_to_eager_through_an_evaluation(tiny_regdb, tmp_path,
                                                                                monkeypatch):
    evaluated = ("--eval_start", "0", "--eval_every", "1")
    eager, _ = run(tiny_regdb, str(tmp_path / "eager"), "--compile", "off", *evaluated)
    compiled, log = compiled_run(tiny_regdb, str(tmp_path / "compiled"), monkeypatch, eager_backend, *evaluated)
    assert "step: torch.compile mode default, backend aot_eager" in log
    assert "default compilation and capture: " in log and "paid once per run); 1 graph(s)" in log
    assert "compiled step at the end: 1 graph(s); no recompile after warm-up" in log  # eval between epochs
    assert "torch.compile failed" not in log and log.count("eval: Rank-1") == 2
    for k, v in eager["model"].items():
        assert torch.equal(v, compiled["model"][k]), k
    assert eager["metrics"] == compiled["metrics"]


@pytest.mark.slow
def test_a_resume_crosses_between_the_compiled_and_the_eager_step(tiny_regdb, tmp_path, monkeypatch):
    full, _ = run(tiny_regdb, str(tmp_path / "full"), "--compile", "off", "--epochs", "4")
    cut, _ = compiled_run(tiny_regdb, str(tmp_path / "cut"), monkeypatch)  # epochs 0..1 compiled
    path = os.path.join(tmp_path, "cut", "models", cut["name"] + "_last.pth")
    resume = ["--resume", path, "--gpu", "cpu", "--log_path", ""]
    train_mine.main(train_mine.get_args_parser().parse_args(resume + ["--epochs", "3", "--compile", "off"]))
    train_mine.main(train_mine.get_args_parser().parse_args(resume + ["--epochs", "4", "--compile", "default",
                                                                      "--compile_backend", "aot_eager"]))
    end = torch.load(path, weights_only=False)
    assert end["epoch"] == 3
    for k, v in full["model"].items():
        assert torch.equal(v, end["model"][k]), k


@pytest.mark.slow
@pytest.mark.parametrize("backend", [fails_in_the_forward, fails_in_the_backward, fails_at_the_second_step])
def test_a_failure_in_warm_up_falls_back_to_eager_on_the_eager_trajectory(tiny_regdb, tmp_path, monkeypatch,
                                                                           backend, eager_run):
    eager, _ = eager_run
    fell_back, log = compiled_run(tiny_regdb, str(tmp_path / "fallback"), monkeypatch, backend)
    notes = [line for line in log.splitlines() if "torch.compile failed" in line]
    assert len(notes) == 1 and notes[0].startswith("note: torch.compile failed (") and "injected: " in notes[0]
    assert notes[0].endswith("training eager from here on")
    for k, v in eager["model"].items():  # batch-norm statistics of the failed attempt restored
        assert torch.equal(v, fell_back["model"][k]), k


@pytest.mark.slow
def test_an_out_of_memory_error_is_reported_and_never_retried(tiny_regdb, tmp_path, monkeypatch):
    def out_of_memory(gm, example_inputs):
        def run(*args):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")
        return run
    with pytest.raises(MemoryError, match=r"out of memory in compiled training step 0 \(on the CPU\): lower "):
        compiled_run(tiny_regdb, str(tmp_path), monkeypatch, out_of_memory)
    log = open(next(p for p in (tmp_path / "log").iterdir() if p.suffix == ".log")).read()
    assert "torch.compile failed" not in log and log.rstrip().splitlines()[-1].startswith("error: out of memory")


@pytest.mark.slow
def test_an_error_the_eager_step_also_raises_is_raised_as_itself(monkeypatch):
    notes = []
    monkeypatch.setitem(train_mine.BACKENDS, "aot_eager", eager_backend)
    wrapped = train_mine.CompiledModel(torch.nn.Linear(3, 2), "default", notes.append, backend="aot_eager")

    def step(model):
        model(torch.randn(4, 3)).sum().backward()
        raise ValueError("labels out of range")  # the data's fault, compiled or not
    with pytest.raises(ValueError, match="labels out of range"):
        wrapped.run_step(step)
    assert notes == ["note: torch.compile failed (ValueError: labels out of range); training eager from here on"]
    x = torch.randn(2, 3)
    assert torch.equal(wrapped(x), wrapped.eager(x))  # eager from here on
    assert wrapped.eval() is wrapped and not wrapped.eager.training and wrapped.train() is wrapped


@pytest.mark.slow
def test_a_recompile_after_warm_up_is_logged_with_its_reason(monkeypatch):
    notes = []
    monkeypatch.setitem(train_mine.BACKENDS, "aot_eager", eager_backend)
    torch._dynamo.reset()
    wrapped = train_mine.CompiledModel(torch.nn.Linear(3, 2), "default", notes.append, backend="aot_eager")

    def step(rows):
        return lambda model: model(torch.randn(rows, 3)).sum().backward()
    for _ in range(train_mine.WARMUP_STEPS):
        wrapped.run_step(step(4))
    wrapped.log_end()
    assert notes[-1] == "compiled step at the end: 1 graph(s); no recompile after warm-up"
    wrapped.run_step(step(5))  # a new batch shape: a recompile
    wrapped.log_end()
    assert notes[-1].startswith("compiled step at the end: 2 graph(s); warning: 1 recompile(s) after warm-up (")
    assert "size mismatch" in notes[-1]  # torch's guard failure, its words
