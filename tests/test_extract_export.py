"""extract.py (FeatureExtractor and its CLI) and export.py (ONNX, TorchScript, model.json) on tiny models."""
import json
import os
import runpy
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import data_loader
import data_manager
import deen
import eval_metrics
import export
import extract
import model_mine
import test_mine
import utils
from checkpoints import model_from_checkpoint, on_device

CPU = torch.device("cpu")
IMG_W, IMG_H = 32, 64
HEADS = {"pcb": dict(pcb="on", num_strips=2, local_feat_dim=16), "global": dict(pcb="off"),
         "dgtl": dict(head="dgtl", bpool="gem", cpool="gem"),
         "dgtl-no-coarse": dict(head="dgtl", bpool="max", cpool="no")}
# a CAJ checkpoint: AGW's network (non-local blocks, global head), which FeatureExtractor flips by default
OTHERS = {"caj": dict(pcb="off", non_local="on")}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def randomize_norms(model, seed):
    """Random batch-norm statistics and affine weights, each module its own: an untrained model's
    residual blocks start as identities and both streams as copies, which would hide a wrong stream."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{head: path} of this project's checkpoints of tiny ResNet-18 models trained at 64x32."""
    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for i, (name, kw) in enumerate({**HEADS, **OTHERS}.items()):
        torch.manual_seed(i)
        model = randomize_norms(model_mine.embed_net(4, arch="resnet18", share_net=2, **kw), i)
        out[name] = str(folder / f"{name}.pth")
        method = "caj" if name == "caj" else "dgtl" if "head" in kw else "hctri"
        utils.atomic_save({"model": model.state_dict(), "arch": model.config,
                           "args": {"img_w": IMG_W, "img_h": IMG_H, "method": method}}, out[name])
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of images of several sizes and modes (one in a sub-folder, one stray non-image)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (70, 30, 3), dtype=np.uint8)).save(folder / "b.jpg")
    Image.fromarray(rng.integers(0, 256, (30, 17), dtype=np.uint8)).save(folder / "c_grey.png")
    Image.fromarray(rng.integers(0, 65536, (50, 25), dtype=np.uint16)).save(folder / "sub" / "d_16bit.png")
    Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(folder / "sub" / "e.png")
    (folder / "notes.txt").write_text("not an image")
    return str(folder)


def reference_model(path):
    model, _ = model_from_checkpoint(path)
    return on_device(model, CPU).eval()


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.slow
def test_extractor_gives_test_mines_features(checkpoints, images, head):
    extractor = extract.FeatureExtractor(checkpoints[head], device="cpu", batch_size=3)
    model = reference_model(checkpoints[head])
    paths = data_manager.images_under(images, "images")
    assert len(paths) == 5 and (extractor.img_w, extractor.img_h) == (IMG_W, IMG_H)
    uint8 = data_loader.load_images(paths, IMG_W, IMG_H, workers=1)
    got = {}
    for modality in data_manager.MODALITIES:
        got[modality] = extractor(images, modality, all_features=True)
        want = eval_metrics.extract_features(model, uint8, modality, CPU, batch_size=3, all_features=True)
        assert list(got[modality]) == list(want) == list(model.feature_names)  # the reported feature first
        for name, f in want.items():
            assert got[modality][name].dtype == np.float32
            assert np.array_equal(got[modality][name], f.numpy())  # the same computation, bit for bit
        assert np.array_equal(extractor(paths, modality), got[modality][extractor.feature])
    assert not np.allclose(got["visible"][extractor.feature], got["thermal"][extractor.feature], atol=1e-3)


def test_images_in_memory_give_the_features_of_their_files(checkpoints, images):
    extractor = extract.FeatureExtractor(checkpoints["pcb"], device="cpu")
    paths = data_manager.images_under(images, "images")
    from_files = extractor(paths, "thermal")
    pil = [Image.open(p) for p in paths]  # every mode as read: RGB, L, I;16
    assert np.array_equal(extractor(pil, "thermal"), from_files)
    rgb = [p for p in paths if Image.open(p).mode == "RGB" and p.endswith(".png")]
    arrays = [np.array(Image.open(p)) for p in rgb]
    assert np.array_equal(extractor(arrays, "thermal"), extractor(rgb, "thermal"))
    assert np.array_equal(extractor(np.stack(arrays[:1]), "thermal"), extractor(rgb[:1], "thermal"))
    with pytest.raises(ValueError, match=r"image 0: expected a uint8 HxWx3 array, got float32"):
        extractor([np.zeros((8, 4, 3), np.float32)])
    with pytest.raises(ValueError, match="modality must be 'visible' or 'thermal', got 'infrared'"):
        extractor(paths, "infrared")


def test_an_image_without_pixels_is_refused_not_read_as_black(checkpoints):
    extractor = extract.FeatureExtractor(checkpoints["pcb"], device="cpu")
    good = np.zeros((8, 4, 3), np.uint8)
    cases = [([good, np.zeros((0, 5, 3), np.uint8)], r"image 1: it has no pixels \(0x5, HxW\)"),
             ([good, np.zeros((7, 0, 3), np.uint8)], r"image 1: it has no pixels \(7x0, HxW\)"),
             ([good, Image.new("RGB", (0, 0))], r"image 1: it has no pixels \(0x0, HxW\)"),
             (np.zeros((2, 0, 5, 3), np.uint8), r"image 0: it has no pixels \(0x5, HxW\)")]
    for images, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            extractor(images)
        one_line(e)


@pytest.mark.slow
def test_original_code_checkpoints_take_the_flags_and_test_mines_search_uses_the_extractor(checkpoints, images,
                                                                                          tmp_path):
    model, _ = model_from_checkpoint(checkpoints["pcb"])
    original = str(tmp_path / "original.t")
    torch.save({"net": model_mine.to_original_state_dict(model), "epoch": 1}, original)
    flags = dict(arch="resnet18", share_net=2, num_strips=2, local_feat_dim=16, gem_p=model.gem_p)
    ours = extract.FeatureExtractor(checkpoints["pcb"], device="cpu")(images, "thermal")
    theirs = extract.FeatureExtractor(original, device="cpu", img_w=IMG_W, img_h=IMG_H, **flags)
    assert np.array_equal(theirs(images, "thermal"), ours)
    with pytest.raises(ValueError, match="does not fit the model"):
        extract.FeatureExtractor(original, device="cpu", **dict(flags, num_strips=4))
    argv = ["--resume", original, "--query_dir", images, "--gallery_dir", images, "--query_modal", "thermal",
            "--img_w", str(IMG_W), "--img_h", str(IMG_H), "--gpu", "cpu", "--vis_dir", str(tmp_path / "vis")]
    argv += [f"--{k}={v}" for k, v in flags.items()]
    csv_path = test_mine.main(test_mine.get_args_parser().parse_args(argv))
    top = [line.split(",") for line in open(csv_path).read().splitlines()[1:] if line.split(",")[1] == "1"]
    gallery = theirs(images, "visible")
    assert [float(r[3]) for r in top] == pytest.approx(list(-(ours @ gallery.T).max(1)), abs=1e-4)


def test_extract_cli_writes_features_and_paths(checkpoints, images, tmp_path):
    out = tmp_path / "res" / "feats.npy"
    feats = extract.main(["--resume", checkpoints["dgtl"], "--images", images, "--modality", "thermal",
                          "--out", str(out), "--gpu", "cpu"], log=lambda *a: None)
    saved = np.load(out)
    assert saved.shape == (5, 512) and saved.dtype == np.float32 and np.array_equal(saved, feats)
    rows = (tmp_path / "res" / "feats.csv").read_text().splitlines()
    assert rows[0] == "row,path" and [r.split(",", 1)[1] for r in rows[1:]] == data_manager.images_under(images, "x")
    extractor = extract.FeatureExtractor(checkpoints["dgtl"], device="cpu")
    assert np.array_equal(saved, extractor(images, "thermal"))
    assert sorted(os.listdir(tmp_path / "res")) == ["feats.csv", "feats.npy"]  # no temporaries left


def one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def test_extract_bad_inputs_are_one_line_errors(checkpoints, images, tmp_path):
    def run(*argv):
        return extract.main(["--gpu", "cpu", *argv], log=lambda *a: None)
    out = str(tmp_path / "f.npy")
    base = ["--images", images, "--out", out]
    with pytest.raises(FileNotFoundError, match="no such checkpoint file") as e:
        run("--resume", str(tmp_path / "missing.pth"), *base)
    one_line(e)
    foreign = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), foreign)
    with pytest.raises(ValueError, match="not a checkpoint of this project") as e:
        run("--resume", str(foreign), *base)
    one_line(e)
    with pytest.raises(ValueError, match="--modality must be 'visible' or 'thermal'") as e:
        run("--resume", checkpoints["pcb"], *base, "--modality", "infrared")
    one_line(e)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match=r"cannot read image .*x\.png") as e:
        run("--resume", checkpoints["pcb"], "--images", str(broken), "--out", out)
    one_line(e)
    with pytest.raises(ValueError, match="a folder, not a file") as e:
        run("--resume", checkpoints["pcb"], "--images", images, "--out", str(tmp_path))
    one_line(e)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"--out .*cannot write there \(.*file is a file") as e:
        run("--resume", checkpoints["pcb"], "--images", images, "--out", str(tmp_path / "file" / "f.npy"))
    one_line(e)
    with pytest.raises(ValueError, match="that is the input"):
        run("--resume", checkpoints["pcb"], "--images", images, "--out", out, "--csv", checkpoints["pcb"])
    with pytest.raises(ValueError, match="unknown flag"):
        extract.FeatureExtractor(checkpoints["pcb"], device="cpu", strips=3)
    assert not os.path.exists(out) and not os.path.exists(tmp_path / "f.csv")


def needs_onnx():
    """onnxruntime, after checking onnx is there too (.ci/run installs both; plain pytest may lack them)."""
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    """exported(head, fmt) -> (folder, model.json), each exported once."""
    done = {}

    def get(head, fmt):
        if (head, fmt) not in done:
            folder = str(tmp_path_factory.mktemp("export") / f"{head}-{fmt}")
            lines = []
            export.main(["--resume", checkpoints[head], "--out", folder, "--format", fmt], log=lines.append)
            assert len(lines) == 3 and "largest absolute difference" in lines[0]
            done[head, fmt] = folder, json.load(open(os.path.join(folder, export.MANIFEST)))
        return done[head, fmt]
    return get


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("fmt", export.FORMATS)
@pytest.mark.parametrize("head", HEADS)
def test_exported_models_give_pytorchs_features(checkpoints, exported, head, fmt):
    if fmt == "onnx":
        needs_onnx()
    folder, meta = exported(head, fmt)
    model = reference_model(checkpoints[head])
    ext = export.FORMATS[fmt]
    assert sorted(os.listdir(folder)) == sorted(["model.json", "visible" + ext, "thermal" + ext])
    assert meta["files"] == sorted(["visible" + ext, "thermal" + ext])
    assert meta["modalities"] == {"visible": "visible" + ext, "thermal": "thermal" + ext}
    assert (meta["img_h"], meta["img_w"], meta["feature"]) == (IMG_H, IMG_W, model.feature_names[0])
    assert meta["mean"] == list(data_loader.MEAN) and meta["std"] == list(data_loader.STD)
    assert meta["method"] == ("dgtl" if model.config["head"] == "dgtl" else "hctri")
    assert meta["resize"] == "lanczos" and meta["torch"] == torch.__version__
    assert meta["checkpoint"]["name"] == f"{head}.pth" and len(meta["checkpoint"]["sha256"]) == 64
    torch.manual_seed(1)
    for modality in data_manager.MODALITIES:
        if fmt == "onnx":
            import onnxruntime
            session = onnxruntime.InferenceSession(os.path.join(folder, meta["modalities"][modality]),
                                                   providers=["CPUExecutionProvider"])
            run = lambda x: session.run(None, {"images": x.numpy()})[0]  # noqa: E731
        else:
            module = torch.jit.load(os.path.join(folder, meta["modalities"][modality]))
            run = lambda x: module(x).detach().numpy()  # noqa: E731
        for n in (1, 7):
            x = torch.randn(n, 3, IMG_H, IMG_W)
            with torch.no_grad():
                want = model.features(x, modality)[model.feature_names[0]].numpy()
            got = run(x)
            assert got.shape == want.shape == (n, meta["feature_dim"])
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def run_exported(folder, meta, modality):
    """A function running one exported file on a float32 numpy batch, as a user without this project does."""
    path = os.path.join(folder, meta["modalities"][modality])
    if meta["format"] == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda x: session.run([meta["output"]], {meta["input"]: x})[0]
    module = torch.jit.load(path)
    return lambda x: module(torch.from_numpy(x)).detach().numpy()


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("fmt", export.FORMATS)
@pytest.mark.parametrize("head", ["pcb", "caj"])
@pytest.mark.slow
def test_model_json_alone_reproduces_the_extractors_default(checkpoints, images, exported, head, fmt):
    """The README's model.json recipe gives FeatureExtractor's default features: CAJ's flip-averaged
    ones included (the exported file averages with the mirror image itself)."""
    if fmt == "onnx":
        needs_onnx()
    folder, meta = exported(head, fmt)
    assert meta["flip_test"] == ("on" if head == "caj" else "off")
    paths, batch = users_batch(images, meta)
    extractor = extract.FeatureExtractor(checkpoints[head], device="cpu")
    assert extractor.flip == (head == "caj")
    for modality in data_manager.MODALITIES:
        got = run_exported(folder, meta, modality)(batch)
        np.testing.assert_allclose(got, extractor(paths, modality), rtol=0, atol=1e-5)


def users_batch(images, meta):
    """(paths, [N, 3, H, W] float32) of the 8-bit images in images, prepared by README's model.json recipe,
    as a user without this project does."""
    paths = [p for p in data_manager.images_under(images, "x") if Image.open(p).mode in ("RGB", "L")]
    mean, std = np.float32(meta["mean"]), np.float32(meta["std"])
    batch = []
    for p in paths:
        img = Image.open(p).convert("RGB").resize((meta["img_w"], meta["img_h"]), Image.LANCZOS)
        batch.append(((np.asarray(img, np.float32) / 255 - mean) / std).transpose(2, 0, 1))
    return paths, np.stack(batch)


@pytest.fixture(scope="module")
def deen_checkpoint(tmp_path_factory):
    """A tiny DEEN checkpoint of this project's (ResNet-18 at 32x16, as tests/test_deen.py builds one), its
    batch norms random: the MFA blocks' zero-initialised output norms would make them identities."""
    torch.manual_seed(0)
    model = randomize_norms(deen.DEEN(4, arch="resnet18"), 7)
    path = str(tmp_path_factory.mktemp("deen") / "deen.pth")
    utils.atomic_save({"model": model.state_dict(), "arch": model.config,
                       "args": {"img_w": 16, "img_h": 32, "method": "deen"}}, path)
    return path


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("fmt", export.FORMATS)
def test_deen_export_gives_the_extractors_float64_flip_summed_feature(deen_checkpoint, images, tmp_path, fmt):
    """DEEN's default feature (distmat7: six unit vectors, each summed with its mirror image's, side by side,
    float64, not renormalised; DEEN/test.py) from the exported files by model.json's recipe alone; the
    graph computes in float32 as PyTorch does and casts at the end: 1e-5 of the largest value."""
    if fmt == "onnx":
        needs_onnx()
    folder = str(tmp_path / "out")
    export.main(["--resume", deen_checkpoint, "--out", folder, "--format", fmt], log=lambda *a: None)
    meta = json.load(open(os.path.join(folder, export.MANIFEST)))
    assert (meta["method"], meta["feature"], meta["feature_dim"]) == ("deen", "distmat7", 6 * 512)
    assert (meta["flip_test"], meta["dtype"], meta["l2_normalized"]) == ("on", "float64", False)
    assert (meta["img_h"], meta["img_w"]) == (32, 16)
    paths, batch = users_batch(images, meta)
    extractor = extract.FeatureExtractor(deen_checkpoint, device="cpu")
    assert extractor.flip and extractor.feature == "distmat7"
    feats = {}
    for modality in data_manager.MODALITIES:
        run = run_exported(folder, meta, modality)
        got, want = run(batch), extractor(paths, modality)
        assert got.dtype == want.dtype == np.float64 and got.shape == want.shape == (len(paths), 6 * 512)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
        norms = np.linalg.norm(got[:, :512], axis=1)  # f1 + its mirror's: sqrt(2 + 2 cos), not 1
        assert (norms > 1.01).all() and (norms < 2).all()
        empty = run(np.zeros((0, 3, 32, 16), np.float32))
        assert empty.shape == (0, 6 * 512) and empty.dtype == np.float64
        feats[modality] = got
    assert not np.allclose(feats["visible"], feats["thermal"], atol=1e-3)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("fmt", export.FORMATS)
@pytest.mark.parametrize("head", ["pcb", "caj"])
@pytest.mark.slow
def test_exported_pcb_and_non_local_models_take_an_empty_batch(exported, head, fmt):
    """N is dynamic down to 0: the PCB head's and the non-local blocks' reshapes infer no size from it."""
    if fmt == "onnx":
        needs_onnx()
    folder, meta = exported(head, fmt)
    for modality in data_manager.MODALITIES:
        got = run_exported(folder, meta, modality)(np.zeros((0, 3, IMG_H, IMG_W), np.float32))
        assert got.shape == (0, meta["feature_dim"]) and got.dtype == np.float32


def test_failed_export_leaves_out_as_it_was(checkpoints, exported, tmp_path, monkeypatch):
    def run(*argv):
        return export.main(["--resume", checkpoints["global"], "--format", "torchscript", *argv],
                           log=lambda *a: None)
    out = tmp_path / "out"
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # every check fails
    with pytest.raises(ValueError, match=r"visible\.pt: differs from PyTorch .* nothing was written") as e:
        run("--out", str(out))
    one_line(e)
    assert sorted(os.listdir(tmp_path)) == []  # neither --out nor a temporary sibling
    monkeypatch.undo()
    shutil.copytree(exported("global", "torchscript")[0], out)  # an earlier export
    before = {f: os.path.getmtime(out / f) for f in os.listdir(out)}

    def fails(*a):
        raise RuntimeError("unsupported operator\ndetails")
    monkeypatch.setattr(export, "export_torchscript", fails)
    with pytest.raises(ValueError, match=r"the global head cannot be exported \(RuntimeError: unsupported "
                                         r"operator\)") as e:
        run("--out", str(out))
    one_line(e)
    assert {f: os.path.getmtime(out / f) for f in os.listdir(out)} == before  # the earlier export kept
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_export_bad_inputs_are_one_line_errors(checkpoints, tmp_path, monkeypatch):
    def run(resume, out, *argv):
        return export.main(["--resume", resume, "--out", str(out), "--format", "torchscript", *argv],
                           log=lambda *a: None)
    foreign = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), foreign)
    malformed = tmp_path / "malformed.pth"
    torch.save({"model": {}, "arch": {}}, malformed)
    no_arch = tmp_path / "no_arch.pth"
    torch.save({"model": torch.load(checkpoints["pcb"])["model"], "arch": {"class_num": 4, "strips": 2}}, no_arch)
    original = tmp_path / "original.t"
    torch.save({"net": model_mine.to_original_state_dict(model_from_checkpoint(checkpoints["pcb"])[0])},
               original)
    cases = [((str(tmp_path / "missing.pth"), tmp_path / "o1"), FileNotFoundError, "no such checkpoint file"),
             ((str(malformed), tmp_path / "o5"), ValueError, r"malformed\.pth: a malformed checkpoint: 'model' is not"),
             ((str(no_arch), tmp_path / "o6"), ValueError,
              r"no_arch\.pth: a malformed checkpoint: its 'arch' does not build a network \(.*strips"),
             ((str(original), tmp_path / "o7", "--img_h", "99999999999", "--arch", "resnet18", "--num_strips", "2",
               "--local_feat_dim", "16"), ValueError, r"^--img_h must be at most 4096 pixels, got 99999999999$"),
             ((str(foreign), tmp_path / "o2"), ValueError, "not a checkpoint of this project"),
             ((checkpoints["pcb"], foreign), ValueError, r"--out .*is a file, not a folder"),
             ((checkpoints["pcb"], foreign / "sub"), ValueError, r"--out .*is a file\)"),
             ((checkpoints["pcb"], tmp_path), ValueError, r"--out: .* export\.py did not create"),
             ((checkpoints["pcb"], tmp_path / "o3", "--pcb", "off"), ValueError, "leave those flags out")]
    for argv, kind, match in cases:
        with pytest.raises(kind, match=match) as e:
            run(*argv)
        one_line(e)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    with pytest.raises(ValueError, match=r"needs the onnx(runtime)? package .*pip install onnx onnxruntime") as e:
        run(checkpoints["pcb"], tmp_path / "o4", "--format", "onnx")
    one_line(e)
    assert sorted(os.listdir(tmp_path)) == ["malformed.pth", "no_arch.pth", "original.t", "tensor.pth"]


def test_scripts_print_one_line_errors(tmp_path, monkeypatch):
    missing = str(tmp_path / "missing.pth")
    for argv in (["extract.py", "--resume", missing, "--images", str(tmp_path), "--out", str(tmp_path / "f.npy")],
                 ["export.py", "--resume", missing, "--out", str(tmp_path / "out"), "--format", "torchscript"]):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as e:
            runpy.run_path(os.path.join(ROOT, argv[0]), run_name="__main__")
        assert str(e.value).startswith("error: ") and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []


def digest(folder):
    """{name: bytes} of every file in folder."""
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


def extract_cli(checkpoint, images, out, *argv):
    return extract.main(["--resume", checkpoint, "--images", images, "--modality", "thermal", "--out", str(out),
                         "--gpu", "cpu", *argv], log=lambda *a: None)


@pytest.mark.parametrize("case", ["out-checkpoint", "out-dataset-npy", "out-npy-without-its-list", "csv-sidecar",
                                  "csv-results-table"])
def test_extract_never_replaces_a_file_of_another_kind(case, checkpoints, images, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(checkpoints["global"], mine / "other_last.pth")  # another run's checkpoint
    np.save(mine / "train_ir_resized_label.npy", np.arange(5))  # a stored dataset's
    np.save(mine / "data.npy", np.ones((5, 8), np.float32))  # a float32 [N, D] of the user's own
    (mine / "data.csv").write_text("id,score\n1,0.5\n")  # the user's own data.csv
    (mine / "results.csv").write_text("time,dataset,resume,setting\n")
    before = digest(mine)
    out, argv, message = {
        "out-checkpoint": (mine / "other_last.pth", [], "--out .*other_last.pth: that file exists and is a checkpoint"),
        "out-dataset-npy": (mine / "train_ir_resized_label.npy", [], "is a NumPy array, not features of extract.py"),
        "out-npy-without-its-list": (mine / "data.npy", ["--csv", str(tmp_path / "new.csv")],
                                     "--out .*data.npy: not written with the image list .*new.csv"),
        # the default --csv, --out with .csv: a file the user never named
        "csv-sidecar": (mine / "data.npy", [], "--csv .*data.csv: that file exists and is a file of some other "
                                               "kind, not an image list of extract.py"),
        "csv-results-table": (tmp_path / "f.npy", ["--csv", str(mine / "results.csv")],
                              "is a results table of test_mine.py, not an image list of extract.py"),
    }[case]
    with pytest.raises(ValueError, match=message) as e:
        extract_cli(checkpoints["pcb"], images, out, *argv)
    one_line(e)
    assert digest(mine) == before
    assert not os.path.exists(tmp_path / "new.csv") and not os.path.exists(tmp_path / "f.npy")


def test_extract_replaces_its_own_earlier_pair(checkpoints, images, tmp_path):
    out = tmp_path / "feats.npy"
    extract_cli(checkpoints["pcb"], images, out)
    sub = str(tmp_path / "sub")
    shutil.copytree(os.path.join(images, "sub"), sub)
    extract_cli(checkpoints["pcb"], sub, out)  # its own earlier pair: replaced, both
    assert len(np.load(out)) == 2 and extract.listed_rows(tmp_path / "feats.csv") == 2
    assert sorted(os.listdir(tmp_path)) == ["feats.csv", "feats.npy", "sub"]


@pytest.mark.parametrize("failure", ["csv-folder-unwritable", "second-rename-fails"])
def test_extract_features_and_paths_change_together_or_not_at_all(failure, checkpoints, images, tmp_path,
                                                                  monkeypatch, fail_replace):
    out, paths = tmp_path / "o" / "feats.npy", tmp_path / "p" / "feats.csv"
    extract_cli(checkpoints["pcb"], images, out, "--csv", str(paths))  # the earlier pair (5 images)
    before = {**digest(out.parent), **digest(paths.parent)}
    sub = str(tmp_path / "sub")
    shutil.copytree(os.path.join(images, "sub"), sub)  # 2 images
    if failure == "csv-folder-unwritable":  # as a full or read-only folder reports it (root ignores chmod)
        real_open = open

        def fail_open(file, *a, **k):
            if os.fspath(file).startswith(str(paths) + ".tmp-"):
                raise PermissionError(13, "Permission denied")
            return real_open(file, *a, **k)
        monkeypatch.setattr("builtins.open", fail_open)
    else:
        fail_replace(paths)
    with pytest.raises(OSError, match=f"cannot write {paths}: "):
        extract_cli(checkpoints["pcb"], sub, out, "--csv", str(paths))
    monkeypatch.undo()
    assert {**digest(out.parent), **digest(paths.parent)} == before  # the earlier pair, no temporary left
