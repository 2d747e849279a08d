"""Export a trained model to ONNX or TorchScript, one file per modality, for use without this project.

    python export.py --resume save_model/sysu_best.pth --out exported/              # ONNX (needs onnx, onnxruntime)
    python export.py --resume save_model/sysu_best.pth --out exported/ --format torchscript

DIR/visible.onnx and DIR/thermal.onnx (.pt for TorchScript) each take a normalised float32 batch
[N, 3, H, W] (N dynamic) and give the reported feature [N, D] (L2-normalised; DEEN's: float64, not
normalised); DIR/model.json says how to prepare the images (size, resize, mean, std) and what comes
out. Every file is checked against PyTorch (batches of 0, 1 and 7) before the folder is moved into
place: a failed export leaves --out as it was.
"""
import argparse
import hashlib
import inspect
import os
import shutil
import warnings

import numpy as np
import torch
import torch.nn as nn

import checkpoints
import data_loader
import eval_metrics
import extract
import fileio
import settings
import data_manager

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
MANIFEST = "model.json"
INPUT, OUTPUT = "images", "feature"
OPSET = 17  # ONNX Runtime >= 1.14 runs it
TOLERANCE = 1e-4  # largest absolute difference from PyTorch accepted (unit vectors, or DEEN's six side by side)
CHECK_BATCHES = (0, 1, 7)  # N is dynamic: an empty batch gives [0, D]


class Stream(nn.Module):
    """One modality's stream of the model ('visible' or 'thermal') giving its reported feature only: what is
    exported. With flip, the feature is averaged with the mirror image's and L2-normalised again, or a
    method's own flip_features (DEEN's sum, DEEN/test.py), as eval_metrics.extract_features computes it
    (CAJ's test, ICCV21_CAJ/testa.py): the exported file gives FeatureExtractor's default feature in one run."""

    def __init__(self, model, modality, feature, flip=False):
        super().__init__()
        self.model, self.modality, self.feature, self.flip = model, modality, feature, flip

    def forward(self, x):
        return eval_metrics.model_features(self.model, x, self.modality, self.flip)[self.feature]


def get_args_parser():
    parser = argparse.ArgumentParser(description="Export a trained model to ONNX or TorchScript")
    extract.add_model_flags(parser)
    parser.add_argument("--out", required=True, help="folder for visible.*, thermal.* and model.json")
    parser.add_argument("--format", default="onnx", choices=tuple(FORMATS), help="default onnx")
    return parser


def check_out(out):
    """--out can be made, and is absent, empty or an earlier export (every file listed in its model.json)."""
    fileio.check_output_dir(out, "--out")
    # the new folder is built beside --out and renamed over it: its parent must be writable too
    fileio.check_output_dir(os.path.dirname(os.path.abspath(os.path.normpath(out))), "--out", out)
    try:
        fileio.check_owned(out, MANIFEST, "export folder", "export.py")
    except FileExistsError as e:
        raise ValueError(f"--out: {e}; choose another folder") from None


def require(fmt):
    """{package: version} of what the format needs: onnx to export and check, onnxruntime to check."""
    if fmt != "onnx":
        return {}
    versions = {}
    for name in ("onnx", "onnxruntime"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            raise ValueError(f"--format onnx needs the {name} package to export and check the models: "
                             f"pip install onnx onnxruntime (or use --format torchscript)") from None
    return versions


def export_onnx(stream, example, path):
    """The TorchScript-based exporter (torch 2.4 on; needs no onnxscript), batch dimension dynamic."""
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(stream, (example,), path, input_names=[INPUT], output_names=[OUTPUT],
                      dynamic_axes={INPUT: {0: "N"}, OUTPUT: {0: "N"}}, opset_version=OPSET, **legacy)
    import onnx
    onnx.checker.check_model(path)


def export_torchscript(stream, example, path):
    traced = torch.jit.trace(stream, example, check_trace=False)  # checked below, at other batch sizes
    torch.jit.save(traced, path)


def load_exported(path, fmt):
    """A function running the exported model on a float32 batch, giving numpy."""
    if fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda x: session.run([OUTPUT], {INPUT: x.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10: torch.jit is deprecated
        module = torch.jit.load(path, map_location="cpu")

    def run(x):
        with torch.no_grad():
            return module(x).numpy()
    return run


def check_file(stream, path, fmt, img_h, img_w):
    """Largest absolute difference from PyTorch over random images, at each of CHECK_BATCHES."""
    gen = torch.Generator().manual_seed(0)
    run, worst = load_exported(path, fmt), 0.0
    for n in CHECK_BATCHES:
        images = torch.randint(0, 256, (n, img_h, img_w, 3), dtype=torch.uint8, generator=gen)
        x = data_loader.normalize(images).contiguous()
        with torch.no_grad():
            want = stream(x).numpy()
        got = run(x)
        if got.shape != want.shape:
            raise ValueError(f"{os.path.basename(path)}: output {got.shape} for a batch of {n}, PyTorch's is "
                             f"{want.shape}")
        worst = max(worst, float(np.abs(got - want).max(initial=0.0)))
    return worst


def export_streams(model, fmt, folder, img_h, img_w, flip, log):
    """visible.* and thermal.* written into folder and checked; {modality: file name}, {file: difference}."""
    feature = model.feature_names[0]
    write = export_onnx if fmt == "onnx" else export_torchscript
    example = data_loader.normalize(torch.zeros(2, img_h, img_w, 3, dtype=torch.uint8)).contiguous()
    files, diffs = {}, {}
    for modality in data_manager.MODALITIES:
        name = modality + FORMATS[fmt]
        stream = Stream(model, modality, feature, flip).eval()
        try:
            with warnings.catch_warnings():  # the exporters' notes on shape-dependent Python ifs, deprecations
                warnings.simplefilter("ignore")
                write(stream, example, os.path.join(folder, name))
        except Exception as e:  # any exporter failure: one line naming the head and the cause
            first = (str(e).strip().splitlines() or [""])[0]
            raise ValueError(f"--format {fmt}: the {model.config['head']} head cannot be exported "
                             f"({type(e).__name__}: {first})") from None
        diffs[name] = check_file(stream, os.path.join(folder, name), fmt, img_h, img_w)
        log(f"{name}: largest absolute difference from PyTorch {diffs[name]:.2e} (batches of "
            f"{', '.join(map(str, CHECK_BATCHES[:-1]))} and {CHECK_BATCHES[-1]})")
        if diffs[name] > TOLERANCE:
            raise ValueError(f"{name}: differs from PyTorch by {diffs[name]:.2e} (> {TOLERANCE}); nothing was "
                             f"written to --out")
        files[modality] = name
    return files, diffs


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def metadata(model, info, fmt, files, diffs, versions, probe, flip):
    """model.json's fields (write_manifest adds 'files'); probe: one output of the files. flip_test: whether
    the files combine each feature with the mirror image's themselves (nothing for the user to do)."""
    meta = {"format": fmt, "modalities": files, "input": INPUT, "output": OUTPUT, "flip_test": "on" if flip else "off",
            "img_h": info["img_h"], "img_w": info["img_w"], "resize": "lanczos", "channels": "RGB",
            "normalize": "(x / 255 - mean) / std per channel", "mean": list(data_loader.MEAN),
            "std": list(data_loader.STD),
            "feature": model.feature_names[0], "feature_dim": probe.shape[1],
            "dtype": str(probe.dtype).removeprefix("torch."),
            "l2_normalized": getattr(model, "l2_normalized", True),  # DEEN's are not
            "method": info["method"], "architecture": model.config,
            "checkpoint": {"name": os.path.basename(info["checkpoint"]), "sha256": sha256(info["checkpoint"])},
            "torch": torch.__version__, "max_abs_diff": diffs, **versions}
    if fmt == "onnx":
        meta["opset"] = OPSET
    return meta


def main(argv=None, log=print):
    args = get_args_parser().parse_args(argv)
    check_out(args.out)
    versions = require(args.format)
    model, info = checkpoints.load_model(args.resume, **extract.model_flags(args))
    extract.check_dataset(args.dataset, info)
    img_h, img_w = info["img_h"], info["img_w"]
    flip = settings.flip_default(info["method"]) == "on"  # FeatureExtractor's default, exported with the model
    with torch.no_grad():  # size and dtype of the output (and a head that fails at this image size, before any file)
        probe = Stream(model, "visible", model.feature_names[0], flip).eval()(torch.zeros(1, 3, img_h, img_w))
    tmp = fileio.new_build_folder(args.out)
    try:
        files, diffs = export_streams(model, args.format, tmp, img_h, img_w, flip, log)
        meta = metadata(model, info, args.format, files, diffs, versions, probe, flip)
        fileio.write_manifest(tmp, MANIFEST, **meta)
        try:  # checked again: something may have been put there meanwhile
            fileio.replace_owned(tmp, args.out, MANIFEST, "export folder", "export.py")
        except FileExistsError as e:
            raise ValueError(f"--out: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported {', '.join(files.values())} and {MANIFEST} to {args.out}: input [N, 3, {img_h}, {img_w}], "
        f"output the {meta['feature_dim']}-d {meta['dtype']} {meta['feature']} feature")
    return meta


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted (nothing was written)")
