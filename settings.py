"""The table of methods, the table of datasets, and the resolution of the flags against them.

A method is one entry of METHODS: the model it builds, the loss it trains with, the flags it reads
and its published defaults per dataset. A dataset is one entry of DATASETS: its training set, its
evaluator (the protocol), whether it has numbered training splits, the test flags that apply to it
and its defaults. train_mine.py, test_mine.py, bench.py and the tests resolve their flags here,
once: every flag of the experiment defaults to None on the command line, so that one given
explicitly can be told from one left out (a resumed run takes the latter from its checkpoint, and a
flag the chosen method does not read is an error only when it was given).
"""
import os
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Callable

import data_loader
import data_manager
import deen
import eval_metrics
import flags
import loss as losses
import model_mine

CHOICES = flags.choices(flags.FLAGS)


# ----------------------------------------------------------------------------- methods

@dataclass(frozen=True)
class Reproduction:
    """What a method's reference code did, for reproducing its runs; optional (a method of this project's
    own has none)."""
    defaults: dict = field(default_factory=dict)  # {dataset: {flag: published value}}
    reference: dict = field(default_factory=dict)  # {flag: value} of the reference code's runs: another value
    #                                                given explicitly is a combination of ours, said in the log
    test_defaults: dict = field(default_factory=dict)  # test_mine.py's flags as its reference tests
    keep_ties: bool = False  # on equal Rank-1 the kept checkpoint is the later epoch's
    extra_batch: bool = False  # its reference's sampler runs max(N_v, N_t) // (P*K) + 1 batches an epoch
    marks: tuple = ()  # state-dict key prefixes only its networks have: names it for a reference code's
    #                    checkpoint that does not fit another method


@dataclass(frozen=True)
class Method:
    """One training method: the five fields that define it, its own flags, the rules of its flags, and
    how its reference code ran (optional). `flags` are the method-dependent flags it may read
    (method_flags() is their union over all methods); `reads(s)` those the settings s give it (default:
    all of flags; the others are shown and hashed as None); `unread(s)` those it has but that s makes
    inert (an error when given)."""
    model: Callable       # (class_num, pretrained=..., **config) -> the network (.config, .feature_names,
    #                       .features(x, modality), .full_rate_parameters())
    config: Callable      # settings -> the network's architecture (what its checkpoints record)
    loss: Callable        # settings -> nn.Module: (training outputs, labels) -> (total, {name: term})
    flags: tuple          # the table's flags it reads (flags.FLAGS)
    heads: tuple          # the config["head"] values of its networks: how a checkpoint finds its method
    own_flags: tuple = ()  # flags.Flag of the flags it alone reads, with their defaults (added to flags):
    #                        train_mine.py's parser, the run name, resume and the unused-flag error take them
    # the rules of its flags
    reads: Callable = None
    unread: Callable = lambda s: ()
    check: Callable = lambda s: None  # settings -> None, or a ValueError for a combination it cannot run
    compares_identities: bool = True  # its loss needs 2 identities per batch or more (a triplet term)
    full_rate_params: Callable = lambda model: model.full_rate_parameters()  # the group at --lr; the rest at
    #                                                                          --backbone_lr_mult x
    tag: Callable = lambda s: s.method  # the run name's readable part
    describe: Callable = lambda s: f"--method {s.method}"  # the method and the settings its errors name
    augment: Callable = lambda s: {}  # settings -> data_loader.BatchAugment's method-specific arguments
    reproduction: Reproduction = Reproduction()

    def __post_init__(self):
        object.__setattr__(self, "flags", tuple(self.flags) + tuple(f.name for f in self.own_flags))


def two_stream_config(s):
    """embed_net's architecture: the strips head (--pcb on) or the global one, with or without AGW's
    non-local blocks."""
    return dict(arch=s.arch, share_net=s.share_net, pcb=s.pcb, gm_pool=s.gm_pool, gem_p=s.gem_p,
                non_local=getattr(s, "non_local", None) or "off",
                **(dict(local_feat_dim=s.local_feat_dim, num_strips=s.num_strips) if s.pcb == "on" else {}))


def check_two_stream(s):
    model_mine.check_non_local(getattr(s, "non_local", None) or "off", s.share_net)
    if s.pcb == "on" and (s.img_h % 16 or s.img_h // 16 % s.num_strips):
        raise ValueError(f"--img_h {s.img_h}: the feature map (img_h/16 rows) must split into --num_strips "
                         f"{s.num_strips} strips; use a multiple of {16 * s.num_strips}")


# the paper's own code (the strips' keys) and the reference flags every method of its family shares
PAPER_CODE = Reproduction(reference=dict(non_local="off", caj_aug="off"), marks=("head.conv_weight",))


def paper_family(triplet, margin=True, center=True, reproduction=PAPER_CODE):
    """A method of the paper's network and total loss (ReIDLoss) with its own triplet term
    (triplet(settings) -> loss module, or None for the ID loss alone)."""
    def reads(s):
        strips = ("local_feat_dim", "num_strips") if s.pcb == "on" else ()
        return ("pcb", "gm_pool", "gem_p", "margin", "label_smooth", "non_local") + strips + \
            (("w_center",) if center else ())

    return Method(
        model=model_mine.embed_net, config=two_stream_config,
        loss=lambda s: losses.ReIDLoss(triplet and triplet(s), s.w_center, s.label_smooth),
        flags=("pcb", "gm_pool", "gem_p", "margin", "label_smooth", "local_feat_dim", "num_strips", "w_center",
               "non_local"),
        heads=("strips", "global"),
        reads=reads,
        unread=lambda s: (() if s.gm_pool == "on" else ("gem_p",)) + (() if margin else ("margin",)),
        check=check_two_stream, compares_identities=triplet is not None,
        tag=lambda s: f"{s.method}_pcb-{s.pcb}",
        describe=lambda s: f"--method {s.method} --pcb {s.pcb} --gm_pool {s.gm_pool}",
        reproduction=reproduction)


def dgtl_config(s):
    return dict(arch=s.arch, share_net=s.share_net, head="dgtl", pcb=s.pcb, gem_p=s.gem_p, bpool=s.bpool,
                cpool=s.cpool, fuse=s.fuse)


def dgtl_unread(s):
    """gem_p without a GeM branch; fuse, hcloss and margin_hc without a coarse branch; margin_hc is
    HcTri's only (hijune6/DGTL-for-VT-ReID, train.py)."""
    unread = () if "gem" in (s.bpool, s.cpool) else ("gem_p",)
    if s.cpool == "no":
        return unread + ("fuse", "hcloss", "margin_hc")
    return unread + (("margin_hc",) if s.hcloss != "HcTri" else ())


def check_dgtl(s):
    if s.pcb == "on":
        raise ValueError("--pcb on: DGTL uses global features (leave --pcb out with --method dgtl)")


# DGTL (hijune6/DGTL-for-VT-ReID, README and train.py): global features, 31 epochs on RegDB and 61 on
# SYSU-MM01, evaluated every 5 epochs from epoch 5; LLCM takes the SYSU-MM01 setting, the demo the RegDB
# one on its own schedule.
_DGTL_REGDB = dict(bpool="max", cpool="max", fuse="sum", margin_hc=0.0, hcloss="HcTri", pcb="off", gem_p=3.0,
                   label_smooth="off", batch_size=8, num_pos=4)
_DGTL_SYSU = dict(bpool="avg", cpool="max", fuse="sum", margin_hc=0.5, hcloss="HcTri", pcb="off", gem_p=3.0,
                  label_smooth="off", batch_size=6, num_pos=8, epochs=61, eval_start=5, eval_every=5)

# AGW (Ye et al., TPAMI 2021; mangye16/Cross-Modal-Re-ID-baseline, train.py and model.py) as its code runs
# it: modality-specific stems, shared layer1-4 with five non-local blocks, GeM p=3, BN neck; ID + WRT
# (weight 1, no smoothing, no margin); P=8, K=4, SGD lr 0.1, warm-up 10, x0.1 at 20 and 50, 81 epochs of
# max(N_v, N_t) // (P*K) + 1 steps (its sampler's), evaluated every 2 epochs from epoch 2, the best
# post-BN ('bn') Rank-1 kept; no random erasing
AGW_NETWORK = dict(pcb="off", share_net=1, non_local="on", gm_pool="on", gem_p=3.0, label_smooth="off",
                   w_center=1.0)
AGW_SETTING = dict(AGW_NETWORK, batch_size=8, num_pos=4, epochs=81, eval_start=2, eval_every=2, optim="sgd",
                   backbone_lr_mult=0.1, warmup_epochs=10, lr_steps="20,50", erasing_p=0.0, pad=10)
CAJ_SETTING = dict(AGW_SETTING, epochs=100, caj_aug="on")
# DEEN's own loss weights (DEEN/train.py's --lambda_1, --lambda_2)
DEEN_FLAGS = (flags.Flag("lambda_1", float, 0.8, "DEEN: weight of its CPM loss (default 0.8)", low=0),
              flags.Flag("lambda_2", float, 0.01, "DEEN: weight of its orthogonality loss (default 0.01)", low=0))
DEEN_NETWORK = dict(share_net=1, margin=0.3, **{f.name: f.default for f in DEEN_FLAGS})
DEEN_SETTING = dict(DEEN_NETWORK, img_h=384, img_w=144, batch_size=6, num_pos=4, epochs=151, eval_start=1,
                    eval_every=1, optim="sgd", backbone_lr_mult=0.1, warmup_epochs=10, lr_steps="20,80", pad=10,
                    erasing_p=0.5)


def deen_config(s):
    """DEEN's network per dataset: RegDB's has no MFA3 and no layer4 (DEEN/model.py)."""
    return dict(arch=s.arch, share_net=1, head="deen", last_stage=3 if getattr(s, "dataset", None) == "regdb" else 4)


def deen_augment(s):
    """RandomGrayscale 0.5 of both modalities; Zhong et al.'s erasing (--erasing_p, 0.5) filled with the ImageNet
    mean in the normalised image, of area 0.2-0.8 on SYSU-MM01 and 0.02-0.4 elsewhere (DEEN/train.py)."""
    area = (0.2, 0.8) if s.dataset == "sysu" else (0.02, 0.4)
    return dict(gray_p=0.5, erasing=dict(sl=area[0], sh=area[1], mean=data_loader.MEAN))


def check_deen(s):
    if s.share_net != 1:
        raise ValueError(f"--share_net {s.share_net}: DEEN's network has modality-specific stems and shared "
                         f"layer1..4 (--share_net 1); leave --share_net out")
    if s.caj_aug == "on":
        raise ValueError("--caj_aug on: its joint batch [visible; visible; thermal] breaks the batch layout that "
                         "DEEN's CPM loss needs; leave --caj_aug out with --method deen")
    if getattr(s, "cpu_aug", False):
        raise ValueError("--cpu_aug: the per-image transform lacks DEEN's grayscale and erasing, which run on the "
                         "device's batch; leave --cpu_aug out with --method deen")

METHODS = {
    # the paper's: ID + hetero-center triplet (Liu et al., TMM 2021)
    "hctri": paper_family(lambda s: losses.CenterTripletLoss(margin=s.margin)),
    "batch-hard": paper_family(lambda s: losses.TripletLoss(margin=s.margin)),
    # AGW's weighted regularised triplet on this project's network (what --method agw was before AGW)
    "wrt": paper_family(lambda s: losses.TripletLoss_WRT(), margin=False),
    "agw": paper_family(
        lambda s: losses.TripletLoss_WRT(), margin=False,
        reproduction=Reproduction(
            defaults={"sysu": AGW_SETTING, "regdb": AGW_SETTING, "llcm": AGW_SETTING, "demo": AGW_NETWORK},
            reference=dict(AGW_NETWORK, arch="resnet50", erasing_p=0.0, caj_aug="off"),
            extra_batch=True, marks=("NL_2.",))),
    # CAJ (Ye et al., ICCV 2021; ICCV21_CAJ/ of the same repository, train_ext.py): AGW's network and
    # optimiser, its three-stream joint batch (--caj_aug), ADP (alpha 1, gamma 1, square 1; the KL term
    # has weight 0 there), 100 epochs; its documented test flips (testa.py)
    "caj": paper_family(
        lambda s: losses.TripletLoss_ADP(alpha=1, gamma=1, square=1), margin=False,
        reproduction=Reproduction(
            defaults={"sysu": CAJ_SETTING, "regdb": CAJ_SETTING, "llcm": CAJ_SETTING,
                      "demo": dict(AGW_NETWORK, caj_aug="on")},
            reference=dict(AGW_NETWORK, arch="resnet50", erasing_p=0.0, caj_aug="on"),
            test_defaults=dict(flip_test="on"), extra_batch=True, marks=("NL_2.",))),
    "id-only": paper_family(None, margin=False, center=False),
    # DEEN (Zhang and Wang, CVPR 2023; ZYK100/LLCM, DEEN/train.py): its own network (deen.py), CE + triplet
    # + lambda_1 CPM + lambda_2 orthogonality, 384x144, P=6 K=4, 151 epochs, evaluated every epoch from 1
    "deen": Method(
        model=deen.DEEN, config=deen_config,
        loss=lambda s: deen.DEENLoss(s.margin, s.lambda_1, s.lambda_2, s.num_pos),
        flags=("margin",), heads=("deen",), own_flags=DEEN_FLAGS,
        check=check_deen, augment=deen_augment,
        reproduction=Reproduction(
            defaults={"sysu": DEEN_SETTING, "regdb": DEEN_SETTING, "llcm": DEEN_SETTING, "demo": DEEN_NETWORK},
            reference=dict(DEEN_NETWORK, arch="resnet50", caj_aug="off"),
            test_defaults=dict(flip_test="on"), extra_batch=True, marks=("DEE.", "MFA1."))),
    # DGTL (Liu et al., IEEE SPL 2021): its reference keeps the later of two epochs of equal Rank-1 (>=)
    "dgtl": Method(
        model=model_mine.embed_net, config=dgtl_config,
        loss=lambda s: losses.DGTLLoss(s.margin, s.margin_hc, s.hcloss, s.label_smooth),
        flags=("pcb", "gem_p", "bpool", "cpool", "fuse", "margin", "label_smooth", "hcloss", "margin_hc"),
        heads=("dgtl",),
        unread=dgtl_unread, check=check_dgtl,
        tag=lambda s: f"dgtl-{s.bpool}-{s.cpool}",
        describe=lambda s: f"--method dgtl --cpool {s.cpool} --hcloss {s.hcloss}",
        reproduction=Reproduction(
            defaults={"regdb": dict(_DGTL_REGDB, epochs=31, eval_start=5, eval_every=5), "sysu": _DGTL_SYSU,
                      "llcm": _DGTL_SYSU, "demo": dict(_DGTL_REGDB)},
            reference=dict(caj_aug="off"), keep_ties=True, marks=("classifier_att.",))),
}


def method_flags():
    """Every flag that some method reads: a flag given for a method that does not read it is an error."""
    return tuple(dict.fromkeys(f for m in METHODS.values() for f in m.flags))


def method_reads(method, s):
    return method.reads(s) if method.reads is not None else method.flags


def unread_flags(method, s, explicit):
    """The flags of explicit that method, under settings s, does not read (in METHOD_FLAGS order)."""
    off = (set(method_flags()) - set(method_reads(method, s))) | set(method.unread(s))
    return [f for f in method_flags() if f in off and f in explicit]


def get_method(name, flag="--method"):
    if name not in METHODS:
        raise ValueError(f"{flag} must be one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name]


# the head names of the configs written before: the strips head was 'pcb', as the flag
OLD_HEADS = {"pcb": "strips"}


def network_config(recorded):
    """A network config as a checkpoint recorded it, in today's names (OLD_HEADS); the oldest files record
    no head, only the flag pcb (method_of, embed_net)."""
    config = dict(recorded)
    if isinstance(config.get("head"), str):
        config["head"] = OLD_HEADS.get(config["head"], config["head"])
    return config


def method_of(config):
    """(name, method) of the first method whose networks have this head (a checkpoint's architecture)."""
    head = config.get("head", "strips" if config.get("pcb", "on") == "on" else "global")
    for name, method in METHODS.items():
        if head in method.heads:
            return name, method
    raise ValueError(f"a network with head {head!r}, which no method of METHODS builds")


def looks_like(state_dict):
    """The name of the method whose networks alone have keys of this state dict (Reproduction.marks), else None."""
    for name, method in METHODS.items():
        if method.reproduction.marks and any(k.startswith(method.reproduction.marks) for k in state_dict):
            return name
    return None


def as_settings(config):
    """A checkpoint's architecture as settings a method's rules can read (absent flags are None)."""
    names = set(method_flags()) | {"arch", "share_net"}
    return SimpleNamespace(**{**dict.fromkeys(names), **config})


def unused_arch_flags(config, explicit):
    """The flags of explicit that a network of this config (a checkpoint's) does not read."""
    _, method = method_of(config)
    return unread_flags(method, as_settings(config), explicit)


# ----------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class Dataset:
    """One dataset. splits: numbered training splits (the CLI's --trial; a checkpoint per split, tested on
    its own) rather than one training set whose gallery is drawn in trials at test time. An evaluation round
    is one of those splits or one gallery trial."""
    defaults: dict
    train_data: Callable   # settings -> data_loader.TrainData
    evaluator: Callable    # (settings with the test flags, rounds, img_w, img_h) -> eval_metrics.Evaluator
    check: Callable        # settings -> None: read every list a training run needs (not the images)
    test_flags: dict       # test_mine.py's flags of this dataset, with their defaults
    describe: Callable = None  # settings -> the line naming the searches of its gallery trials
    splits: bool = False
    max_split: int = None
    default_rounds: str = "0-9"  # test_mine.py's default --trials: gallery trials, or splits
    train_flags: tuple = ()  # train_mine.py's flags of this dataset only
    labels: dict = None    # setting -> the name of its direction (the JSON's 'direction')


def check_sysu(s):
    data_loader.sysu_train_data(s.data_path, s.img_w, s.img_h)  # memory maps: no pixels read
    data_manager.process_query_sysu(s.data_path, s.mode)
    data_manager.process_gallery_sysu(s.data_path, s.mode, 0)


def check_llcm(s):
    data_loader.llcm_train_data(s.data_path, s.img_w, s.img_h)
    data_manager.process_query_llcm(s.data_path, "thermal")
    data_manager.process_gallery_llcm(s.data_path, "visible", 0)


def check_regdb(s):
    for part in ("train", "test"):
        for modality in data_manager.MODALITIES:
            data_manager.read_regdb_list(s.data_path, s.trial, modality, part)  # s.trial: the CLI's name of a split


PAPER_SCHEDULE = dict(optim="sgd", backbone_lr_mult=0.1, warmup_epochs=10, lr_steps="20,50", eval_start=10)
SYSU_SETTING = dict(batch_size=6, num_pos=8, w_center=1.0, label_smooth="off", gem_p=3.0, img_w=144, img_h=288,
                    epochs=61, pretrained="imagenet", data_path=None, pad=10, **PAPER_SCHEDULE)
REGDB_SETTING = dict(batch_size=8, num_pos=4, w_center=2.0, label_smooth="on", gem_p=10.0, img_w=144, img_h=288,
                     epochs=61, pretrained="imagenet", data_path=None, pad=10, **PAPER_SCHEDULE)
# demo: from scratch (no ImageNet weights offline), in full precision, inside minutes on a slow 2-core
# CPU: ResNet-18 at 64x32 (4 strips of one feature-map row), Adam, GeM p=3, a short schedule (each
# chosen by measurement: README). Pad 2 moves a 64x32 image by the fraction pad 10 moves a 288x144
# one (more would push body parts into the neighbouring 16 px strip, and its classifier would hardly learn)
DEMO_SETTING = dict(batch_size=8, num_pos=4, w_center=1.0, label_smooth="off", gem_p=3.0, img_w=32, img_h=64,
                    arch="resnet18", num_strips=4, epochs=12, pretrained="none", data_path=os.path.join("data", "demo"),
                    optim="adam", lr=4e-3, backbone_lr_mult=1.0, warmup_epochs=2, lr_steps="10", eval_start=11, pad=2)
# RegDB (the authors' test script): a direction per --tvsearch
REGDB_DIRECTIONS = {"off": ("visible->thermal",), "on": ("thermal->visible",),
                    "both": ("visible->thermal", "thermal->visible")}
# stem_swap: DEEN's test.py on RegDB feeds thermal images to the visible stem and the reverse (a compatibility
# mode for comparing with its printed numbers; off: each modality through its own stem)
REGDB_TEST_FLAGS = {"tvsearch": "off", "trial": None, "cross_split": False, "stem_swap": "off"}


def regdb_dataset(defaults, max_split):
    return Dataset(
        defaults=defaults, splits=True, max_split=max_split, default_rounds="1-10", train_flags=("trial",),
        test_flags=REGDB_TEST_FLAGS,
        train_data=lambda s: data_loader.regdb_train_data(s.data_path, s.trial, s.img_w, s.img_h, max(s.workers, 1)),
        evaluator=lambda s, splits, w, h: eval_metrics.RegDBEval(s.data_path, splits[0], w, h, s.workers,
                                                                 REGDB_DIRECTIONS[s.tvsearch],
                                                                 getattr(s, "stem_swap", "off") == "on"),
        check=check_regdb)


DATASETS = {
    "sysu": Dataset(
        defaults=SYSU_SETTING, train_flags=("mode",), test_flags={"mode": "all", "gall_mode": "single"},
        train_data=lambda s: data_loader.sysu_train_data(s.data_path, s.img_w, s.img_h),
        evaluator=lambda s, trials, w, h: eval_metrics.SYSUEval(s.data_path, s.mode, trials, s.gall_mode, w, h,
                                                                s.workers),
        check=check_sysu, describe=lambda s: f"SYSU-MM01 {s.mode} search, {s.gall_mode}-shot"),
    "regdb": regdb_dataset(REGDB_SETTING, 10),
    # LLCM: no HcTri setting was published; this project uses the paper's SYSU-MM01 one (README)
    "llcm": Dataset(
        defaults=SYSU_SETTING, test_flags={"direction": "ir2vis"},
        labels={v: k for k, v in eval_metrics.LLCM_LABELS.items()},
        train_data=lambda s: data_loader.llcm_train_data(s.data_path, s.img_w, s.img_h),
        evaluator=lambda s, trials, w, h: eval_metrics.LLCMEval(
            s.data_path, trials, eval_metrics.LLCM_DIRECTIONS[s.direction], w, h, s.workers),
        check=check_llcm,
        describe=lambda s: "LLCM " + ", ".join(eval_metrics.LLCM_LABELS[d]
                                              for d in eval_metrics.LLCM_DIRECTIONS[s.direction])),
    "demo": regdb_dataset(DEMO_SETTING, None),  # generated RegDB-style splits (demo_data.py)
}


def get_dataset(name):
    if name not in DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {name}")
    return DATASETS[name]


def with_test_flags(args):
    """args with the dataset's test flags that it lacks at their defaults (training evaluates with them)."""
    flags = get_dataset(args.dataset).test_flags
    return SimpleNamespace(**{**flags, **{k: v for k, v in vars(args).items() if k not in flags or v is not None}})


# ----------------------------------------------------------------------------- defaults

# the declared defaults of the experiment's flags: what neither the method nor the dataset sets
COMMON_DEFAULTS = {f.name: f.default for f in flags.FLAGS if "experiment" in f.scope and f.default is not None}
# the table's experiment flags added after run names were first given (flags.Flag.later)
LATER_FLAGS = {f.name: f.later for f in flags.FLAGS if f.later is not flags.UNSET}


def training_flags():
    """train_mine.py's flags: the table's, --dataset and --method with their choices, and each method's own
    (Method.own_flags). A method's own flag enters a run's name only when set, so that runs of the other
    methods keep their names."""
    known = {"dataset": tuple(DATASETS), "method": tuple(METHODS)}
    own = (replace(f, later=None, group=f"--method {name}'s own") for name, m in METHODS.items() for f in m.own_flags)
    return tuple(replace(f, choices=known[f.name]) if f.name in known else f for f in flags.FLAGS
                 if f.scope != flags.TEST) + tuple({f.name: f for f in own}.values())


def flag(name):
    """The declaration of one flag (test-time ones included), as training_flags() gives it."""
    return {f.name: f for f in flags.FLAGS + training_flags()}[name]


def architecture_flags():
    """The flags a checkpoint's network config records: test_mine.py's and extract.py's for the original
    codes' checkpoints, which record none."""
    return tuple(f for f in training_flags() if "architecture" in f.scope)


def experiment_flags():
    return flags.names(training_flags(), "experiment")


def locked_flags():
    return flags.names(training_flags(), "locked")


def later_flags():
    """{flag: the value of runs from before it}: the table's, and every method's own flag (None)."""
    return {f.name: f.later for f in training_flags() if f.later is not flags.UNSET}


def recorded_method(saved):
    """(the method a checkpoint's run trained with, a note or None) from its recorded args. --method agw
    was WRT on this project's network until AGW became AGW (with --non_local, in the same change): a
    file of those runs, which records no non_local, is a --method wrt run."""
    method = (saved or {}).get("method")
    if method == "agw" and "non_local" not in saved:
        return "wrt", ("it records --method agw from before --method agw became AGW (the weighted triplet on "
                       "this project's network, no non-local blocks): that is --method wrt now")
    return method, None


def flip_default(method):
    """test_mine.py's --flip_test for a checkpoint of this method: as its reference tests (CAJ's flips)."""
    return METHODS.get(method, METHODS[COMMON_DEFAULTS["method"]]).reproduction.test_defaults.get("flip_test", "off")


def fill_defaults(args, skip=()):
    """Set every flag left at None (but those in skip) to the published value for args.dataset
    (and args.method, where the method has its own), else to COMMON_DEFAULTS."""
    dataset = get_dataset(args.dataset)
    method = get_method(getattr(args, "method", None) or COMMON_DEFAULTS["method"])
    own = {f.name: f.default for f in method.own_flags}
    for layer in (method.reproduction.defaults.get(args.dataset, {}), own, dataset.defaults, COMMON_DEFAULTS):
        for key, value in layer.items():
            if key == "gem_p" and getattr(args, "pcb", None) == "off":
                value = 3.0  # the published p (10 on RegDB) is the PCB strips'; the global heads' is 3
            if key not in skip and hasattr(args, key) and getattr(args, key) is None:
                setattr(args, key, value)
    if "data_path" not in skip and getattr(args, "data_path", "") is None:
        raise ValueError(f"--data_path is required for --dataset {args.dataset} (the dataset's root folder)")
    return args


def check_choices(args, closed):
    """Closed-set flags ({flag: values}) among those whose value is set: one of their values."""
    for flag, values in closed.items():
        value = getattr(args, flag, None)
        if value is not None and value not in values:
            raise ValueError(f"--{flag} must be one of {', '.join(map(str, values))}, got {value!r}")


# ----------------------------------------------------------------------------- training's settings

def resolve_training(args, explicit):
    """train_mine.py's settings resolved and checked, before any work: the defaults of the dataset
    and method filled in, every flag checked, the method's unread flags set to None (so that they
    are shown and hashed as unset). explicit: the flags given on the command line."""
    args.dataset = args.dataset or COMMON_DEFAULTS["dataset"]
    fill_defaults(args)
    if args.lr is None:  # whatever the number of processes: they share one global batch of P identities
        args.lr = 0.1 if args.optim == "sgd" else 3.5e-4
    args.data_path = os.path.abspath(args.data_path)  # a resume from another folder reads the same data
    check_training(args, explicit)
    method = METHODS[args.method]
    for flag in set(method_flags()) - set(method_reads(method, args)):
        setattr(args, flag, None)
    return args


def combination_note(args, explicit):
    """A log line where flags given explicitly leave the chosen method's reference run (Reproduction.reference),
    else None: the combination is allowed, and its numbers are this project's, not the reference's."""
    ours = [f"--{k} {getattr(args, k)}" for k, v in METHODS[args.method].reproduction.reference.items()
            if k in explicit and getattr(args, k) != v]
    if not ours:
        return None
    return (f"note: --method {args.method} with {', '.join(ours)}: a combination no reference code ran "
            f"(this project's)")


def check_training(args, explicit):
    """Every training flag checked, each error naming its flag."""
    method = get_method(args.method)
    every = training_flags()
    check_choices(args, flags.choices(every))
    flags.check_ranges(args, every)
    if args.batch_size == 1 and method.compares_identities:
        raise ValueError(f"--batch-size 1: the {args.method} triplet term compares identities and needs at least 2 "
                         f"per batch (with 1 it is always 0); use --batch-size 2 or more, or --method id-only")
    data_loader.check_split(args.batch_size, getattr(args, "world_size", 1))
    parse_lr_steps(args.lr_steps)
    method.check(args)
    if getattr(args, "looped_head", False) and args.pcb != "on":
        raise ValueError("--looped_head: the per-strip loop exists for the PCB head only (--pcb on)")
    check_flags_apply(args, explicit, method)


def check_flags_apply(args, explicit, method):
    """A flag given where nothing reads it is an error: the method's, the dataset's, --cpu_aug's."""
    unused = unread_flags(method, args, explicit)
    owner = method.describe(args)
    if args.cpu_aug:  # the per-image transform replaces the batched augmentation, which applies these
        owner += " --cpu_aug"
        unused += [f for f in ("erasing_p", "channel_aug") if f in explicit and getattr(args, f) > 0]
    if unused:
        raise ValueError(f"{', '.join('--' + f for f in unused)}: not used by {owner}; leave "
                         f"{'it' if len(unused) == 1 else 'them'} out")
    dataset = DATASETS[args.dataset]
    if "mode" in explicit and "mode" not in dataset.train_flags:
        raise ValueError(f"--mode: only SYSU-MM01 has search modes (all | indoor); leave it out for --dataset "
                         f"{args.dataset}")
    if "trial" in explicit and not dataset.splits:
        raise ValueError(f"--trial: --dataset {args.dataset} has one training set (RegDB and the demo have "
                         f"splits 1..10); leave it out")
    if dataset.max_split and args.trial > dataset.max_split:
        raise ValueError(f"--trial {args.trial}: RegDB splits are 1..{dataset.max_split}")
    if args.sync_bn and args.world_size == 1:
        raise ValueError("--sync_bn synchronises batch norm across the processes of a torchrun launch; a single "
                         "process has nothing to synchronise: leave it out")
    if args.caj_aug == "on" and (args.cpu_aug or args.erasing_p > 0 or args.channel_aug > 0):
        given = "--cpu_aug" if args.cpu_aug else "--erasing_p" if args.erasing_p > 0 else "--channel_aug"
        raise ValueError(f"{given}: --caj_aug on is CAJ's augmentation, with its own erasing and channel "
                         f"operations on the device's batch; leave {given} out, or use --caj_aug off")
    if args.cpu_aug and args.resident_data == "on":
        raise ValueError("--cpu_aug runs the per-image transform in the loader's workers, which "
                         "--resident_data on bypasses: use one of the two")


def parse_lr_steps(text):
    try:
        steps = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--lr_steps: expected comma-separated epochs such as 20,50, got {text!r}") from None
    if list(steps) != sorted(steps) or any(s < 0 for s in steps):
        raise ValueError(f"--lr_steps: expected ascending non-negative epochs such as 20,50, got {text!r}")
    return steps
