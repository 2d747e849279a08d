"""Evaluate a checkpoint on SYSU-MM01 (10 gallery trials), RegDB (per-trial checkpoints) or the demo set.

    python test_mine.py --dataset sysu --data_path /data/SYSU-MM01 --resume sysu_best.pth
    python test_mine.py --dataset regdb --data_path /data/RegDB --resume 'save_model/regdb_trial{trial}_best.pth'

Checkpoints of this project carry their architecture; those of the authors' code ({'net': ...})
are built from the architecture flags (--share_net, --pcb, --local_feat_dim, --num_strips, --gem_p).
"""
import argparse
import csv
import json
import os
import time

import numpy as np
import torch

import data_loader
import data_manager
import eval_metrics
import utils
import visualize

METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
DIRECTIONS = {"off": ("visible->thermal",), "on": ("thermal->visible",),
              "both": ("visible->thermal", "thermal->visible")}


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(description="Evaluate a VT Re-ID checkpoint", add_help=add_help)
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="sysu", help="sysu | regdb | demo")
    g.add_argument("--data_path", default=None, help="dataset root (default for demo: data/demo)")
    g.add_argument("--mode", default="all", help="SYSU search mode: all | indoor")
    g.add_argument("--gall_mode", default="single", help="SYSU gallery: single-shot | multi-shot (10 per camera)")
    g.add_argument("--trials", default=None,
                   help="SYSU gallery trials (default 0-9); RegDB splits (default 1-10 with {trial} in --resume, "
                        "else the checkpoint's own)")
    g.add_argument("--trial", default=None, type=int, help="RegDB split, when --trials is not given")
    g.add_argument("--tvsearch", nargs="?", const="on", default="off", choices=("off", "on", "both"),
                   help="RegDB direction: visible->thermal (default), --tvsearch thermal->visible, 'both'")
    g.add_argument("--img_w", default=None, type=int, help="default: the checkpoint's, else the dataset's")
    g.add_argument("--img_h", default=None, type=int)
    g.add_argument("--workers", default=4, type=int, help="threads reading images")
    g = parser.add_argument_group("checkpoint")
    g.add_argument("--resume", default="", help="checkpoint file; for RegDB may contain {trial}")
    g.add_argument("--model_path", default="save_model/", help="folder tried when --resume is not found as given")
    g = parser.add_argument_group("architecture of the original code's checkpoints")
    g.add_argument("--arch", default="resnet50")
    g.add_argument("--share_net", default=2, type=int)
    g.add_argument("--pcb", default="on")
    g.add_argument("--local_feat_dim", default=256, type=int)
    g.add_argument("--num_strips", default=6, type=int)
    g.add_argument("--gm_pool", default="on")
    g.add_argument("--gem_p", default=None, type=float, help="default: PCB 10 (RegDB), 3 (SYSU); --pcb off 3")
    g = parser.add_argument_group("evaluation")
    g.add_argument("--re_rank", default="no", help="no | k_reciprocal | random_walk")
    g.add_argument("--test-batch", "--test_batch", dest="test_batch", default=128, type=int)
    g.add_argument("--half", action="store_true", help="extract features under bf16/fp16 autocast")
    g.add_argument("--gpu", default="0", help="CUDA device index, or 'cpu'")
    g.add_argument("--json", default=None, help="write every metric of every trial, mean and std here")
    g.add_argument("--log_path", default="log/", help="results.csv (one row per run) is appended here")
    g = parser.add_argument_group("pictures and searching your own images")
    g.add_argument("--visualize", default=0, type=int, help="ranked-list PNGs for this many queries (first trial)")
    g.add_argument("--vis_dir", default=None, help="where pictures go (default <log_path>/vis)")
    g.add_argument("--vis_order", default="hardest", help="hardest (worst first true match first) | random")
    g.add_argument("--top_k", default=10, type=int, help="gallery images per ranked list / CSV row set")
    g.add_argument("--query_dir", default=None, help="search: folder of query images (any names and sizes)")
    g.add_argument("--gallery_dir", default=None, help="search: folder of gallery images")
    g.add_argument("--query_modal", default="thermal", help="search: modality of the query images, "
                                                             "thermal | visible (the gallery is the other)")
    return parser


def amp_dtype(device):
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


@torch.no_grad()
def extract_features(model, images, modal, device, batch_size=128, half=False):
    """L2-normalised features [N, D] (float32, on device) of uint8 images [N, H, W, 3].
    modal 1 = visible stream, 2 = thermal stream."""
    model.eval()
    feats = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(device, non_blocking=True)
        x = data_loader.normalize(x).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=half):
            out = model(x, x, modal)
        if isinstance(out, tuple):  # global head: (pool, bottleneck); the bottleneck feature is evaluated
            out = out[1]
        feats.append(torch.nn.functional.normalize(out.float(), dim=1))
    feats = torch.cat(feats)
    if not torch.isfinite(feats).all():  # never rank with NaN distances: that gives a silent wrong result
        raise ValueError("the model gives non-finite (NaN/inf) features: its weights are broken "
                         "(a diverged training run?)")
    return feats


def distance(qf, gf, re_rank="no"):
    if re_rank in ("no", "none", "off", None):
        return -(qf @ gf.T)
    if re_rank == "k_reciprocal":
        return eval_metrics.k_reciprocal(qf, gf)
    if re_rank == "random_walk":
        return eval_metrics.random_walk(qf, gf)
    raise ValueError(f"--re_rank must be no, k_reciprocal or random_walk, got {re_rank}")


def metrics_row(cmc, mAP, mINP):
    """Rank-1/5/10/20, mAP, mINP in percent."""
    return {"rank1": 100 * float(cmc[0]), "rank5": 100 * float(cmc[4]), "rank10": 100 * float(cmc[9]),
            "rank20": 100 * float(cmc[19]), "mAP": 100 * float(mAP), "mINP": 100 * float(mINP)}


def format_row(row):
    return " | ".join(f"{name}: {row[k]:.2f}%" for name, k in zip(
        ("Rank-1", "Rank-5", "Rank-10", "Rank-20", "mAP", "mINP"), METRICS))


def summarize(rows):
    """Mean and (population) standard deviation of every metric over trials."""
    values = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in METRICS}
    return {k: float(v.mean()) for k, v in values.items()}, {k: float(v.std()) for k, v in values.items()}


class SYSUEval:
    """SYSU-MM01 query features once, gallery features once for the union of the trials' galleries."""

    def __init__(self, data_path, mode="all", trials=(0,), gall_mode="single", img_w=144, img_h=288, workers=4):
        q_paths, self.q_pids, self.q_camids = data_manager.process_query_sysu(data_path, mode)
        galleries = [data_manager.process_gallery_sysu(data_path, mode, t, gall_mode) for t in trials]
        union = sorted({p for g in galleries for p in g[0]})
        where = {p: i for i, p in enumerate(union)}
        self.trials = [(t, np.array([where[p] for p in g[0]]), g[1], g[2]) for t, g in zip(trials, galleries)]
        self.q_paths, self.g_paths = q_paths, union
        self.q_images = data_loader.load_images(q_paths, img_w, img_h, workers)
        self.g_images = data_loader.load_images(union, img_w, img_h, workers)

    def run(self, model, device, batch_size=128, re_rank="no", half=False, on_distance=None):
        """[(trial, cmc, mAP, mINP)] for every trial; on_distance(setting, trial, distmat, query paths,
        gallery paths, query labels, gallery labels) sees each trial's distances."""
        qf = extract_features(model, self.q_images, 2, device, batch_size, half)
        gf_all = extract_features(model, self.g_images, 1, device, batch_size, half)
        results = []
        for t, idx, g_pids, g_camids in self.trials:
            gf = gf_all[torch.as_tensor(idx, device=device)]
            dist = distance(qf, gf, re_rank)
            if on_distance is not None:
                on_distance("search", t, dist, self.q_paths, [self.g_paths[i] for i in idx], self.q_pids, g_pids)
            results.append((t, *eval_metrics.eval_sysu(dist, self.q_pids, g_pids, self.q_camids, g_camids)))
        return results


class RegDBEval:
    """One RegDB split's test images (visible and thermal), read once."""

    def __init__(self, data_path, trial=1, img_w=144, img_h=288, workers=4):
        self.trial = trial
        v_paths, self.v_labels = data_manager.process_test_regdb(data_path, trial, "visible")
        t_paths, self.t_labels = data_manager.process_test_regdb(data_path, trial, "thermal")
        self.v_paths, self.t_paths = v_paths, t_paths
        self.v_images = data_loader.load_images(v_paths, img_w, img_h, workers)
        self.t_images = data_loader.load_images(t_paths, img_w, img_h, workers)

    def run(self, model, device, batch_size=128, re_rank="no", half=False, directions=("visible->thermal",),
            on_distance=None):
        """{direction: (cmc, mAP, mINP)}; on_distance as in SYSUEval.run."""
        vf = extract_features(model, self.v_images, 1, device, batch_size, half)
        tf = extract_features(model, self.t_images, 2, device, batch_size, half)
        out = {}
        for d in directions:
            q, g, ql, gl, qp, gp = (vf, tf, self.v_labels, self.t_labels, self.v_paths, self.t_paths) \
                if d == "visible->thermal" else (tf, vf, self.t_labels, self.v_labels, self.t_paths, self.v_paths)
            dist = distance(q, g, re_rank)
            if on_distance is not None:
                on_distance(d, self.trial, dist, qp, gp, ql, gl)
            out[d] = eval_metrics.eval_regdb(dist, ql, gl)
        return out


def resolve_checkpoint(path, model_path):
    if not path:
        raise ValueError("--resume: give the checkpoint file to evaluate")
    if not os.path.exists(path.format(trial=1) if "{trial}" in path else path):
        alt = os.path.join(model_path, path)
        if os.path.exists(alt.format(trial=1) if "{trial}" in alt else alt):
            return alt
    return path


def ensure_demo(args, log=print):
    """--dataset demo: generate the demo set on first use (a folder that holds one is used as it is)."""
    if args.dataset != "demo":
        return
    import demo_data
    meta = demo_data.read_meta(args.data_path)
    if meta is None:
        start = time.time()
        demo_data.make_regdb_demo(args.data_path)
        log(f"demo data written to {args.data_path} in {time.time() - start:.0f} s (first use)")
        return
    version = meta.get("params", {}).get("version")
    if version != demo_data.GENERATOR_VERSION:  # kept (it may be a set made on purpose), but said
        log(f"note: {args.data_path} holds demo data of generator version {version}, not the current "
            f"{demo_data.GENERATOR_VERSION}; delete the folder to regenerate it")


def image_size(args, ckpt):
    """--img_w/--img_h, else the size the checkpoint was trained at, else the dataset's."""
    saved = ckpt.get("args", {}) if isinstance(ckpt, dict) else {}
    defaults = utils.DATASET_DEFAULTS[args.dataset]
    return (args.img_w or saved.get("img_w") or defaults["img_w"],
            args.img_h or saved.get("img_h") or defaults["img_h"])


def evaluate_sysu(args, device, log, on_distance=None):
    trials = utils.parse_trials(args.trials if args.trials is not None else "0-9")
    model, ckpt = utils.model_from_checkpoint(resolve_checkpoint(args.resume, args.model_path), args)
    model.to(device).to(memory_format=torch.channels_last)
    img_w, img_h = image_size(args, ckpt)
    log(f"SYSU-MM01 {args.mode} search, {args.gall_mode}-shot, trials {trials}, {img_h}x{img_w}")
    evaluator = SYSUEval(args.data_path, args.mode, trials, args.gall_mode, img_w, img_h, args.workers)
    log(f"query {len(evaluator.q_pids)} images; gallery {len(evaluator.trials[0][1])} images per trial")
    rows = []
    for t, cmc, mAP, mINP in evaluator.run(model, device, args.test_batch, args.re_rank, args.half, on_distance):
        rows.append({"trial": t, **metrics_row(cmc, mAP, mINP), "cmc": (100 * np.asarray(cmc)).tolist()})
        log(f"trial {t}: {format_row(rows[-1])}")
    return {f"{args.mode} search": rows}, model.config


def evaluate_regdb(args, device, log, on_distance=None):
    path = resolve_checkpoint(args.resume, args.model_path)
    per_trial = "{trial}" in path
    if args.trials is not None:
        trials = utils.parse_trials(args.trials)
    elif per_trial:
        trials = list(range(1, 11))
    else:
        recorded = args.trial or utils.load_checkpoint(path).get("args", {}).get("trial")
        if recorded is None:  # the original code's files do not say which split they were trained on
            log(f"note: {path} does not record its RegDB split: testing split 1; pass --trials N if it was "
                f"trained on split N (else its training identities are in the test set)")
        trials = [recorded or 1]
    if len(trials) > 1 and not per_trial:
        raise ValueError(f"--resume {path}: RegDB trial t needs the model trained on split t; put {{trial}} in "
                         f"--resume (e.g. regdb_trial{{trial}}_best.pth) or pass a single --trials")
    directions = DIRECTIONS[args.tvsearch]
    rows = {d: [] for d in directions}
    for t in trials:
        model, ckpt = utils.model_from_checkpoint(path.format(trial=t) if per_trial else path, args)
        model.to(device).to(memory_format=torch.channels_last)
        img_w, img_h = image_size(args, ckpt)
        evaluator = RegDBEval(args.data_path, t, img_w, img_h, args.workers)
        for d, (cmc, mAP, mINP) in evaluator.run(model, device, args.test_batch, args.re_rank,
                                                 args.half, directions, on_distance).items():
            rows[d].append({"trial": t, **metrics_row(cmc, mAP, mINP), "cmc": (100 * np.asarray(cmc)).tolist()})
            log(f"trial {t} {d}: {format_row(rows[d][-1])}")
    return rows, model.config


def append_results_csv(log_path, args, results):
    """One row per direction/mode of this run in <log_path>/results.csv, so sweeps become one table."""
    path = os.path.join(log_path, "results.csv")
    os.makedirs(log_path, exist_ok=True)
    fields = ["time", "dataset", "resume", "setting", "trials", "share_net", "pcb", "re_rank"] + \
             [f"{k}_mean" for k in METRICS] + [f"{k}_std" for k in METRICS]
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        for setting, r in results.items():
            row = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "dataset": args.dataset, "resume": args.resume,
                   "setting": setting, "trials": " ".join(str(x["trial"]) for x in r["trials"]),
                   "share_net": r["model"]["share_net"], "pcb": r["model"]["pcb"], "re_rank": args.re_rank}
            row.update({f"{k}_mean": f"{r['mean'][k]:.2f}" for k in METRICS})
            row.update({f"{k}_std": f"{r['std'][k]:.2f}" for k in METRICS})
            writer.writerow(row)
    return path


class RankedListWriter:
    """on_distance callback: ranked-list pictures for the first trial of every setting."""

    def __init__(self, vis_dir, num, order, top_k):
        self.vis_dir, self.num, self.order, self.top_k, self.done = vis_dir, num, order, top_k, set()

    def __call__(self, setting, trial, dist, q_paths, g_paths, q_labels, g_labels):
        if setting in self.done:
            return
        self.done.add(setting)
        folder = os.path.join(self.vis_dir, f"{setting.replace('->', '_to_')}_trial{trial}")
        visualize.write_ranked_lists(folder, q_paths, g_paths, dist.cpu().numpy(), q_labels, g_labels,
                                     num=self.num, top_k=self.top_k, order=self.order)


def image_files(folder, flag):
    """Every image file under folder (recursively), sorted."""
    if not folder or not os.path.isdir(folder):
        raise FileNotFoundError(f"{flag}: no such folder: {folder}")
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names
                   if f.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")))
    if not files:
        raise FileNotFoundError(f"{flag}: no image files (.jpg, .png, .bmp, .tif, .webp) under {folder}")
    return files


def search_folders(args, device, log):
    """Rank every image of --query_dir against --gallery_dir: a top-k CSV and ranked-list pictures."""
    if args.query_modal not in ("thermal", "visible"):
        raise ValueError(f"--query_modal must be thermal or visible, got {args.query_modal}")
    q_paths, g_paths = image_files(args.query_dir, "--query_dir"), image_files(args.gallery_dir, "--gallery_dir")
    model, ckpt = utils.model_from_checkpoint(resolve_checkpoint(args.resume, args.model_path), args)
    model.to(device).to(memory_format=torch.channels_last)
    img_w, img_h = image_size(args, ckpt)
    q_modal, g_modal = (2, 1) if args.query_modal == "thermal" else (1, 2)
    qf = extract_features(model, data_loader.load_images(q_paths, img_w, img_h, args.workers), q_modal, device,
                          args.test_batch, args.half)
    gf = extract_features(model, data_loader.load_images(g_paths, img_w, img_h, args.workers), g_modal, device,
                          args.test_batch, args.half)
    dist = distance(qf, gf, args.re_rank).cpu().numpy()
    csv_path = visualize.write_topk_csv(os.path.join(args.vis_dir, "search_topk.csv"), q_paths, g_paths, dist,
                                        top_k=args.top_k)
    pictures = visualize.write_ranked_lists(os.path.join(args.vis_dir, "search"), q_paths, g_paths, dist,
                                            num=args.visualize or min(10, len(q_paths)), top_k=args.top_k,
                                            order="random")
    log(f"searched {len(q_paths)} {args.query_modal} queries against {len(g_paths)} gallery images: "
        f"top-{args.top_k} in {csv_path}, {len(pictures)} pictures in {os.path.dirname(pictures[0])}")
    return csv_path


def main(args):
    searching = bool(args.query_dir or args.gallery_dir)
    # the image size comes from the checkpoint first; a folder search needs no dataset
    utils.fill_dataset_defaults(args, skip=("img_w", "img_h") + (("data_path",) if searching else ()))
    device = utils.select_device(args.gpu)
    torch.backends.cudnn.benchmark = True
    log = print
    args.vis_dir = args.vis_dir or os.path.join(args.log_path or ".", "vis")
    if searching:
        return search_folders(args, device, log)
    ensure_demo(args, log)
    start = time.time()
    writer = RankedListWriter(args.vis_dir, args.visualize, args.vis_order, args.top_k) if args.visualize else None
    if args.dataset == "sysu":
        rows, config = evaluate_sysu(args, device, log, writer)
    else:
        rows, config = evaluate_regdb(args, device, log, writer)
    results = {}
    for setting, r in rows.items():
        mean, std = summarize(r)
        results[setting] = {"trials": r, "mean": mean, "std": std, "model": config}
        log(f"{setting}, mean over {len(r)} trial(s): {format_row(mean)}")
        log(f"{setting}, std  over {len(r)} trial(s): {format_row(std)}")
    log(f"evaluated in {time.time() - start:.1f} s on {device}")
    if writer is not None:
        curves = {setting: np.mean([row["cmc"] for row in r["trials"]], 0) for setting, r in results.items()}
        path = visualize.cmc_curve_picture(curves, os.path.join(args.vis_dir, "cmc.png"),
                                           title=f"CMC, {args.dataset}, mean over trials")
        log(f"pictures: ranked lists and {path}")
    if args.json:
        out = next(iter(results.values())) if len(results) == 1 else dict(results)
        out = {**out, "setting": ", ".join(results), "args": vars(args)}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)
        log(f"metrics written to {args.json}")
    if args.log_path:
        log(f"results table: {append_results_csv(args.log_path, args, results)}")
    return results


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (ValueError, FileNotFoundError, OSError, KeyError) as e:
        raise SystemExit(f"error: {e}")
