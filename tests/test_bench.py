"""bench.py's reference path computes what the fast path computes (same weights, same batch: same loss
and gradients), in the authors' batch layout, and the benchmark runs end to end."""
import re

import numpy as np
import pytest
import torch

import bench
import data_loader
import loss as losses
import model_mine

CLASSES, STRIPS, DIM, P, K = 5, 2, 16, 2, 3


def config(**kw):
    return bench.get_args_parser().parse_args(
        ["--img_h", "32", "--img_w", "16", "--num_strips", str(STRIPS), "--local_feat_dim", str(DIM),
         "--classes", str(CLASSES), "--batch-size", str(P), "--num_pos", str(K)] +
        [f"--{k}={v}" for k, v in kw.items()])


def authors_batch(seed=0):
    """A normalised float batch in the authors' layout: P visible identity blocks of K, then the same
    identities' thermal blocks in the same order."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(P * K, 3, 32, 16, generator=g)
    t = torch.randn(P * K, 3, 32, 16, generator=g)
    ids = torch.tensor([3, 1])
    labels = ids.repeat_interleave(K).repeat(2)
    return v, t, labels


@pytest.mark.slow
def test_reference_net_has_the_authors_key_layout():
    net = bench.ReferenceNet(CLASSES, local_feat_dim=DIM, num_strips=STRIPS)
    keys = set(net.state_dict())
    for key in ("visible_module.visible.conv1.weight", "thermal_module.thermal.layer1.0.conv1.weight",
                "base_resnet.base.layer2.0.downsample.0.weight", "local_conv_list.1.0.weight",
                "local_conv_list.1.0.bias", "local_conv_list.0.1.running_var", "fc_list.1.weight", "fc_list.0.bias"):
        assert key in keys, key
    assert not any(k.startswith("head.") or ".fc." in k for k in keys)
    assert isinstance(net.local_conv_list[0][1], torch.nn.BatchNorm2d) and isinstance(net.fc_list[1], torch.nn.Linear)
    # and the project's model loads the authors' layout back as it is
    model_mine.embed_net(CLASSES, local_feat_dim=DIM, num_strips=STRIPS).load_state_dict(net.state_dict())


def assert_near(a, b, name, tol=1e-3):
    """Tensor-wise relative agreement: gradients through a deep fp32 network on a batch of 12, by two
    convolution layouts, differ by float rounding (about 1e-4 of their norm), a wrong term by far more."""
    assert a.shape == b.shape, name
    assert (a - b).norm() <= tol * b.norm() + 1e-9, (name, ((a - b).norm() / b.norm()).item())


@pytest.mark.slow
def test_reference_loss_and_gradients_equal_the_fast_path():
    args = config()
    fast = bench.fast_model(args, torch.device("cpu")).train()
    ref = bench.reference_model(args, torch.device("cpu")).train()
    v, t, labels = authors_batch()
    w_center = 2.0  # not 1, so that a misplaced weight shows
    total_f = losses.ReIDLoss(losses.CenterTripletLoss(margin=0.3), w_center, "off")(fast(v, t), labels)[0]
    total_r, loss_id, loss_tri, correct = bench.reference_loss(
        ref(v, t), labels, torch.nn.CrossEntropyLoss(), bench.ReferenceCenterLoss(0.3), w_center)
    assert loss_tri.item() > 0.05  # the triplet part matters in this comparison
    torch.testing.assert_close(total_r, total_f, rtol=1e-5, atol=1e-6)
    total_f.backward()
    total_r.backward()
    grads = {k: p.grad for k, p in ref.named_parameters()}
    h = fast.head
    for k, p in fast.named_parameters():
        if not k.startswith("head."):
            assert_near(grads[k], p.grad, k)
    for i in range(STRIPS):  # (the conv biases' true gradient is 0: a batch norm follows them)
        sl = slice(i * DIM, (i + 1) * DIM)
        pairs = ((f"local_conv_list.{i}.0.weight", h.conv_weight.grad[i, :, :, None, None]),
                 (f"local_conv_list.{i}.1.weight", h.bn.weight.grad[sl]),
                 (f"local_conv_list.{i}.1.bias", h.bn.bias.grad[sl]),
                 (f"fc_list.{i}.weight", h.fc_weight.grad[i]), (f"fc_list.{i}.bias", h.fc_bias.grad[i]))
        for k, g in pairs:
            assert grads[k].abs().max() > 0, k
            assert_near(grads[k], g, k)
    # the batch-norm statistics move alike too
    for i in range(STRIPS):
        torch.testing.assert_close(ref.local_conv_list[i][1].running_mean, h.bn.running_mean[i * DIM:(i + 1) * DIM])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_center_loss_equals_the_projects_on_the_authors_layout(seed):
    g = torch.Generator().manual_seed(seed)
    p, k = 4, 3
    labels = torch.randperm(20, generator=g)[:p].repeat_interleave(k).repeat(2)  # identities in sampler order
    feats = torch.randn(2 * p * k, 8, generator=g)
    feats[p * k:] = feats[:p * k] + 1.5 * torch.randn(p * k, 8, generator=g)  # some anchors satisfied, some not
    loss_r, correct_r = bench.ReferenceCenterLoss(0.3)(feats, labels)
    loss_p, correct_p = losses.CenterTripletLoss(margin=0.3)(feats, labels)
    torch.testing.assert_close(loss_r, loss_p, rtol=1e-5, atol=1e-6)
    assert correct_r == int(correct_p)
    assert 0 < correct_r < 2 * p  # a case where the hardest pairs are both ways


def coded_images(n, offset):
    """Images that say which they are (channel 0 at the centre: offset + index), which way they face
    (channel 1: a left-to-right ramp) and where the crop padded them (channel 2: 255, padding 0)."""
    x = np.zeros((n, 32, 16, 3), dtype=np.uint8)
    x[..., 0] = (offset + np.arange(n))[:, None, None]
    x[..., 1] = (np.arange(16) * 15)[None, None, :]
    x[..., 2] = 255
    return x


def decode(img):
    """(image index code, flipped, padded) of one normalised [3, 32, 16] tensor."""
    mean, std = torch.tensor(data_loader.MEAN), torch.tensor(data_loader.STD)
    raw = ((img * std[:, None, None] + mean[:, None, None]) * 255).round()
    ramp = raw[1, 16, 6:10]
    return int(raw[0, 16, 8]), bool(ramp[0] > ramp[-1]), bool((raw[2] == 0).any())


def test_reference_loader_yields_the_authors_batch_layout():
    labels_v = np.repeat(np.arange(4), [3, 4, 2, 3])
    labels_t = np.repeat(np.arange(4), [2, 3, 3, 2])
    visible, thermal = coded_images(len(labels_v), 0), coded_images(len(labels_t), 100)
    transform = data_loader.per_image_train_transform(32, 16, pad=2)  # the centre stays in every crop
    loader = bench.reference_loader(visible, labels_v, thermal, labels_t, P, K, 6, 2, transform, seed=1)
    batches = list(loader)
    assert len(batches) == 6
    flips, pads = set(), set()
    for v, t, label1, label2 in batches:
        assert v.dtype == torch.float32 and v.shape == t.shape == (P * K, 3, 32, 16)
        assert label1.dtype == torch.int64 and torch.equal(label1, label2)  # the same identity order
        blocks = label1.view(P, K)
        assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0].tolist())) == P  # P blocks of K
        for img, label, offset, labels in [(x, y, 0, labels_v) for x, y in zip(v, label1)] + \
                                          [(x, y, 100, labels_t) for x, y in zip(t, label2)]:
            code, flipped, padded = decode(img)
            assert labels[code - offset] == label  # the image of that identity and modality
            flips.add(flipped)
            pads.add(padded)
    assert flips == {True, False} and pads == {True, False}  # augmented image by image


@pytest.mark.slow
def test_bench_runs_end_to_end_and_prints_both_paths(capsys):
    args = bench.get_args_parser().parse_args(
        ["--device", "cpu", "--quick", "--img_h", "32", "--img_w", "16", "--num_strips", "2", "--local_feat_dim",
         "16", "--classes", "4", "--arch", "resnet18", "--steps", "2", "--warmup", "1", "--ref_workers", "2"])
    rows = bench.main(args)
    out = capsys.readouterr().out
    rate = {}
    for label in ("reference", "fast"):
        for source in ("synthetic", "pipeline"):
            m = re.search(rf"^{label} +{source} *: +([\d.]+) img/s +([\d.]+) ms/step +peak +\d+ MiB", out, re.M)
            assert m, (label, source, out)
            rate[label, source] = float(m.group(1))
            assert rate[label, source] > 0
            assert float(m.group(2)) == pytest.approx(1000 * 8 / rows[label, source][0], rel=0.01, abs=0.1)
    for source in ("synthetic", "pipeline"):
        m = re.search(rf"^  {source} *: ([\d.]+)x$", out, re.M)
        assert m, out
        # against the unrounded rates: the printed img/s are whole numbers, too coarse at a loaded CPU's rates
        assert float(m.group(1)) == pytest.approx(rows["fast", source][0] / rows["reference", source][0], abs=0.006)
    for half in ("fp32", "bf16/fp16"):
        for size in (4, 8):
            assert f"feature extraction {half}, batch {size}:" in out
    assert "SYSU trial metrics" in out and "RegDB split metrics" in out


def check_config(*extra):
    return bench.get_args_parser().parse_args(
        ["--check", "--device", "cpu", "--quick", "--arch", "resnet18", "--img_h", "32", "--img_w", "16",
         "--num_strips", "2", "--local_feat_dim", "16", "--classes", "8", "--steps", "2",
         "--compile_backend", "aot_eager", *extra])


@pytest.mark.slow
def test_the_self_check_runs_the_compiled_path_beside_eager_and_says_ok(capsys):
    assert bench.main(check_config()) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("OK", "FAIL"))]
    assert lines[0].startswith("OK   path: torch.compile mode default, backend aot_eager (this CPU's default is eager")
    assert "OK   losses agree with eager over 4 steps: largest relative difference 0.00e+00" in out  # bit-identical
    for text in ("OK   no fall-back to eager", "OK   graphs: 1; graph breaks: 0", "OK   recompiles after warm-up: 0",
                 "img/s through the real data path", "peak memory"):
        assert text in out, text
    assert len(lines) == 10 and not any(line.startswith("FAIL") for line in lines)
    assert out.rstrip().endswith("all checks passed")


@pytest.mark.slow
def test_the_self_check_fails_where_the_compiled_path_falls_back(capsys, monkeypatch):
    import train_mine

    def broken(gm, example_inputs):
        def run(*args):
            raise RuntimeError("injected: no working compiler")
        return run
    monkeypatch.setitem(train_mine.BACKENDS, "aot_eager", broken)
    assert bench.main(check_config()) == 1
    out = capsys.readouterr().out
    assert "FAIL fell back to eager (the note above)" in out and "note: torch.compile failed (RuntimeError: " \
        "injected: no working compiler)" in out and out.rstrip().endswith("1 check(s) failed")


@pytest.mark.parametrize("argv, match", [
    (["--classes", "0"], r"--classes must be at least --batch-size \(2 identities a batch\), got 0"),
    (["--classes", "1"], r"--classes must be at least --batch-size"),
    (["--ref_workers", "-1"], r"--ref_workers must be >= 0, got -1"),
    (["--workers", "-2"], r"--workers must be >= 0, got -2"),
    (["--batch_size", "0"], r"--batch_size must be >= 1, got 0"),  # not the default in its place
    (["--num_pos", "0"], r"--num_pos must be >= 1, got 0"),
])
def test_bad_flags_are_one_line_errors_before_any_work(argv, match, capsys, monkeypatch):
    def work(*a):
        raise AssertionError("measuring started")
    monkeypatch.setattr(bench, "measure_training", work)
    with pytest.raises(SystemExit, match=match) as e:
        bench.main(bench.get_args_parser().parse_args(["--device", "cpu", "--quick", "--arch", "resnet18", *argv]))
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value)
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_no_warm_up_steps_measure_the_fast_path():
    """--warmup 0: the fast path's timed steps run without an untimed epoch before them (an epoch of 0
    steps has no mean loss to return)."""
    args = config(warmup=0, steps=1, arch="resnet18", compile="off", amp="off")
    args.workers = 0
    rate, ms, _, loss = bench.measure_fast(args, torch.device("cpu"), "synthetic")
    assert rate > 0 and ms > 0 and np.isfinite(loss)
