"""Two gloo processes under torchrun: one DDP step equals one step on the averaged gradients of the
two ranks' batches, rank 0 alone logs and writes, and the checkpoint resumes in one process."""
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

import data_loader
import loss as losses
import model_mine
import train_mine
import settings
import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # torchrun starts two processes
FLAGS = ["--dataset", "demo", "--img_h", "32", "--img_w", "16", "--num_strips", "2", "--local_feat_dim", "16",
         "--batch-size", "2", "--num_pos", "2", "--steps_per_epoch", "1", "--workers", "0", "--gpu", "cpu",
         "--eval_start", "100", "--seed", "5", "--lr", "0.1", "--epochs", "1", "--optim", "sgd",
         "--amp", "off"]  # the reference step is float32


def reference_step(data_path):
    """One SGD step of a single process on the mean of the two ranks' separately computed gradients."""
    args = train_mine.get_args_parser().parse_args(FLAGS + ["--data_path", data_path])
    settings.fill_defaults(args)
    args.world_size = 2
    data = data_loader.regdb_train_data(data_path, 1, 16, 32)
    utils.set_seed(args.seed)
    model = model_mine.embed_net(data.num_classes, arch=args.arch, share_net=2, pcb="on", local_feat_dim=16,
                                 num_strips=2, gem_p=args.gem_p, pretrained=args.pretrained)
    optimizer = train_mine.build_optimizer(model, args)
    train_mine.adjust_learning_rate(optimizer, 0, args.lr, **train_mine.schedule(args))
    criterion = losses.ReIDLoss(losses.CenterTripletLoss(margin=0.3), args.w_center, args.label_smooth)
    grads = []
    for rank in (0, 1):
        sampler = data_loader.IdentitySampler(data.labels_v, data.labels_t, 2, 2, args.seed, rank)
        loader = DataLoader(data_loader.BatchData(data), sampler=sampler, batch_size=None, generator=torch.Generator())
        torch.manual_seed(train_mine.epoch_seed(args.seed, 0, rank))
        v, t, labels = next(iter(loader))
        v, t, labels = data_loader.BatchAugment(pad=args.pad)(v, t, labels)
        model.zero_grad()
        model.train()
        criterion(model(v, t), labels)[0].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for p, g0, g1 in zip(model.parameters(), *grads):
        p.grad = (g0 + g1) / 2
    optimizer.step()
    return model


def test_two_process_gloo_step_equals_averaged_gradients(tiny_regdb, tmp_path):
    data_path = tiny_regdb
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "train_mine.py")] + FLAGS + [
        "--data_path", data_path, "--model_path", str(out / "models"), "--log_path", str(out / "log")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("epoch 0: loss") == 1  # only rank 0 logs
    files = sorted(os.listdir(out / "models"))
    assert len(files) == 2 and files[0].endswith("_best.pth") and files[1].endswith("_last.pth")
    ckpt = torch.load(out / "models" / files[1], weights_only=False)
    assert ckpt["args"]["world_size"] == 2

    # one thread, like each torchrun worker: GeM's 10th powers magnify summation-order differences
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = reference_step(data_path)
    finally:
        torch.set_num_threads(threads)
    for name, p in ref.named_parameters():
        assert torch.allclose(p.detach(), ckpt["model"][name], atol=1e-5, rtol=1e-4), name

    # ... and the two-process checkpoint resumes in one process
    resumed = train_mine.get_args_parser().parse_args(FLAGS + [
        "--epochs", "2", "--data_path", data_path, "--model_path", str(out / "single"), "--log_path", str(out / "log"),
        "--resume", str(out / "models" / files[1])])
    train_mine.main(resumed)
    assert torch.load(out / "single" / files[1], weights_only=False)["epoch"] == 1
