"""The table of flags: each flag of train_mine.py declared once, with its type, choices or bounds, default,
help and scopes. The parsers (train_mine, test_mine, extract, bench) and the lists of the settings (the
experiment's flags, the locked ones, the architecture's, the defaults, the range checks) derive from it.

Scopes: 'experiment' flags name the run and a resumed run takes them from its checkpoint; 'locked' ones
cannot change on resume (the weights depend on them); 'architecture' ones are recorded in a checkpoint's
network config (test_mine.py and extract.py take them for the original codes' checkpoints); 'runtime'
ones say how a run computes, not what it trains. An experiment flag is None on the command line, so
that one given explicitly can be told from one left out; its declared default fills it later
(settings.fill_defaults), under the method's and the dataset's published values.
"""
import math
from dataclasses import dataclass
from types import SimpleNamespace

import loss as losses
import model_mine

# pixels a side: far above any re-ID setting (288x144); a larger --img_h/--img_w is a typo, and the first
# forward pass would ask for terabytes
MAX_IMG_SIDE = 4096
UNSET = object()  # later=UNSET: the flag is as old as run names


@dataclass(frozen=True)
class Flag:
    name: str
    type: type = str
    default: object = None
    help: str = None
    scope: tuple = ("experiment",)
    choices: tuple = None
    low: float = None      # value >= low (or > low when strict)
    strict: bool = False
    high: float = None     # value <= high
    high_why: str = ""     # said after the upper bound in its error
    group: str = None
    aliases: tuple = ()    # other spellings, e.g. --batch-size for --batch_size
    action: str = None
    nargs: str = None
    const: object = None
    # added after run names were first given: the value of the runs from before. It enters a run's name
    # only with another value (names stay as they were), and a checkpoint that lacks it ran with it
    later: object = UNSET
    column: bool = False   # a column of test_mine.py's results.csv, from the network config (in table order)

    def add_to(self, parser, default=UNSET, help=None, **over):
        """Add --name to parser (or a group); a script whose flag means more than the table says gives its
        own default and help. An experiment flag's command-line default is None."""
        if default is UNSET:
            default = None if "experiment" in self.scope else self.default
        kw = dict(default=default, help=help or self.help, dest=self.name)
        if self.action:
            kw["action"] = self.action
        else:
            kw.update(type=self.type if self.type is not str else None, choices=self.choices)
            if self.nargs:
                kw.update(nargs=self.nargs, const=self.const)
        kw.update(over)
        names = [f"--{self.name}"] + [f"--{a}" for a in self.aliases]
        if self.aliases:  # the authors' spelling first, as before
            names = names[::-1]
        parser.add_argument(*names, **{k: v for k, v in kw.items() if v is not None or k == "default"})

    def check(self, value):
        """The range rule of this flag: an error message, or None (None values are not checked)."""
        if value is None or isinstance(value, bool):
            return None
        if self.low == 0 and self.high == 1:
            ok = 0 <= value <= 1
            return None if ok else f"--{self.name} is a probability in [0, 1], got {value}"
        if self.low is not None and (value <= self.low if self.strict else value < self.low):
            return f"--{self.name} must be {'>' if self.strict else '>='} {self.low}, got {value}"
        if self.high is not None and value > self.high:
            return f"--{self.name} must be at most {self.high}{self.high_why}, got {value}"
        return None


EXP, LOCK, ARCH = ("experiment",), ("experiment", "locked"), ("experiment", "locked", "architecture")
RUN, TEST = ("runtime",), ("test",)
ON_OFF = ("on", "off")

FLAGS = (
    # data
    Flag("dataset", default="sysu", scope=LOCK, group="data", help="default sysu"),
    Flag("data_path", help="dataset root (default for demo: data/demo)", group="data"),
    Flag("trial", int, 1, "RegDB split 1..10 (default 1)", LOCK, low=1, group="data"),
    Flag("mode", default="all", help="SYSU evaluation during training (default all)", choices=("all", "indoor"),
         group="data"),
    Flag("img_w", int, None, "default 144 (demo 32)", low=1, high=MAX_IMG_SIDE, high_why=" pixels", group="data"),
    Flag("img_h", int, None, "default 288 (demo 64); PCB: a multiple of 16 x strips", low=1, high=MAX_IMG_SIDE,
         high_why=" pixels", group="data"),
    Flag("workers", int, None, "data loading processes (default 4 on a GPU, 0 on the CPU, where batches are "
         "cheap; with the training set resident on the device they only read RegDB and test images)", RUN, low=0,
         group="data"),
    Flag("resident_data", default="auto", choices=("auto", "on", "off"), scope=RUN, group="data",
         help="keep the uint8 training set on the training device and gather each batch there (auto: on a CUDA "
              "device where it takes at most 25%% of its memory and leaves 8 GiB free, and not with --cpu_aug, "
              "whose per-image transform runs in the loader)"),
    Flag("pad", int, None, "zero padding before the random crop, px (default 10; demo 2: the same fraction of a "
         "64x32 image, so that parts stay in their strips)", low=0, group="data"),
    Flag("erasing_p", float, 0.0, "random erasing probability (default 0: off)", low=0, high=1, group="data"),
    Flag("channel_aug", float, 0.0, "probability of this project's channel augmentation of the visible images, "
         "after Ye et al. ICCV 2021 (default 0: off; CAJ's own is --caj_aug)", low=0, high=1, group="data"),
    Flag("caj_aug", default="off", choices=ON_OFF, later="off", group="data",
         help="CAJ's joint batch (Ye et al., ICCV 2021): each visible image also as a channel-exchanged copy, "
              "channel random erasing on all three streams, random channel or grayscale on the thermal images "
              "(default off; CAJ on)"),
    Flag("cpu_aug", bool, False, "the authors' per-image PIL augmentation in the workers (slow; for comparisons)",
         action="store_true", group="data"),
    # model
    Flag("method", default="hctri", scope=ARCH, group="model",  # choices: settings.METHODS
         help="the method: its network and loss (default hctri; test_mine.py, extract.py: the method that trained "
              "the network, and a flag that one method alone reads, such as DGTL's --bpool, implies it)"),
    Flag("arch", default="resnet50", help="default resnet50; demo resnet18", scope=ARCH,
         choices=tuple(model_mine.ARCHS), group="model"),
    Flag("share_net", int, 2, "0 all shared ... 5 nothing shared (default 2)", ARCH, choices=tuple(range(6)),
         group="model", column=True),
    Flag("pcb", default="on", help="on: part strips; off: global feature (default on; DGTL off)", scope=ARCH,
         choices=ON_OFF, group="model", column=True),
    Flag("local_feat_dim", int, 256, "PCB strip feature size (default 256)", ARCH, low=1, group="model"),
    Flag("num_strips", int, 6, "PCB strips (default 6; demo 4)", ARCH, low=1, group="model"),
    Flag("gm_pool", default="on", help="GeM pooling (default on)", scope=EXP + ("architecture",), choices=ON_OFF,
         group="model"),
    Flag("gem_p", float, None, "GeM power (default: PCB 10 RegDB, 3 SYSU; global heads and DGTL 3)",
         EXP + ("architecture",), low=0, strict=True, group="model"),
    Flag("pretrained", help="imagenet | none | PATH (default imagenet; demo none)", group="model"),
    Flag("non_local", default="off", help="AGW's five non-local blocks in layer2 and layer3 (default off; AGW on)",
         scope=ARCH, choices=ON_OFF, later="off", group="model"),
    Flag("bpool", help="DGTL fine-branch pooling", scope=ARCH, choices=model_mine.POOLS, group="model"),
    Flag("cpool", help="DGTL coarse-branch pooling (the reference's unpublished wpa is not implemented)",
         scope=ARCH, choices=("no",) + model_mine.POOLS, group="model"),
    Flag("fuse", help="DGTL coarse fusion with the BN-ed fine feature", scope=ARCH, choices=("sum", "cat"),
         group="model"),
    # loss
    Flag("margin", float, 0.3, "triplet margin (default 0.3)", low=0, group="loss"),
    Flag("w_center", float, None, "weight of the strips' triplet losses", low=0, group="loss"),
    Flag("label_smooth", choices=ON_OFF, group="loss"),
    Flag("hcloss", help="DGTL center-granularity loss", choices=losses.HCLOSSES, group="loss"),
    Flag("margin_hc", float, None, "DGTL: added to --margin for HcTri", low=0, group="loss"),
    # optimisation
    Flag("optim", help="default sgd; demo adam", choices=("sgd", "adam"), group="optimisation"),
    Flag("lr", float, None, "learning rate of the full-rate group, the method's head layers (the backbone's is "
         "--backbone_lr_mult x; default 0.1 sgd, 3.5e-4 adam, demo 4e-3, whatever the number of processes: they "
         "share one batch)", low=0, strict=True, group="optimisation"),
    Flag("weight_decay", float, 5e-4, "default 5e-4", low=0, group="optimisation"),
    Flag("backbone_lr_mult", float, None, "backbone learning rate / --lr (default 0.1; demo 1, it "
         "starts from scratch)", low=0, group="optimisation"),
    Flag("warmup_epochs", int, None, "linear warm-up epochs (default 10)", low=0, group="optimisation"),
    Flag("lr_steps", help="epochs where the rate drops x0.1 (default 20,50)", group="optimisation"),
    Flag("epochs", int, None, "default 61 (epochs 0..60; DGTL RegDB 31; demo 12)", low=1, group="optimisation"),
    Flag("batch_size", int, None, "P identities per optimiser step, over all processes (torchrun: P/N each)",
         low=1, aliases=("batch-size",), group="optimisation"),
    Flag("num_pos", int, None, "K images per identity and modality", low=1, group="optimisation"),
    Flag("steps_per_epoch", int, 0, "cap on steps per epoch (default 0: a full epoch)", low=0, group="optimisation"),
    # evaluation and checkpoints
    Flag("eval_start", int, None, "first epoch evaluated (default 10; DGTL 5; demo 11)", low=0, group="evaluation"),
    Flag("eval_every", int, 2, "evaluate every N epochs from eval_start (default 2)", low=1, group="evaluation"),
    Flag("test_batch", int, 128, None, RUN, low=1, aliases=("test-batch",), group="evaluation"),
    Flag("model_path", help="checkpoint folder (default save_model/; a resumed run: its checkpoint's folder)",
         scope=RUN, group="evaluation"),
    Flag("log_path", default="log/", help="log folder", scope=RUN, group="evaluation"),
    Flag("resume", default="", help="continue the run of this checkpoint (its _last.pth)", scope=RUN,
         group="evaluation"),
    # speed and hardware
    Flag("gpu", help="CUDA device index, or 'cpu' (default: the first GPU, else the CPU)", scope=RUN, group="speed"),
    Flag("amp", default="auto", help="auto: bf16 on GPUs that have it, else fp16; full precision on the CPU",
         choices=("auto", "bf16", "fp16", "off"), group="speed"),
    Flag("compile", default="auto", nargs="?", const="default", choices=("auto", "off", "default", "reduce-overhead"),
         scope=RUN, group="speed", help="torch.compile the model (auto: mode reduce-overhead, i.e. CUDA graphs, on "
                                        "a single CUDA device; eager elsewhere)"),
    Flag("compile_backend", scope=RUN, choices=("inductor", "aot_eager"), group="speed",
         help="torch.compile's backend with --compile: inductor (default) | aot_eager (eager kernels, no C++ "
              "compiler: to tell an inductor failure from the model's)"),
    Flag("looped_head", bool, False, "the authors' per-strip loop (for comparisons)", RUN, action="store_true",
         group="speed"),
    Flag("sync_bn", bool, False, "torchrun: batch norm over the whole global batch (SyncBatchNorm, CUDA; default: "
         "each process's own images)", RUN, action="store_true", group="speed"),
    Flag("seed", int, 0, "default 0", low=0, high=2 ** 32 - 1, high_why=" (numpy's seed range)", group="speed"),
    Flag("print_freq", int, 10, "steps between progress updates", RUN, low=1, group="speed"),
    # test time (test_mine.py, extract.py, export.py)
    Flag("half", bool, False, "extract features under bf16/fp16 autocast", TEST, action="store_true",
         group="evaluation"),
    Flag("flip_test", choices=ON_OFF, scope=TEST, group="evaluation",
         help="average each feature with its mirror image's (default: as the checkpoint's method's reference "
              "tests: on for CAJ and DEEN, else off)"),
)
GROUPS = {"data": "data", "model": "model", "loss": "loss", "optimisation": "optimisation",
          "evaluation": "evaluation and checkpoints", "speed": "speed and hardware"}
BY_NAME = {f.name: f for f in FLAGS}
# the same by attribute (FLAG.share_net): code that names a flag of the table takes it from here
FLAG = SimpleNamespace(**BY_NAME)


def names(flags, scope):
    return tuple(f.name for f in flags if scope in f.scope)


def choices(flags):
    """{flag: its closed set of values}: the parsers' choices=, and the check of values that do not come
    from a command line (a resumed run's checkpoint, a namespace built by hand)."""
    return {f.name: f.choices for f in flags if f.choices}


def check_ranges(args, flags):
    """Every range rule of flags whose value args holds (None is not checked): the first error raised.
    Infinities and nan are refused first: they pass every comparison written as 'not ok'."""
    bad = sorted(f.name for f in flags if isinstance(getattr(args, f.name, None), float) and
                 not math.isfinite(getattr(args, f.name)))
    if bad:
        raise ValueError(f"--{bad[0]} must be a finite number, got {getattr(args, bad[0])}")
    for flag in flags:
        error = flag.check(getattr(args, flag.name, None))
        if error:
            raise ValueError(error)


def add_groups(parser, flags):
    """flags added to parser, each under its group's heading."""
    groups = {}
    for flag in flags:
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(GROUPS.get(flag.group, flag.group))
        flag.add_to(groups[flag.group])
    return parser

