"""Evaluate a checkpoint on SYSU-MM01 (10 gallery trials), RegDB (a checkpoint per split) or the demo set.

    python test_mine.py --dataset sysu --data_path /data/SYSU-MM01 --resume sysu_best.pth
    python test_mine.py --dataset regdb --data_path /data/RegDB --resume 'save_model/regdb_trial{trial}_best.pth'

Checkpoints of this project carry their architecture; those of the reference codes ({'net': ...})
are built from --method and its published defaults, or the architecture flags (--share_net, --pcb,
--local_feat_dim, --num_strips, --gem_p, --non_local; DGTL: --bpool, --cpool, --fuse, which imply
--method dgtl; AGW: --method agw). A flag the file's head does not read is an error.
"""
import argparse
import csv
import json
import os
import re
import shutil
import time
import weakref

import numpy as np
import torch

import checkpoints
import data_manager
import demo_data
import fileio
import eval_metrics
import extract
import flags
import settings
import utils
import visualize

RE_RANK = ("no", "k_reciprocal", "random_walk")


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(description="Evaluate a VT Re-ID checkpoint", add_help=add_help)
    flag = settings.flag
    g = parser.add_argument_group("data")
    flag("dataset").add_to(g, default="sysu", help="default sysu")
    flag("data_path").add_to(g)
    flag("mode").add_to(g, help="SYSU search mode (default all)")
    g.add_argument("--gall_mode", default=None, choices=("single", "multi"),
                   help="SYSU gallery: single (default) | multi (10 per camera)")
    g.add_argument("--trials", default=None, nargs="+",
                   help="SYSU/LLCM gallery trials (default 0-9); RegDB splits (default 1-10 with {trial} in "
                        "--resume, else the checkpoint's own); e.g. 0-9, 1,3,5 or 0 1 2")
    flag("trial").add_to(g, help="RegDB split, when --trials is not given")
    g.add_argument("--cross_split", default=None, action="store_true",
                   help="RegDB/demo: allow testing a checkpoint on a split other than the one it records "
                        "(a cross-split study; its training identities are then among the test ones)")
    g.add_argument("--tvsearch", nargs="?", const="on", default=None, choices=tuple(settings.REGDB_DIRECTIONS),
                   help="RegDB direction: visible->thermal (default), --tvsearch thermal->visible, 'both'")
    g.add_argument("--stem_swap", default=None, choices=("on", "off"),
                   help="RegDB: on = thermal images through the visible stem and the reverse, as DEEN's test.py "
                        "does (a compatibility mode to compare with its printed numbers; default off)")
    g.add_argument("--direction", default=None, choices=tuple(eval_metrics.LLCM_DIRECTIONS),
                   help="LLCM: ir2vis (infrared->visible, default), vis2ir (visible->infrared as the official "
                        "test script computes it: roles swapped, the published second column group), "
                        "vis2ir_literal, both (ir2vis + vis2ir) or all")
    for name in ("img_w", "img_h"):
        flag(name).add_to(g, help="default: the checkpoint's, else the dataset's")
    flag("workers").add_to(g, default=4, help="threads reading images")
    g = parser.add_argument_group("checkpoint")
    flag("resume").add_to(g, help="checkpoint file; for RegDB may contain {trial}")
    flag("model_path").add_to(g, default="save_model/", help="folder tried when --resume is not found as given")
    g = parser.add_argument_group("architecture of the original code's checkpoints (ours carry theirs)")
    for arch_flag in settings.architecture_flags():
        arch_flag.add_to(g)
    g = parser.add_argument_group("evaluation")
    g.add_argument("--re_rank", default="no", choices=RE_RANK)
    for name in ("test_batch", "half", "flip_test", "gpu"):
        flag(name).add_to(g)
    g.add_argument("--json", default=None, help="write every metric of every trial, mean and std here (a folder "
                                                "search: every query's top-k)")
    g.add_argument("--log_path", default=None, help="results.csv (one row per run) is appended here (default log/)")
    picture_flags(parser)
    return parser


def picture_flags(parser):
    """Ranked-list pictures, and the search of a folder of your own images."""
    g = parser.add_argument_group("pictures and searching your own images")
    g.add_argument("--visualize", default=None, type=int,
                   help="ranked-list PNGs for this many queries (first trial; a folder search: default 10, 0 for none)")
    g.add_argument("--vis_dir", default=None, help="where pictures go (default <log_path>/vis)")
    g.add_argument("--vis_order", default=None, choices=("hardest", "random"),
                   help="hardest (worst first true match first; default) or random (a folder search: random only)")
    g.add_argument("--top_k", default=None, type=int, help="gallery images per ranked list / CSV row set (default 10)")
    g.add_argument("--query_dir", default=None, help="search: folder of query images (any names and sizes)")
    g.add_argument("--gallery_dir", default=None, help="search: folder of gallery images")
    g.add_argument("--query_modal", default=None, choices=("thermal", "visible"),
                   help="search: modality of the query images (default thermal; the gallery is the other)")


def evaluate_trials(args, device, log, on_distance=None):
    """Records of every search of every gallery trial (SYSU-MM01, LLCM), and the model."""
    default = settings.DATASETS[args.dataset].default_rounds
    trials = utils.parse_trials(args.trials if args.trials is not None else default)
    path = checkpoints.resolve_checkpoint(args.resume, args.model_path)
    model, ckpt = checkpoints.load_on_device(path, args, device)
    img_w, img_h = checkpoints.image_size(args, ckpt)
    dataset = settings.DATASETS[args.dataset]
    log(f"{dataset.describe(args)}, trials {trials}, {img_h}x{img_w}")
    evaluator = dataset.evaluator(args, trials, img_w, img_h)
    for setting, _, (qm, qi), (gm, gi), _ in evaluator.searches()[::len(trials)]:
        log(f"{setting}: {len(qi)} {qm} queries against {len(gi)} {gm} gallery images per trial")
    return evaluator.run(model, device, args.test_batch, args.re_rank, args.half, on_distance,
                         checkpoints.flip_test(args, ckpt)), model


def regdb_splits(args, path, log):
    """{split: (checkpoint path, its contents)}: every split's lists checked and every checkpoint read
    before any split is evaluated (a broken file of split 2 must not cost split 1's work). The CLI names
    the splits --trials / --trial, as the authors' code does."""
    per_split = "{trial}" in path
    read = {}  # path: contents, each file read once
    if args.trials is not None:
        splits = utils.parse_trials(args.trials)
    elif per_split:
        splits = [args.trial] if args.trial else default_splits(args)
    else:
        ckpt = read[path] = checkpoints.load_checkpoint(path)
        recorded = args.trial or (ckpt.get("args", {}) if isinstance(ckpt, dict) else {}).get("trial")
        if recorded is None:  # the original code's files do not say which split they were trained on
            log(f"note: {path} does not record its RegDB split: testing split 1; pass --trials N if it was "
                f"trained on split N (else its training identities are in the test set)")
        splits = [recorded or 1]
    if len(splits) > 1 and not per_split:
        raise ValueError(f"--resume {path}: RegDB split t needs the model trained on split t; put {{trial}} in "
                         f"--resume (e.g. regdb_trial{{trial}}_best.pth) or pass a single --trials")
    files = {split: path.format(trial=split) if per_split else path for split in splits}
    missing = [f for f in files.values() if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"--resume: no such checkpoint file: {', '.join(missing)}")
    for split in splits:  # the lists of every split, before the first split is evaluated
        for m in ("visible", "thermal"):
            data_manager.process_test_regdb(args.data_path, split, m)
    for split, f in files.items():
        if f not in read:
            read[f] = checkpoints.load_checkpoint(f)
        if isinstance(read[f], dict):  # ten splits' optimiser states would only fill the memory
            for key in ("optimizer", "scaler"):
                read[f].pop(key, None)
        check_split(f, read[f], split, args.cross_split)
    return {split: (f, read[f]) for split, f in files.items()}


def check_split(path, ckpt, split, cross_split):
    """A checkpoint that records its training split is tested on that split only: another split's test
    identities are partly its training identities (unless --cross_split says that is the study)."""
    recorded = (ckpt.get("args") or {}) if isinstance(ckpt, dict) else {}
    own = recorded.get("dataset") in settings.DATASETS and settings.DATASETS[recorded["dataset"]].splits
    saved = recorded.get("trial") if own else None  # a split of its own
    if saved is not None and saved != split and not cross_split:
        raise ValueError(f"{path} was trained on split {saved} (it records --trial {saved}), so testing it on "
                         f"split {split} puts its training identities in the test set: use --trials {saved}, "
                         f"or pass --cross_split for a cross-split study")


def evaluate_regdb(args, device, log, on_distance=None):
    # every split's model built (on the CPU) before the first is evaluated, so that a file whose
    # weights do not fit fails first too; each goes to the device only for its own split
    models = {}
    path = checkpoints.resolve_checkpoint(args.resume, args.model_path)
    for split, (path, ckpt) in regdb_splits(args, path, log).items():
        model, _ = checkpoints.model_from_checkpoint(path, args, getattr(args, "explicit", ()), ckpt)
        models[split] = model, checkpoints.image_size(args, ckpt), checkpoints.flip_test(args, ckpt)
    records, dataset = [], settings.DATASETS[args.dataset]
    for split in list(models):
        model, (img_w, img_h), flip = models.pop(split)
        model = checkpoints.on_device(model, device)
        evaluator = dataset.evaluator(args, [split], img_w, img_h)
        records += evaluator.run(model, device, args.test_batch, args.re_rank, args.half, on_distance, flip)
    return records, model


def collect(records, model, log, labels=None):
    """{setting: {'trials', 'mean', 'std', 'model'[, other feature: {'trials', 'mean', 'std'}]}} from
    the evaluators' records (a round: a gallery trial or a RegDB split; logged and saved as 'trial', the
    CLI's --trials), the reported feature at the top level; each round is logged as it comes."""
    names = model.feature_names
    results = {}
    for r in records:
        entry = results.setdefault(r["setting"], {"trials": [], "model": model.config, "features": list(names)})
        target = entry if r["feature"] == names[0] else entry.setdefault(r["feature"], {"trials": []})
        target["trials"].append({"trial": r["round"], **eval_metrics.metrics_row(r["cmc"], r["mAP"], r["mINP"]),
                                 "cmc": (100 * np.asarray(r["cmc"])).tolist()})
        what = f"{r['feature']} feature, " if len(names) > 1 else ""
        log(f"{r['setting']}, {what}trial {r['round']}: {eval_metrics.format_row(target['trials'][-1])}")
    for setting, entry in results.items():
        for feature in names:
            target = entry if feature == names[0] else entry[feature]
            target["mean"], target["std"] = eval_metrics.summarize(target["trials"])
            what = f" ({feature} feature{', reported' if feature == names[0] else ''})" if len(names) > 1 else ""
            n = len(target["trials"])
            log(f"{setting}{what}, mean over {n} trial(s): {eval_metrics.format_row(target['mean'])}")
            log(f"{setting}{what}, std  over {n} trial(s): {eval_metrics.format_row(target['std'])}")
        if labels:
            entry["direction"] = labels.get(setting)
    return results


# the feature results.csv shows without a [head feature] tag, as it did before features were named
UNTAGGED = {"strips": "parts", "global": "bn"}


# the settings of the network that results.csv records (from its config; empty where it has none)
CONFIG_COLUMNS = tuple(f.name for f in flags.FLAGS if f.column)
# flip_test and half came later: at the end, so that the older columns keep their places
RESULT_FIELDS = ["time", "dataset", "resume", "setting", "trials", *CONFIG_COLUMNS, "re_rank"] + \
    [f"{k}_mean" for k in eval_metrics.METRICS] + [f"{k}_std" for k in eval_metrics.METRICS] + ["flip_test", "half"]


def results_header(path):
    """The columns of a results table of test_mine.py (this version's or an older one's), else None."""
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader([f.readline(4096)]), [])  # bounded: the file may be a large binary one
    return header if header[:4] == RESULT_FIELDS[:4] and set(header) <= set(RESULT_FIELDS) else None


def is_result_json(path):
    """Whether path holds a --json of test_mine.py: a JSON object whose args name a --resume."""
    with open(path, "rb") as f:
        if f.read(64).lstrip()[:1] != b"{":  # not read whole unless it may be one (a stored dataset is GBs)
            return False
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    return isinstance(saved, dict) and isinstance(saved.get("args"), dict) and "resume" in saved["args"]


RESULTS_TABLE = fileio.OutputKind("a results table of test_mine.py", results_header)
RESULT_JSON = fileio.OutputKind("a result file of test_mine.py (--json)", is_result_json)


def append_results_csv(log_path, args, results):
    """One row per setting (and per feature, for heads with several) of this run in <log_path>/results.csv, so
    sweeps become one table. The file is rewritten whole and atomically: a full disk leaves it as it was. A
    table of an older version (without flip_test and half) is rewritten with them, empty in its rows (not
    recorded then)."""
    path = os.path.join(log_path, "results.csv")
    rows = []
    for setting, r in results.items():
        model, names = r["model"], r["features"]
        for feature in names:
            entry = r if feature == names[0] else r[feature]
            tag = "" if UNTAGGED.get(model["head"]) == feature else f" [{model['head']} {feature}]"
            row = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "dataset": args.dataset, "resume": args.resume,
                   "setting": setting + tag, "trials": " ".join(str(x["trial"]) for x in entry["trials"]),
                   **{k: model.get(k, "") for k in CONFIG_COLUMNS}, "re_rank": args.re_rank,
                   "flip_test": args.flip_test, "half": "on" if args.half else "off"}
            row.update({f"{k}_mean": f"{entry['mean'][k]:.2f}" for k in eval_metrics.METRICS})
            row.update({f"{k}_std": f"{entry['std'][k]:.2f}" for k in eval_metrics.METRICS})
            rows.append(row)
    with fileio.locked_folder(log_path):  # the runs of a sweep share the table: one rewrite at a time
        old, old_rows = "", []
        if os.path.exists(path):
            fileio.check_replaceable(path, "--log_path", RESULTS_TABLE)  # again: it may have changed meanwhile
            if results_header(path) == RESULT_FIELDS:
                with open(path, newline="", encoding="utf-8") as f:
                    old = f.read()
            else:  # an older table: its rows under the new header
                with open(path, newline="", encoding="utf-8") as f:
                    old_rows = list(csv.DictReader(f))

        def write(f):
            f.write(old)
            writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS, restval="")
            if not old:
                writer.writeheader()
            writer.writerows(old_rows + rows)
        return fileio.atomic_write(path, write, binary=False)


class RankedListWriter:
    """on_distance callback: ranked-list pictures for the first round of every setting, without the
    gallery entries the protocol's metric leaves out (eval_metrics.removed_mask).

    Everything goes to <vis_dir>/<checkpoint file stem>/ (<setting>_trial<t>/query_*.png, cmc.png and
    the manifest vis.json listing them), so that checkpoints never mix. It is written into a temporary
    sibling that finish() swaps in: a folder of an earlier run is replaced whole (no stale pictures),
    and only if every file in it is one its manifest lists (else refused, before any work)."""

    MANIFEST = "vis.json"

    def __init__(self, vis_dir, num, order, top_k, checkpoint):
        self.vis_dir, self.num, self.order, self.top_k, self.done = vis_dir, num, order, top_k, set()
        self.checkpoint, self.stem = checkpoint, self.folder_name(checkpoint)
        self.folder = os.path.join(vis_dir, self.stem)
        self.tmp, self._discard = None, None
        self.check()  # before any image is read: a refused folder must not cost an evaluation

    @staticmethod
    def folder_name(checkpoint):
        """The checkpoint's file stem, braces of a {trial} template dropped: regdb_trial{trial}_best.pth ->
        regdb_trialtrial_best (a distinct name from any one split's file)."""
        name = os.path.basename(os.fspath(checkpoint).rstrip("/\\")).replace("{", "").replace("}", "")
        name = re.sub(r"\.[A-Za-z][A-Za-z0-9]{0,5}$", "", name)  # .pth/.pt/.t/.tar, not the ".1" of "lr_0.1"
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip(".") or "checkpoint"

    def check(self):
        """One-line ValueError if the folder exists and holds anything its manifest does not list."""
        try:
            fileio.check_owned(self.folder, self.MANIFEST, "picture folder", "test_mine.py")
        except FileExistsError as e:
            raise ValueError(f"--vis_dir: {e}; nothing was deleted: move it away or choose another --vis_dir") \
                from None
        meta = fileio.read_manifest(self.folder, self.MANIFEST) or {}
        if meta.get("search"):
            raise ValueError(f"--vis_dir: {self.folder} holds the pictures of a folder search; nothing was deleted: "
                             f"choose another --vis_dir")
        other = meta.get("checkpoint")
        if other and os.path.abspath(other) != os.path.abspath(self.checkpoint):  # two files of one name
            raise ValueError(f"--vis_dir: {self.folder} holds the pictures of another checkpoint, {other}; "
                             f"nothing was deleted: choose another --vis_dir")

    def staging(self):
        """The temporary sibling the pictures go to until finish() (removed if the run stops before)."""
        if self.tmp is None:
            self.tmp = fileio.new_build_folder(self.folder)
            self._discard = weakref.finalize(self, shutil.rmtree, self.tmp, ignore_errors=True)
        return self.tmp

    def __call__(self, setting, rnd, dist, q_paths, g_paths, q_labels, g_labels, *, q_camids, g_camids,
                 protocol):
        if setting in self.done:
            return
        self.done.add(setting)
        slug = re.sub(r"[^A-Za-z0-9_]+", "_", setting.replace("->", "_to_")).strip("_")
        folder = os.path.join(self.staging(), f"{slug}_trial{rnd}")  # rnd: a gallery trial or a RegDB split
        removed = eval_metrics.removed_mask(protocol, q_labels, g_labels, q_camids, g_camids)
        visualize.write_ranked_lists(folder, q_paths, g_paths, dist.cpu().numpy(), q_labels, g_labels,
                                     num=self.num, top_k=self.top_k, order=self.order, removed=removed)

    def finish(self, curves, title):
        """cmc.png and the manifest, then the new folder in place of the earlier one; returns cmc.png's path."""
        tmp = self.staging()
        visualize.cmc_curve_picture(curves, os.path.join(tmp, "cmc.png"), title=title)
        fileio.write_manifest(tmp, self.MANIFEST, checkpoint=self.checkpoint)
        self._discard.detach()
        try:  # checked again: something may have been put there during the evaluation
            fileio.replace_owned(tmp, self.folder, self.MANIFEST, "picture folder", "test_mine.py")
        except FileExistsError as e:
            raise ValueError(f"--vis_dir: {e}; nothing was deleted (the new pictures are in {tmp})") from None
        return os.path.join(self.folder, "cmc.png")


SEARCH_FOLDER = "search"  # <vis_dir>/search: a folder search's top-k CSV and pictures


def check_search_folder(vis_dir):
    """<vis_dir>/search may be replaced: absent, empty, or an earlier search's (every file listed in its
    vis.json, which says it is a search's). One line before any work, else."""
    folder = os.path.join(vis_dir, SEARCH_FOLDER)
    try:
        fileio.check_owned(folder, RankedListWriter.MANIFEST, "search folder", "test_mine.py")
    except FileExistsError as e:
        raise ValueError(f"--vis_dir: {e}; nothing was deleted: move it away or choose another --vis_dir") from None
    meta = fileio.read_manifest(folder, RankedListWriter.MANIFEST)
    if meta is not None and not meta.get("search"):
        raise ValueError(f"--vis_dir: {folder} holds the evaluation pictures of a checkpoint named "
                         f"{SEARCH_FOLDER}; nothing was deleted: choose another --vis_dir")
    return folder


def search_folders(args, device, log):
    """Rank every image of --query_dir against --gallery_dir: a top-k CSV and ranked-list pictures in
    <vis_dir>/search (built beside it and swapped in whole), and --json if given."""
    data_manager.check_modality(args.query_modal, "--query_modal")
    if not (args.query_dir and args.gallery_dir):
        raise ValueError("--query_dir and --gallery_dir go together: give both folders to search one against "
                         "the other")
    q_paths = data_manager.images_under(args.query_dir, "--query_dir")
    g_paths = data_manager.images_under(args.gallery_dir, "--gallery_dir")
    flags = {k: getattr(args, k) for k in ("dataset", "img_w", "img_h", *getattr(args, "explicit", ()))}
    flip = None if args.flip_test is None else args.flip_test == "on"
    path = checkpoints.resolve_checkpoint(args.resume, args.model_path)
    extractor = extract.FeatureExtractor(path, device, args.half, args.test_batch, args.workers, flip, **flags)
    g_modality = data_manager.other_modality(args.query_modal)
    qf = torch.from_numpy(extractor(q_paths, args.query_modal)).to(device)
    gf = torch.from_numpy(extractor(g_paths, g_modality)).to(device)
    dist = eval_metrics.distance(qf, gf, args.re_rank).cpu().numpy()
    folder = check_search_folder(args.vis_dir)  # again: something may have been put there meanwhile
    tmp = fileio.new_build_folder(folder)
    try:
        visualize.write_topk_csv(os.path.join(tmp, "search_topk.csv"), q_paths, g_paths, dist, top_k=args.top_k)
        pictures = visualize.write_ranked_lists(tmp, q_paths, g_paths, dist, top_k=args.top_k, order="random",
                                                num=10 if args.visualize is None else args.visualize)
        fileio.write_manifest(tmp, RankedListWriter.MANIFEST, search=True, query_dir=args.query_dir,
                              gallery_dir=args.gallery_dir, checkpoint=args.resume)
        try:
            fileio.replace_owned(tmp, folder, RankedListWriter.MANIFEST, "search folder", "test_mine.py")
        except FileExistsError as e:
            raise ValueError(f"--vis_dir: {e}; nothing was deleted") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if args.json:
        write_search_json(args, q_paths, g_paths, dist, g_modality)
    log(f"searched {len(q_paths)} {args.query_modal} queries against {len(g_paths)} gallery images: "
        f"top-{args.top_k} in {os.path.join(folder, 'search_topk.csv')}, {len(pictures)} picture(s) in {folder}"
        f"{f', every top-{args.top_k} in {args.json}' if args.json else ''}")
    return os.path.join(folder, "search_topk.csv")


def write_search_json(args, q_paths, g_paths, dist, g_modality):
    """--json of a folder search: each query's top-k gallery images and distances (search_topk.csv's rows)."""
    queries = {}
    for query, rank, gallery, d in visualize.topk_rows(q_paths, g_paths, dist, args.top_k):
        queries.setdefault(query, []).append({"rank": rank, "gallery": gallery, "distance": d})
    out = {"setting": "folder search", "query_modal": args.query_modal, "gallery_modal": g_modality,
           "queries": [{"query": q, "ranked": ranked} for q, ranked in queries.items()], "args": vars(args)}
    fileio.atomic_write(args.json, lambda f: json.dump(out, f, indent=2, default=str), binary=False)


FOLDER_SEARCH_FLAGS = {"query_modal": "thermal"}  # a folder search's own flags, with their defaults
EVALUATION_FLAGS = ("data_path", "trials", "trial", "cross_split")  # of a dataset's test: a folder search has none
PICTURE_FLAGS = ("vis_dir", "vis_order", "top_k")  # how --visualize draws (a folder search always draws)


def resolve_search_flags(args, searching):
    """A flag given where it does not apply is an error (never silently ignored); the others get
    their defaults: the dataset's test flags (settings.DATASETS), or a folder search's."""
    own = FOLDER_SEARCH_FLAGS if searching else settings.DATASETS[args.dataset].test_flags
    every = dict(FOLDER_SEARCH_FLAGS, **{f: v for d in settings.DATASETS.values() for f, v in d.test_flags.items()})
    given = [f for f in every if getattr(args, f) is not None and f not in own]
    if searching:
        given += [f for f in EVALUATION_FLAGS if getattr(args, f) is not None and f not in given]
        if args.log_path is not None and args.vis_dir is not None:  # it only places the default --vis_dir
            given.append("log_path")
    if given:
        scope = "a folder search (--query_dir/--gallery_dir)" if searching else f"--dataset {args.dataset}"
        raise ValueError(f"{', '.join('--' + f for f in given)}: not used by {scope}; leave "
                         f"{'it' if len(given) == 1 else 'them'} out")
    unused = [f"--{f}" for f in PICTURE_FLAGS if getattr(args, f) is not None]
    if unused and not (searching or args.visualize):
        raise ValueError(f"{', '.join(unused)}: these say how --visualize N draws its pictures; add --visualize N "
                         f"or leave them out")
    if searching and args.vis_order == "hardest":
        raise ValueError("--vis_order hardest: a folder search has no labels to tell the hardest queries; "
                         "leave it out (its queries are drawn at random)")
    for flag, default in own.items():
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    args.log_path = "log/" if args.log_path is None else args.log_path
    args.vis_order = args.vis_order or ("random" if searching else "hardest")
    args.top_k = 10 if args.top_k is None else args.top_k


def validate_args(args):
    """This script's flags beyond the model's (checkpoints.check_model_flags checks those)."""
    for flag, low in (("top_k", 1), ("visualize", 0)):  # this script's own
        if getattr(args, flag) is not None and getattr(args, flag) < low:
            raise ValueError(f"--{flag} must be >= {low}, got {getattr(args, flag)}")
    flags.check_ranges(args, [settings.flag(k) for k in ("test_batch", "workers")])
    if args.trials is not None:
        utils.parse_trials(args.trials)
        if args.trial is not None:
            raise ValueError("--trial and --trials: give one of them (--trials takes one split or several)")
    if settings.DATASETS[args.dataset].splits:
        check_splits(args)


def check_splits(args):
    """RegDB's splits are 1..10; the demo's start at 1 too (it may have more: its idx files are checked
    before any work)."""
    flag, value = ("--trials", args.trials) if args.trials is not None else ("--trial", args.trial)
    if value is None:
        return
    splits, top = utils.parse_trials(value), settings.DATASETS[args.dataset].max_split
    if min(splits) < 1 or (top and max(splits) > top):
        span = f"RegDB splits are 1..{top}" if top else "the demo's splits are numbered from 1"
        raise ValueError(f"{flag} {' '.join(map(str, splits))}: {span}")


def default_splits(args):
    """The splits evaluated by default: the dataset's default rounds."""
    return utils.parse_trials(settings.DATASETS[args.dataset].default_rounds)


def input_files(args):
    """The checkpoint file(s) this evaluation reads (every split's, for a {trial} template)."""
    path = checkpoints.resolve_checkpoint(args.resume, args.model_path) if args.resume else ""
    if "{trial}" not in path:
        return [path]
    splits = utils.parse_trials(args.trials) if args.trials is not None else [args.trial] if args.trial else \
        default_splits(args)
    return [path.format(trial=split) for split in splits]


def check_outputs(args, searching):
    """Every output checked before the first image is read: it can be written, and it is no input
    (a result written over the checkpoint it came from would destroy it)."""
    inputs = input_files(args)
    folders = (args.query_dir, args.gallery_dir) if searching else (args.data_path,)
    if args.json:
        fileio.check_output_file(args.json, "--json", RESULT_JSON, inputs, folders)
    if args.log_path and not searching:
        fileio.check_output_dir(args.log_path, "--log_path")
        fileio.check_output_file(os.path.join(args.log_path, "results.csv"), "--log_path", RESULTS_TABLE, inputs,
                                 folders)
    if args.visualize or searching:
        fileio.check_output_dir(args.vis_dir, "--vis_dir")
    if searching:
        check_search_folder(args.vis_dir)
    if args.json:
        check_json_apart(args, searching)


def check_json_apart(args, searching):
    """--json is none of this run's other outputs: not its results.csv, not inside its pictures' folder
    (swapped in whole, it would take the JSON with it, or refuse the next run)."""
    target = os.path.realpath(args.json)
    if args.log_path and not searching and target == os.path.realpath(os.path.join(args.log_path, "results.csv")):
        raise ValueError(f"--json {args.json}: this run's results table (--log_path); give another file name")
    if args.visualize or searching:
        name = SEARCH_FOLDER if searching else RankedListWriter.folder_name(
            checkpoints.resolve_checkpoint(args.resume, args.model_path))
        folder = os.path.realpath(os.path.join(args.vis_dir, name))
        if os.path.commonpath([folder, target]) == folder:
            raise ValueError(f"--json {args.json}: inside this run's picture folder {folder}; give another file name")


def main(args):
    log = print
    searching = bool(args.query_dir or args.gallery_dir)
    resolve_search_flags(args, searching)  # before the dataset's defaults fill what is left out
    # the image size comes from the checkpoint first; a folder search needs no dataset
    checkpoints.resolve_model_flags(args, ("img_w", "img_h", "trial") + (("data_path",) if searching else ()), log)
    validate_args(args)
    device = utils.select_device(args.gpu)
    if args.half and device.type == "cpu" and utils.cpu_has_amx():
        log(f"warning: --half on a CPU with AMX: {utils.AMX_BF16}; leave --half out for float32 features")
    torch.backends.cudnn.benchmark = True
    args.vis_dir = args.vis_dir or os.path.join(args.log_path or ".", "vis")
    check_outputs(args, searching)
    if searching:
        return search_folders(args, device, log)
    demo_data.ensure_demo(args, log)
    start = time.time()
    writer = RankedListWriter(args.vis_dir, args.visualize, args.vis_order, args.top_k,
                              checkpoints.resolve_checkpoint(args.resume, args.model_path)) if args.visualize else None
    dataset = settings.DATASETS[args.dataset]
    evaluate = evaluate_regdb if dataset.splits else evaluate_trials  # RegDB: a model per split
    records, model = evaluate(args, device, log, writer)
    results = collect(records, model, log, dataset.labels)
    log(f"evaluated in {time.time() - start:.1f} s on {device}")
    if writer is not None:
        curves = {setting: np.mean([row["cmc"] for row in r["trials"]], 0) for setting, r in results.items()}
        path = writer.finish(curves, title=f"CMC, {args.dataset}, mean over trials")
        log(f"pictures: ranked lists and {path}")
    if args.json:
        out = next(iter(results.values())) if len(results) == 1 else dict(results)
        out = {**out, "setting": ", ".join(results), "args": vars(args)}
        fileio.atomic_write(args.json, lambda f: json.dump(out, f, indent=2, default=str), binary=False)
        log(f"metrics written to {args.json}")
    if args.log_path:
        log(f"results table: {append_results_csv(args.log_path, args, results)}")
    return results


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (ValueError, FileNotFoundError, OSError, KeyError) as e:
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted (nothing was written)")
