"""Several processes (gloo on the CPU, as torchrun starts them) train as one process on the same global
batches: the sampler splits each 1-process batch by identity, the losses see the gathered global batch
in the 1-process order, and DDP's update equals the 1-process update; P must split into whole
identities; a checkpoint resumes on another number of processes with the batches it would have drawn;
and two torchrun "machines" on one folder train the demo, generated once, into one checkpoint set."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import data_loader
import demo_data
import train_mine
import settings
import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--dataset", "demo", "--img_h", "32", "--img_w", "16", "--batch-size", "4", "--num_pos", "2",
         "--steps_per_epoch", "1", "--workers", "0", "--gpu", "cpu", "--eval_start", "100", "--seed", "5",
         "--lr", "0.1", "--epochs", "1", "--optim", "sgd", "--amp", "off"]  # the reference step is float32
METHOD_FLAGS = {"hctri": ["--method", "hctri", "--num_strips", "2", "--local_feat_dim", "16"],  # PCB: [S, B, D]
                "agw": ["--method", "agw"]}  # global feature [B, D], WRT, non-local blocks


# ----------------------------------------------------------------------------- fast

def test_sampler_splits_each_global_batch_by_identity():
    labels = np.arange(120) % 12
    for extra in (False, True):
        whole = data_loader.IdentitySampler(labels, labels[::-1], 2, 6, seed=3, extra_batch=extra)
        for n in (1, 2, 3):
            parts = [data_loader.IdentitySampler(labels, labels[::-1], 2, 6, 3, r, extra, world_size=n)
                     for r in range(n)]
            assert all(len(p) == len(whole) for p in parts)  # the 1-process steps per epoch
            for epoch in (0, 4):
                for s in [whole] + parts:
                    s.set_epoch(epoch)
                for step, (batch, *shares) in enumerate(zip(whole, *parts)):
                    for modality in (0, 1):
                        assert np.array_equal(np.concatenate([b[modality] for b in shares]), batch[modality])
                    for b in shares:  # whole identities: 6/n of them, K = 2 images each, in both modalities
                        ids = labels[b[0]].reshape(6 // n, 2)
                        assert (ids == ids[:, :1]).all() and len(set(ids[:, 0])) == 6 // n
                        assert np.array_equal(labels[::-1][b[1]].reshape(6 // n, 2), ids)


def test_sampler_and_settings_refuse_a_batch_that_does_not_split():
    with pytest.raises(ValueError, match=r"--batch-size 7: .* multiple of 2; use 6 or 8$"):
        data_loader.IdentitySampler(np.arange(40) % 10, np.arange(40) % 10, 2, 7, world_size=2)
    with pytest.raises(ValueError, match=r"--batch-size 2: .* multiple of 3; use 3$"):
        data_loader.check_split(2, 3)


@pytest.mark.parametrize("world", [2, 3])
def test_gathered_rows_are_in_the_one_process_order(monkeypatch, world):
    """gather_rows, given each process's rows (all_gather faked), gives the 1-process batch: segment by
    segment (visible, thermal; CAJ's three; three expansions of [visible; thermal]), ranks in order."""
    seg, rank = 3, {"r": 0}
    for segments in (2, 3, 6):
        for shape in ((world * segments * seg,), (world * segments * seg, 5), (4, world * segments * seg, 5)):
            whole = torch.randn(shape)
            axis = -2 if len(shape) > 1 else 0
            blocks = whole.movedim(axis, 0).unflatten(0, (segments, world, seg))  # 1-process: [S, N, seg, ...]
            local = [blocks[:, r].flatten(0, 1).movedim(0, axis) for r in range(world)]

            def fake_all_gather(parts, y):
                for r, part in enumerate(parts):
                    part.copy_(local[r].movedim(axis, 0))
            monkeypatch.setattr(train_mine.dist, "all_gather", fake_all_gather)
            monkeypatch.setattr(train_mine.dist, "get_world_size", lambda: world)
            monkeypatch.setattr(train_mine.dist, "get_rank", lambda: rank["r"])
            for r in range(world):
                rank["r"] = r
                assert torch.equal(train_mine.gather_rows(local[r], seg, "x"), whole)
    with pytest.raises(ValueError, match="'feat' has 7 rows"):
        train_mine.gather_rows(torch.zeros(7, 2), 3, "feat")


# ----------------------------------------------------------------------------- two processes

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(launcher, flags, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, os.path.join(ROOT, "train_mine.py"), *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)


@pytest.mark.slow
def test_batch_that_does_not_split_is_refused_before_any_folder(tmp_path):
    res = torchrun(["--standalone", "--nproc_per_node", "2"], FLAGS + METHOD_FLAGS["hctri"] + [
        "--batch-size", "3", "--data_path", str(tmp_path / "demo"), "--model_path", str(tmp_path / "models"),
        "--log_path", str(tmp_path / "log")], tmp_path)
    text = res.communicate(timeout=600)[0]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert res.returncode != 0 and len(errors) == 1, text  # said once, by rank 0
    assert errors[0].startswith("error: --batch-size 3: ") and errors[0].endswith("multiple of 2; use 2 or 4")
    assert os.listdir(tmp_path) == []  # no demo generated, no run folders


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory):
    return str(demo_data.make_regdb_demo(str(tmp_path_factory.mktemp("dist") / "demo"), num_ids=8, imgs_per_id=4,
                                         img_w=16, img_h=32, num_splits=1))


@pytest.fixture(scope="module")
def two_process_runs(demo_path, tmp_path_factory):
    """{method: (folder, checkpoint file name)} of one 2-process torchrun step per method, the methods'
    launches running at once (each --standalone launch rendezvouses on a port of its own)."""
    runs, launched = {}, {}
    for method, extra in METHOD_FLAGS.items():
        out = tmp_path_factory.mktemp(f"ddp-{method}")
        launched[method] = out, torchrun(["--standalone", "--nproc_per_node", "2"], FLAGS + extra + [
            "--data_path", demo_path, "--model_path", str(out / "models"), "--log_path", str(out / "log")], out)
    for method, (out, res) in launched.items():
        text = res.communicate(timeout=600)[0]
        assert res.returncode == 0, text
        assert text.count("epoch 0: loss") == 1 and "2 process(es) on cpu, 2 identities each" in text  # rank 0 logs
        files = sorted(os.listdir(out / "models"))
        assert len(files) == 2 and files[0].endswith("_best.pth") and files[1].endswith("_last.pth")
        runs[method] = out, files[1]
    return runs


def one_process_reference(method, data_path):
    """The 1-process step on the global batch of the first step, each half's batch norm on that half's
    images (as the two processes compute it), the loss on the whole batch in the 1-process order
    assembled here by hand: [visible of rank 0; visible of rank 1; thermal of rank 0; thermal of rank 1]."""
    args = train_mine.get_args_parser().parse_args(FLAGS + METHOD_FLAGS[method] + ["--data_path", data_path])
    args.world_size, args.rank = 1, 0
    settings.resolve_training(args, set())
    data = data_loader.regdb_train_data(data_path, 1, 16, 32)
    utils.set_seed(args.seed)
    model = train_mine.build_model(data.num_classes, args, args.pretrained)
    optimizer = train_mine.build_optimizer(model, args)
    train_mine.adjust_learning_rate(optimizer, 0, args.lr, **train_mine.schedule(args))
    extra = settings.METHODS[method].reproduction.extra_batch
    halves = []
    for rank in (0, 1):
        sampler = data_loader.IdentitySampler(data.labels_v, data.labels_t, 2, 4, args.seed, rank, extra, 2)
        loader = DataLoader(data_loader.BatchData(data), sampler=sampler, batch_size=None, generator=torch.Generator())
        torch.manual_seed(train_mine.epoch_seed(args.seed, 0, rank))  # each process's augmentation stream
        v, t, labels = data_loader.BatchAugment(pad=args.pad)(*next(iter(loader)))
        model.train()
        halves.append((model(v, t), labels))
    seg = len(halves[0][1]) // 2
    (out0, l0), (out1, l1) = halves

    def one_process(a, b):
        rows = lambda x, s: x[..., s, :] if x.dim() > 1 else x[s]  # noqa: E731
        return torch.cat([rows(a, slice(0, seg)), rows(b, slice(0, seg)), rows(a, slice(seg, None)),
                          rows(b, slice(seg, None))], dim=-2 if a.dim() > 1 else 0)
    labels = one_process(l0, l1)
    whole = data_loader.IdentitySampler(data.labels_v, data.labels_t, 2, 4, args.seed, 0, extra)
    assert torch.equal(labels, data_loader.BatchData(data)[next(iter(whole))][2])  # the 1-process batch
    out = {k: one_process(out0[k], out1[k]) for k in out0}
    modality = utils.modality_column(2 * seg, 2 * seg)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    model.zero_grad()
    settings.METHODS[method].loss(args)(out, labels, modality)[0].backward()
    optimizer.step()
    return model, before


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHOD_FLAGS))
def test_two_process_step_equals_the_one_process_step(two_process_runs, demo_path, method):
    out, last = two_process_runs[method]
    ckpt = torch.load(out / "models" / last, weights_only=False)
    assert ckpt["args"]["world_size"] == 2 and ckpt["args"]["lr"] == 0.1
    # one thread, like each torchrun worker: GeM's powers magnify summation-order differences
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref, before = one_process_reference(method, demo_path)
    finally:
        torch.set_num_threads(threads)
    moved = []
    for name, p in ref.named_parameters():
        assert torch.allclose(p.detach(), ckpt["model"][name], atol=1e-5, rtol=0), name
        moved.append(float((p.detach() - before[name]).abs().max()))
    # the step moved the weights: most beyond the tolerance, some by 100 times it
    assert sum(m > 1e-5 for m in moved) > len(moved) // 2 and max(moved) > 1e-3, moved


@pytest.mark.slow
def test_two_process_checkpoint_resumes_in_one_process_with_the_same_batches(two_process_runs, demo_path,
                                                                               monkeypatch):
    out, last = two_process_runs["hctri"]
    drawn = []
    draw = data_loader.IdentitySampler.__iter__

    def recorded(self):
        batches = list(draw(self))
        drawn.append(batches)
        yield from batches
    monkeypatch.setattr(data_loader.IdentitySampler, "__iter__", recorded)
    args = train_mine.get_args_parser().parse_args(FLAGS + METHOD_FLAGS["hctri"] + [
        "--epochs", "2", "--data_path", demo_path, "--model_path", str(out / "single"),
        "--log_path", str(out / "log"), "--resume", str(out / "models" / last)])
    train_mine.main(args)
    assert args.world_size == 1 and torch.load(out / "single" / last, weights_only=False)["epoch"] == 1
    data = data_loader.regdb_train_data(demo_path, 1, 16, 32)
    shares = [data_loader.IdentitySampler(data.labels_v, data.labels_t, 2, 4, 5, r, world_size=2) for r in (0, 1)]
    for s in shares:
        s.set_epoch(1)
    assert len(drawn) == 1 and len(drawn[0]) == len(shares[0])
    for batch, *mine in zip(drawn[0], *shares):  # epoch 1 as the two processes would have drawn it
        for modality in (0, 1):
            assert np.array_equal(batch[modality], np.concatenate([m[modality] for m in mine]))


def two_machines(tmp_path, data_paths):
    """Two torchrun launches of one process each, 'machines' 0 and 1 on 127.0.0.1, on one folder:
    (their outputs, the checkpoint folder)."""
    port, runs = free_port(), []
    for node, data_path in enumerate(data_paths):
        launcher = ["--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1", "--master_addr",
                    "127.0.0.1", "--master_port", str(port)]
        runs.append(torchrun(launcher, FLAGS + METHOD_FLAGS["hctri"] + [
            "--data_path", data_path, "--model_path", str(tmp_path / "models"), "--log_path",
            str(tmp_path / "log")], tmp_path))
    texts = [r.communicate(timeout=600)[0] for r in runs]
    return [(r.returncode, t) for r, t in zip(runs, texts)]


@pytest.mark.slow
def test_two_machines_share_one_folder(tmp_path):
    demo = str(tmp_path / "demo")  # made by the run, once, by global rank 0
    (rc0, text0), (rc1, text1) = two_machines(tmp_path, [demo, demo])
    assert rc0 == 0 and rc1 == 0, text0 + text1
    assert text0.count("demo data written to") == 1 and "demo data written" not in text1
    assert text0.count("epoch 0: loss") == 1 and "epoch 0: loss" not in text1  # global rank 0 alone logs
    files = sorted(os.listdir(tmp_path / "models"))
    assert len(files) == 2 and files[0].endswith("_best.pth") and files[1].endswith("_last.pth")
    assert demo_data.read_meta(demo) is not None


@pytest.mark.slow
def test_a_machine_without_the_dataset_is_one_line_naming_its_rank(tmp_path, demo_path):
    missing = str(tmp_path / "elsewhere")  # machine 1 does not see the folder machine 0 reads
    (rc0, text0), (rc1, text1) = two_machines(tmp_path, [demo_path, missing])
    assert rc0 != 0 and rc1 != 0
    line = [x for x in text0.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and line[0].startswith("error: rank 1 of 2 (on ") and missing in line[0], text0
    assert not os.path.exists(tmp_path / "models")  # nothing made


@pytest.mark.slow
def test_bench_prints_the_per_process_share_as_a_prediction(capsys):
    import bench
    args = bench.get_args_parser().parse_args(
        ["--device", "cpu", "--img_h", "32", "--img_w", "16", "--num_strips", "2", "--local_feat_dim", "16",
         "--classes", "4", "--arch", "resnet18", "--steps", "2", "--warmup", "1", "--batch-size", "4",
         "--num_pos", "2", "--workers", "0", "--processes", "2", "4"])
    bench.measure_shares(args, torch.device("cpu"), {("fast", "synthetic"): (1.0, 1000.0, 0, 0)})
    out = capsys.readouterr().out
    for n, ids in ((2, 2), (4, 1)):
        line = [x for x in out.splitlines() if x.startswith(f"  N={n}: {ids} identities ({4 * ids} images)")]
        assert len(line) == 1 and "predicted SYSU-MM01 epoch on" in line[0] and "a prediction" in line[0], out
    with pytest.raises(SystemExit, match="--processes 3: .* P=4"):
        bench.main(bench.get_args_parser().parse_args(["--device", "cpu", "--quick", "--batch-size", "4",
                                                        "--processes", "3"]))
