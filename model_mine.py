"""embed_net: the two-stream ResNet of Liu et al. (TMM 2021) with a configurable share point, and
the heads on top of it: PCB strips, a global feature, or DGTL's fine + coarse branches (Liu et al.,
SPL 2021).

share_net = s splits the ResNet (50 or 18) into modality-specific and shared parts:
  s = 0  everything shared;  s = 1  specific stem, shared layer1..4;
  s = 2..4  specific stem + layer1..layer(s-1), shared layer s..4;  s = 5  nothing shared.
The module tree mirrors the authors' code (visible_module.visible.*, thermal_module.thermal.*,
base_resnet.base.*, and DGTL's bottleneck, classifier, classifier_att, cpool_layer.bottleneck) so
that their checkpoints load as they are.
"""
import copy
import os
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import data_manager

STEM = ("conv1", "bn1", "relu", "maxpool")
LAYERS = ("layer1", "layer2", "layer3", "layer4")
STAGES = ("conv1", "bn1") + LAYERS  # the stages that hold weights
STREAMS = ("visible_module.visible.", "thermal_module.thermal.")
BASE = "base_resnet.base."
# --arch -> (torchvision constructor, its ImageNet-1k weights, name in messages)
ARCHS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1, "ResNet-18"),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1, "ResNet-50"),
}
POOLS = ("avg", "max", "gem")


def check_arch(arch):
    if arch not in ARCHS:
        raise ValueError(f"--arch must be one of {', '.join(ARCHS)}, got {arch}")
    return ARCHS[arch]


def imagenet_state_dict(arch="resnet50"):
    """ImageNet weights of arch from torch's hub cache, downloading them if possible."""
    _, weights, name = check_arch(arch)
    cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=True, map_location="cpu")
    except Exception as e:  # no network, proxy, disk: one clear message for all of them
        raise OSError(  # OSError: the scripts print it as one line
            f"--pretrained imagenet: cannot load ImageNet {name} weights ({type(e).__name__}: {e}). "
            f"Download {weights.url} and put it at {cache}, or pass --pretrained PATH_TO_FILE "
            f"(or --pretrained none to train from scratch)") from None


def load_backbone_weights(pretrained, arch="resnet50"):
    """None for 'none', else a torchvision state dict of arch from 'imagenet' or a file path."""
    name = check_arch(arch)[2]
    if pretrained in (None, "none"):
        return None
    if pretrained == "imagenet":
        return imagenet_state_dict(arch)
    if not os.path.isfile(pretrained):
        raise FileNotFoundError(f"--pretrained: no such file: {pretrained} (expected 'imagenet', 'none' "
                                f"or the path of a torchvision {name} state dict)")
    try:
        sd = torch.load(pretrained, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, a pickle with code in it, ...
        raise ValueError(f"--pretrained {pretrained}: cannot read it as a {name} state dict "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"--pretrained {pretrained}: expected a {name} state dict (names -> tensors)")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def resnet_last_stride1(arch="resnet50", state_dict=None):
    """torchvision ResNet whose layer4 keeps the resolution (288x144 input -> 18x9 map).

    Without weights to load, each residual block's last batch norm starts at zero (Goyal et al.
    2017, torchvision's zero_init_residual), so that every block starts as the identity: without
    it a ResNet trained from scratch on a small set barely leaves its initial point.
    """
    build, _, name = check_arch(arch)
    net = build(weights=None, zero_init_residual=state_dict is None)
    if state_dict is not None:
        # checked here, not by load_state_dict: it raises on a shape mismatch even with strict=False
        own = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
        given = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        missing = [k for k in own if k not in given]
        unexpected = [k for k in given if k not in own]
        shapes = [k for k in own if k in given and tuple(given[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or shapes:
            raise ValueError(f"--pretrained: not a torchvision {name} state dict, as --arch {arch} needs "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]}, other shapes {shapes[:5]})")
        net.load_state_dict(given, strict=False)
    block = net.layer4[0]
    # the strided conv: the 3x3 of a Bottleneck (torchvision's "v1.5"), the first of a BasicBlock
    strided = block.conv2 if isinstance(block, torchvision.models.resnet.Bottleneck) else block.conv1
    strided.stride = (1, 1)
    block.downsample[0].stride = (1, 1)
    return net


def resnet50_last_stride1(state_dict=None):
    return resnet_last_stride1("resnet50", state_dict)


def _part(net, names):
    return nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names))


def split_names(share_net):
    """(modality-specific module names, shared module names) for a share point."""
    if not 0 <= share_net <= 5:
        raise ValueError(f"--share_net must be in 0..5, got {share_net}")
    if share_net == 0:
        return (), STEM + LAYERS
    return STEM + LAYERS[:share_net - 1], LAYERS[share_net - 1:]


def gem(x, p, dims):
    """Generalised-mean pooling, (mean(x^p) + 1e-12)^(1/p), as the authors compute it.

    Overflow-safe: always in float32 (with p = 10, float16 overflows from x = 3.03 on), and the
    powers are taken of x / m with m = max(1, max x), using the identity
    (mean(x^p) + e)^(1/p) = m * (mean((x/m)^p) + e/m^p)^(1/p), so that even float32 (which
    overflows from x = 7131 on) never sees a power above 1. Where m = 1 this is the formula itself.
    """
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        m = x.detach().amax(dim=dims, keepdim=True).clamp(min=1.0)
        mean = x.div(m).pow(p).mean(dim=dims)
        scale = m.reshape(mean.shape)  # not squeeze(dims): ONNX's TorchScript-based exporter takes one dim only
        return (mean + 1e-12 / scale.pow(p)).pow(1.0 / p) * scale


def global_pool(x, mode, p=3.0):
    """[B, C, H, W] -> [B, C] float32: 'avg', 'max' or 'gem' (power p) over all positions."""
    if mode == "gem":
        return gem(x, p, dims=(2, 3))
    if mode == "avg":
        return x.float().mean(dim=(2, 3))
    if mode == "max":
        return x.float().amax(dim=(2, 3))
    raise ValueError(f"pooling must be one of {', '.join(POOLS)}, got {mode}")


class NonLocal(nn.Module):
    """AGW's non-local block (Ye et al., TPAMI 2021; mangye16/Cross-Modal-Re-ID-baseline, model.py
    Non_local) as its code runs it: one inter-channel (reduc_ratio // reduc_ratio), 1x1 convolutions
    g, theta, phi with bias, no softmax (the pairwise products divided by the number of positions N),
    and an output BatchNorm whose weight and bias start at 0, so that the block starts as the identity.
    Keys as the reference's: g.0.*, W.0.*, W.1.*, theta.*, phi.*."""

    def __init__(self, channels, inter=1):
        super().__init__()
        self.inter = inter
        self.g = nn.Sequential(nn.Conv2d(channels, inter, 1))
        self.W = nn.Sequential(nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)

    def forward(self, x):
        # -1 for the batch and every other size given: a batch of 0 then reshapes, in PyTorch and in the
        # exported models alike (ONNX's Reshape cannot infer a -1 beside a 0)
        n = x.shape[2] * x.shape[3]
        g = self.g(x).reshape(-1, self.inter, n).permute(0, 2, 1)          # [B, N, inter]
        theta = self.theta(x).reshape(-1, self.inter, n).permute(0, 2, 1)  # [B, N, inter]
        phi = self.phi(x).reshape(-1, self.inter, n)                       # [B, inter, N]
        f = theta @ phi                                                    # [B, N, N], as the reference
        y = (f / f.shape[-1]) @ g
        y = y.permute(0, 2, 1).reshape(x.shape[0], self.inter, *x.shape[2:])
        return self.W(y) + x


# AGW's insertion points: after the last 2 blocks of layer2 and the last 3 of layer3 (the reference's
# non_layers = [0, 2, 3, 0]); a stage with fewer blocks (ResNet-18) takes one after each of its blocks
NON_LOCAL = {"layer2": 2, "layer3": 3}


def check_non_local(non_local, share_net):
    if non_local not in ("on", "off"):
        raise ValueError(f"--non_local must be 'on' or 'off', got {non_local!r}")
    if non_local == "on" and share_net > 2:
        raise ValueError(f"--non_local on: the non-local blocks go into layer2 and layer3, which --share_net "
                         f"{share_net} makes modality-specific; use --share_net 2 or less (AGW's is 1)")


def non_local_blocks(shared):
    """{stage: (block indices, ModuleList of NonLocal)} for the shared stages (a torchvision ResNet's)."""
    out = {}
    for name, stage in shared.named_children():
        if name in NON_LOCAL:
            n = min(NON_LOCAL[name], len(stage))
            out[name] = (tuple(range(len(stage) - n, len(stage))),
                         nn.ModuleList(NonLocal(_out_channels(stage)) for _ in range(n)))
    return out


def bn_neck(dim):
    """BatchNorm1d with its bias frozen at 0 (the authors' "no shift"), weight N(1, 0.01)."""
    bn = nn.BatchNorm1d(dim)
    bn.bias.requires_grad_(False)
    nn.init.normal_(bn.weight, 1.0, 0.01)
    nn.init.zeros_(bn.bias)
    return bn


def id_classifier(dim, class_num):
    """Bias-free linear classifier, weight N(0, 0.001^2)."""
    fc = nn.Linear(dim, class_num, bias=False)
    nn.init.normal_(fc.weight, std=0.001)
    return fc


class StripLayers(nn.Module):
    """The layers of num_strips part strips: GeM pool, per-strip 1x1 conv + BN + ReLU, per-strip classifier.

    The strips' weights are stacked so that all strips run as one batched matmul; the authors'
    per-strip layout (local_conv_list.i.*, fc_list.i.*) is converted on load (see embed_net).
    A per-strip BatchNorm2d over 256 channels equals one BatchNorm1d over strips*256 channels.
    """

    def __init__(self, in_dim, class_num, num_strips=6, local_feat_dim=256, gem_p=3.0, gm_pool="on"):
        super().__init__()
        s, d = num_strips, local_feat_dim
        self.num_strips, self.gem_p, self.gm_pool = s, gem_p, gm_pool
        self.conv_weight = nn.Parameter(torch.empty(s, d, in_dim))
        self.conv_bias = nn.Parameter(torch.empty(s, d))
        self.bn = nn.BatchNorm1d(s * d)
        self.fc_weight = nn.Parameter(torch.empty(s, class_num, d))
        self.fc_bias = nn.Parameter(torch.zeros(s, class_num))
        # The authors' initialisation: Kaiming-normal fan_in convs with nn.Conv2d's default bias,
        # BatchNorm2d's default, classifiers N(0, 0.001^2) with zero bias.
        nn.init.normal_(self.conv_weight, std=(2.0 / in_dim) ** 0.5)
        nn.init.uniform_(self.conv_bias, -in_dim ** -0.5, in_dim ** -0.5)
        nn.init.normal_(self.fc_weight, std=0.001)

    def pool(self, x):
        """[B, C, H, W] -> [B, S, C] pooled strips."""
        _, c, h, w = x.shape
        if h % self.num_strips:
            raise ValueError(f"feature map height {h} is not divisible by --num_strips {self.num_strips}: "
                             f"use an --img_h that is a multiple of {16 * self.num_strips}")
        # -1 for the batch (see NonLocal.forward): a batch of 0 reshapes
        x = x.reshape(-1, c, self.num_strips, (h // self.num_strips) * w)
        if self.gm_pool == "on":
            pooled = gem(x, self.gem_p, dims=-1)
        else:  # the authors' PCB falls back to max pooling
            pooled = x.amax(dim=-1).float()
        return pooled.transpose(1, 2)

    def forward(self, x):
        """[B, C, H, W] -> local features [B, S, D] and logits [B, S, classes]."""
        pooled = self.pool(x)
        feat = torch.einsum("bsc,sdc->bsd", pooled, self.conv_weight) + self.conv_bias
        # no -1 beside the batch's size: it cannot be inferred for a batch of 0 (an exported model's N is dynamic)
        feat = F.relu(self.bn(feat.flatten(1))).reshape(feat.shape)
        logits = torch.einsum("bsd,skd->bsk", feat, self.fc_weight) + self.fc_bias
        return feat, logits

    def forward_looped(self, x):
        """Reference: the authors' loop over strips (Conv2d, BatchNorm2d, Linear per strip), same weights.

        Used by tests and by --looped_head; the batch-norm statistics it updates are the same.
        """
        pooled = self.pool(x)
        d = self.conv_weight.shape[1]
        feats, logits = [], []
        for i in range(self.num_strips):
            f = F.conv2d(pooled[:, i, :, None, None], self.conv_weight[i, :, :, None, None], self.conv_bias[i])
            sl = slice(i * d, (i + 1) * d)
            rm = self.bn.running_mean[sl] if self.bn.running_mean is not None else None
            rv = self.bn.running_var[sl] if self.bn.running_var is not None else None
            f = F.batch_norm(f, rm, rv, self.bn.weight[sl], self.bn.bias[sl],
                             self.training, self.bn.momentum, self.bn.eps)
            f = F.relu(f).flatten(1)
            feats.append(f)
            logits.append(F.linear(f, self.fc_weight[i], self.fc_bias[i]))
        if self.training:
            self.bn.num_batches_tracked += 1
        return torch.stack(feats, 1), torch.stack(logits, 1)


class CoarsePool(nn.Module):
    """DGTL's coarse branch before its classifier (the reference's cpool_layer): h = BN2(g) with
    g = pool(X) + b ('sum') or [pool(X); b] ('cat'), b being the BN-ed fine feature."""

    def __init__(self, in_dim, mode, fuse, gem_p):
        super().__init__()
        self.mode, self.fuse, self.gem_p = mode, fuse, gem_p
        self.bottleneck = bn_neck(2 * in_dim if fuse == "cat" else in_dim)

    def forward(self, x, b):
        y = global_pool(x, self.mode, self.gem_p)
        return self.bottleneck(y + b if self.fuse == "sum" else torch.cat((y, b), 1))


def resolve_head(head, pcb):
    """(head, pcb) from the two ways of naming a head: pcb 'on' is the strips head, 'off' a global one."""
    if pcb not in (None, "on", "off"):
        raise ValueError(f"--pcb must be 'on' or 'off', got {pcb}")
    if head is None:
        head = "strips" if pcb in (None, "on") else "global"
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head}")
    want = "on" if head == "strips" else "off"
    if pcb not in (None, want):
        if head == "dgtl":
            raise ValueError("--pcb on: the DGTL head uses global features, not part strips (pass --pcb off "
                             "or leave it out)")
        raise ValueError(f"head {head} needs --pcb {want}, got --pcb {pcb}")
    return head, want


def dgtl_options(head, bpool, cpool, fuse, gm_pool):
    """(bpool, cpool, fuse) checked; (None, None, None) for the other heads, which have no such options."""
    if head != "dgtl":
        # their defaults ('no' coarse branch, 'sum') are inert and may be passed along; anything else is not
        inert = dict(bpool=(None,), cpool=(None, "no"), fuse=(None, "sum"))
        given = [f"--{n} {v}" for n, v in dict(bpool=bpool, cpool=cpool, fuse=fuse).items() if v not in inert[n]]
        if given:
            raise ValueError(f"{', '.join(given)}: only the DGTL head has this option (head {head})")
        return None, None, None
    bpool = "avg" if bpool is None else bpool
    cpool = "no" if cpool is None else cpool
    fuse = "sum" if fuse is None else fuse
    if bpool not in POOLS:
        raise ValueError(f"--bpool must be one of {', '.join(POOLS)}, got {bpool}")
    if cpool == "wpa":
        raise ValueError("--cpool wpa (IWPA) is not implemented: use avg, max, gem or no")
    if cpool not in POOLS + ("no",):
        raise ValueError(f"--cpool must be one of {', '.join(POOLS)} or no, got {cpool}")
    if fuse not in ("sum", "cat"):
        raise ValueError(f"--fuse must be sum or cat, got {fuse}")
    if fuse == "cat" and cpool == "no":
        raise ValueError("--fuse cat builds the coarse branch's feature, which --cpool no removes: "
                         "use --cpool avg, max or gem, or --fuse sum")
    if gm_pool != "on":
        raise ValueError(f"--gm_pool {gm_pool}: the DGTL head pools with --bpool and --cpool (gem is --bpool gem)")
    return bpool, cpool, fuse


def _out_channels(blocks):
    """The output channels of a torchvision ResNet stage or residual block (Bottleneck or BasicBlock)."""
    last = blocks[-1] if isinstance(blocks, nn.Sequential) else blocks
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


class TwoStreamResNet(nn.Module):
    """The two-stream backbone (Liu et al., TMM 2021): modality-specific ResNet parts
    (visible_module.visible, thermal_module.thermal) up to the share point, the shared base_resnet.base
    after it (split_names), last stride 1, its stages up to layer<last_stage> (DEEN's RegDB network
    stops at layer3). Each stream starts from its own copy of the same weights.

    The seam for a method's own blocks: insert(place, block) runs a block registered on the network at
    a named place of the shared part, 'layer2' after stage layer2, 'layer2.3' after its residual block 3
    (self.places lists them), in the order inserted. AGW's non-local blocks and DEEN's MFA and DEE
    blocks go in through it; the blocks' state-dict keys are the names they are registered under.
    """

    def __init__(self, arch="resnet50", share_net=2, pretrained="none", last_stage=4):
        super().__init__()
        specific, shared = split_names(share_net)
        shared = tuple(n for n in shared if n not in LAYERS[last_stage:])
        base = resnet_last_stride1(arch, load_backbone_weights(pretrained, arch))
        self.share_net = share_net
        self.out_channels = _out_channels(getattr(base, LAYERS[last_stage - 1]))
        self.visible_module = nn.Module()
        self.thermal_module = nn.Module()
        self.base_resnet = nn.Module()
        self.visible_module.visible = _part(copy.deepcopy(base), specific)
        self.thermal_module.thermal = _part(copy.deepcopy(base), specific)
        self.base_resnet.base = _part(base, shared)
        self.places = tuple(p for n, stage in self.base_resnet.base.named_children()
                            for p in ((n,) + tuple(f"{n}.{i}" for i in range(len(stage))) if n in LAYERS else (n,)))
        self.blocks_at = {}  # place -> [(block, with_input)]: a plain dict, the blocks are registered elsewhere
        self.split_stages = set()  # the stages with a block between their residual blocks

    def insert(self, place, block, with_input=False):
        """Run block at place: x = block(x), or block(x, x_in) with_input (x_in: the input of the stage or
        residual block that place follows, e.g. DEEN's MFA). block must be registered on this network
        (its weights are saved under that name), e.g. self.NL_2 = ModuleList(...) before inserting NL_2[0]."""
        if place not in self.places:
            raise ValueError(f"no place {place!r} in the shared stages of this backbone (--share_net "
                             f"{self.share_net}); its places: {', '.join(self.places)}")
        if not any(m is block for m in self.modules()):
            raise ValueError(f"the block for {place!r} is not registered on the network: assign it to an "
                             f"attribute first, so that its weights are saved and loaded")
        self.blocks_at.setdefault(place, []).append((block, with_input))
        if "." in place:
            self.split_stages.add(place.split(".")[0])

    def channels(self, place):
        """(input, output) channels of the stage or residual block that place follows ('layer2', 'layer2.3'):
        the sizes of a block inserted there (DEEN's MFA reads both)."""
        name, _, index = place.partition(".")
        if place not in self.places or name not in LAYERS:
            raise ValueError(f"channels: {place!r} is not a stage or residual block of the shared stages; "
                             f"their places: {', '.join(p for p in self.places if p.split('.')[0] in LAYERS)}")
        stage = getattr(self.base_resnet.base, name)
        blocks = stage[int(index)] if index else stage
        first = blocks if index else stage[0]
        return first.conv1.in_channels, _out_channels(blocks)

    def streams(self, x1, x2, modality=None):
        """The modality-specific part: modality None both (x1 visible, x2 thermal; visible rows first),
        'visible' x1 only, 'thermal' x2 only (data_manager.MODALITIES; a str, so a compiled graph holds it fixed)."""
        data_manager.check_modality(modality, both=True)
        if modality is None:
            return torch.cat((self.visible_module.visible(x1), self.thermal_module.thermal(x2)), 0)
        if modality == "visible":
            return self.visible_module.visible(x1)
        return self.thermal_module.thermal(x2)

    def backbone(self, x1, x2, modality=None):
        x = self.streams(x1, x2, modality)
        if not self.blocks_at:
            return self.base_resnet.base(x)
        for name, stage in self.base_resnet.base.named_children():
            x_in = x
            if name in self.split_stages:
                for i, block in enumerate(stage):
                    x = self._blocks(f"{name}.{i}", block(x), x)
            else:
                x = stage(x)
            x = self._blocks(name, x, x_in)
        return x

    def _blocks(self, place, x, x_in):
        for block, with_input in self.blocks_at.get(place, ()):
            x = block(x, x_in) if with_input else block(x)
        return x


class StripHead(nn.Module):
    """The PCB part strips as a network's head part (head 'strips'). Training: 'strips' [S, B, D] and
    'strip_logits' [S, B, classes], 'feat' the strips joined; evaluation: 'parts'."""
    feature_names = ("parts",)

    def __init__(self, dim, class_num, num_strips, local_feat_dim, gem_p, gm_pool):
        super().__init__()
        # 'head': the authors' attribute, whose state-dict keys (head.*) every checkpoint has
        self.head = StripLayers(dim, class_num, num_strips, local_feat_dim, gem_p, gm_pool)

    def forward(self, x, looped_head=False):
        feat, logits = (self.head.forward_looped if looped_head else self.head)(x)
        feat_all = feat.flatten(1)
        if not self.training:
            return {"parts": feat_all}
        # [S, B, ...] by unbind + stack, not a transposed copy: the gradients then reach the head in the
        # memory layout (and summation order) they always had, so training is bit for bit as before
        strips, strip_logits = feat.unbind(1), logits.unbind(1)
        return {"strips": torch.stack(strips), "strip_logits": torch.stack(strip_logits), "feat": feat_all}


class GlobalHead(nn.Module):
    """One GeM- (gm_pool on) or average-pooled feature, the BN neck and the ID classifier. Training:
    'feat' the pooled feature, 'logits'; evaluation: 'bn' (reported) and 'pool'."""
    feature_names = ("bn", "pool")

    def __init__(self, dim, class_num, gm_pool, gem_p):
        super().__init__()
        self.pool, self.gem_p = "gem" if gm_pool == "on" else "avg", gem_p
        self.bottleneck = bn_neck(dim)
        self.classifier = id_classifier(dim, class_num)

    def forward(self, x):
        x_pool = global_pool(x, self.pool, self.gem_p)
        feat = self.bottleneck(x_pool)
        if self.training:
            return {"feat": x_pool, "logits": self.classifier(feat)}
        return {"bn": feat, "pool": x_pool}


class DGTLHead(nn.Module):
    """DGTL's two granularities (hijune6/DGTL-for-VT-ReID, model_main.py): the fine branch f = bpool(X),
    b = BN1(f), W1 b and, unless cpool is 'no', the coarse branch h = BN2(cpool(X) + b) (of [cpool(X); b]
    with fuse 'cat'), W2 h. Training adds 'coarse' and 'coarse_logits'; evaluation: 'coarse', 'fine'."""

    def __init__(self, dim, class_num, bpool, cpool, fuse, gem_p):
        super().__init__()
        self.bpool, self.gem_p, self.coarse = bpool, gem_p, cpool != "no"
        self.feature_names = ("coarse", "fine") if self.coarse else ("fine",)
        self.bottleneck = bn_neck(dim)  # the fine branch's modules are the global head's, in the reference's order
        self.classifier = id_classifier(dim, class_num)
        if self.coarse:
            self.classifier_att = id_classifier(2 * dim if fuse == "cat" else dim, class_num)
            self.cpool_layer = CoarsePool(dim, cpool, fuse, gem_p)

    def forward(self, x):
        f = global_pool(x, self.bpool, self.gem_p)
        b = self.bottleneck(f)
        if not self.coarse:
            return {"feat": f, "logits": self.classifier(b)} if self.training else {"fine": b}
        h = self.cpool_layer(x, b)
        if self.training:
            return {"feat": f, "logits": self.classifier(b), "coarse": h, "coarse_logits": self.classifier_att(h)}
        return {"coarse": h, "fine": b}


# head -> its part, from the input channels and the network's config (the resolved options)
HEAD_PARTS = {
    "strips": lambda dim, class_num, num_strips, local_feat_dim, gem_p, gm_pool, **_: StripHead(
        dim, class_num, num_strips, local_feat_dim, gem_p, gm_pool),
    "global": lambda dim, class_num, gm_pool, gem_p, **_: GlobalHead(dim, class_num, gm_pool, gem_p),
    "dgtl": lambda dim, class_num, bpool, cpool, fuse, gem_p, **_: DGTLHead(dim, class_num, bpool, cpool, fuse, gem_p),
}
HEADS = tuple(HEAD_PARTS)


class embed_net(TwoStreamResNet):  # noqa: N801 -- the authors' public name
    """The network of the paper (Liu et al., IEEE TMM 2021; hijune6/Hetero-center-triplet-loss-for-VT-
    Re-ID, model_mine.py): the two-stream backbone (share_net 0..5), AGW's non-local blocks inserted into
    it (non_local 'on'), and one head part (HEAD_PARTS): 'strips' part strips (pcb 'on', the default),
    'global' one pooled feature with a BN neck (pcb 'off'), 'dgtl' DGTL's fine and coarse branches.

    The scripts pass every option resolved (settings.METHODS); the keyword defaults here are the
    paper's SYSU-MM01 network, for use from Python (GeM p = 3 for every head).

    arch: 'resnet50' (the paper's) or 'resnet18', both with last stride 1.
    pretrained: 'imagenet' (the paper's initialisation; what train_mine.py uses for SYSU-MM01 and
    RegDB), 'none' (the default, like torchvision's weights=None: nothing is downloaded, residual
    blocks start as identities) or the path of a torchvision state dict of arch.
    """

    def __init__(self, class_num, non_local="off", gm_pool="on", arch="resnet50", share_net=2, pcb=None,
                 local_feat_dim=256, num_strips=6, gem_p=3.0, pretrained="none", head=None, bpool=None,
                 cpool=None, fuse=None):
        check_non_local(non_local, share_net)
        check_arch(arch)
        gm_pool = "on" if gm_pool is None else gm_pool  # None: left out, as for the other options
        if gm_pool not in ("on", "off"):
            raise ValueError(f"--gm_pool must be 'on' or 'off', got {gm_pool}")
        head, pcb = resolve_head(head, pcb)
        bpool, cpool, fuse = dgtl_options(head, bpool, cpool, fuse, gm_pool)
        super().__init__(arch, share_net, pretrained)
        self.pcb, self.gm_pool, self.bpool, self.cpool, self.fuse = pcb, gm_pool, bpool, cpool, fuse
        self.gem_p = float(gem_p)
        # everything embed_net(**config) needs to rebuild this model (the weights are loaded after)
        self.config = dict(class_num=class_num, share_net=share_net, pcb=pcb, local_feat_dim=local_feat_dim,
                           num_strips=num_strips, arch=arch, head=head, gm_pool=gm_pool, gem_p=self.gem_p,
                           bpool=bpool, cpool=cpool, fuse=fuse)
        self.non_local_at = {}  # stage -> block indices followed by a non-local block (self.NL_2, self.NL_3)
        if non_local == "on":  # recorded only when on: the files written before the option rebuild as they were
            self.config.update(non_local="on")
            for stage, (at, blocks) in non_local_blocks(self.base_resnet.base).items():
                self.non_local_at[stage] = at
                setattr(self, f"NL_{stage[-1]}", blocks)  # the reference's names: NL_2.0.*, NL_3.2.*
                for i, block in zip(at, blocks):
                    self.insert(f"{stage}.{i}", block)
        self.set_head(HEAD_PARTS[head](self.out_channels, **self.config))
        self._register_load_state_dict_pre_hook(_original_pcb_keys_hook)

    def set_head(self, part):
        """Register the head part's modules on the network itself, under their own names (the authors'
        flat keys: head.*, bottleneck.*, classifier.*, ...); the part itself is kept unregistered."""
        for name, module in part.named_children():
            self.add_module(name, module)
        object.__setattr__(self, "head_part", part)

    def train(self, mode=True):
        super().train(mode)
        self.head_part.training = mode  # not a registered child (set_head), so nn.Module.train misses it
        return self

    def full_rate_parameters(self):
        """The parameters trained at the full learning rate, --lr: the head part's (the rest, the backbone and
        its blocks, at --backbone_lr_mult x)."""
        return list(self.head_part.parameters())

    @property
    def feature_names(self):
        """The names of the features evaluation gives, the reported one first."""
        return self.head_part.feature_names

    def features(self, x, modality):
        """{name: L2-normalised float32 feature [N, D]} of one modality's images (modality 'visible' or
        'thermal'; x normalised [N, 3, H, W]), the reported one first: what evaluation ranks with."""
        out = self(x, x, data_manager.check_modality(modality))
        return {name: F.normalize(f.float(), dim=1) for name, f in out.items()}

    def forward(self, x1, x2, modality=None, looped_head=False):
        """Named outputs: in training what the losses read, in evaluation the features of feature_names
        (the reported one first) before the L2 normalisation of features()."""
        x = self.backbone(x1, x2, modality)
        # The heads run in float32 even under autocast: they cost little, and their batch norms
        # divide by the spread of the pooled features across the batch, which bf16 rounding can
        # swamp (early in training that spread is tiny).
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            return self.head_part(x, looped_head=True) if looped_head else self.head_part(x)


def _original_pcb_keys_hook(state_dict, prefix, *args):
    convert_original_keys(state_dict, prefix)


def convert_original_keys(state_dict, prefix=""):
    """Rewrite, in place, the authors' per-strip keys (local_conv_list.i.{0,1}.*, fc_list.i.*) into
    StripLayers' stacked ones; a state dict without them is left as it is."""
    n = 0
    while f"{prefix}local_conv_list.{n}.0.weight" in state_dict:
        n += 1
    if n == 0:
        return state_dict

    def pop_stack(fmt):
        keys = [prefix + fmt.format(i) for i in range(n)]
        missing = [k for k in keys if k not in state_dict]
        if missing:
            raise KeyError(f"checkpoint has local_conv_list.0..{n - 1} but lacks {missing}")
        return torch.stack([state_dict.pop(k) for k in keys])

    head = prefix + "head."
    state_dict[head + "conv_weight"] = pop_stack("local_conv_list.{}.0.weight").flatten(2)
    state_dict[head + "conv_bias"] = pop_stack("local_conv_list.{}.0.bias")
    for k in ("weight", "bias", "running_mean", "running_var"):
        state_dict[head + "bn." + k] = pop_stack("local_conv_list.{}.1." + k).flatten()
    state_dict[head + "bn.num_batches_tracked"] = pop_stack("local_conv_list.{}.1.num_batches_tracked")[0]
    state_dict[head + "fc_weight"] = pop_stack("fc_list.{}.weight")
    state_dict[head + "fc_bias"] = pop_stack("fc_list.{}.bias")
    return state_dict


def to_original_state_dict(model):
    """This model's weights under the authors' key layout (what their test.py loads)."""
    sd = OrderedDict((k, v) for k, v in model.state_dict().items() if not k.startswith("head."))
    if model.pcb == "on":
        h = model.head
        s, d = h.conv_weight.shape[:2]
        for i in range(s):
            sl = slice(i * d, (i + 1) * d)
            sd[f"local_conv_list.{i}.0.weight"] = h.conv_weight[i, :, :, None, None].detach().clone()
            sd[f"local_conv_list.{i}.0.bias"] = h.conv_bias[i].detach().clone()
            for k in ("weight", "bias", "running_mean", "running_var"):
                sd[f"local_conv_list.{i}.1.{k}"] = getattr(h.bn, k)[sl].detach().clone()
            sd[f"local_conv_list.{i}.1.num_batches_tracked"] = h.bn.num_batches_tracked.clone()
            sd[f"fc_list.{i}.weight"] = h.fc_weight[i].detach().clone()
            sd[f"fc_list.{i}.bias"] = h.fc_bias[i].detach().clone()
    return sd


def _stage(key, prefix):
    """The stage (conv1, bn1, layer1..4) of a backbone key under prefix, else None."""
    return key[len(prefix):].split(".", 1)[0] if key.startswith(prefix) else None


def drop_unused_stages(state_dict, share_net):
    """(state dict, ignored keys) of a checkpoint of a reference code that stores its three ResNets
    whole (DGTL's, AGW's and CAJ's): the stages that share point does not run (the streams' shared stages, the base's
    specific ones) are dropped, since no gradient ever reached them.

    Only a state dict holding every stage under all three prefixes is that layout; any other is
    returned as it is, so that a share point that does not fit it still fails the strict load.
    That layout has every key at any share point, so the share point is checked from the values:
    the reference builds its three ResNets from the same weights and never updates a stage it does
    not run, so both streams hold the same copy of a stage they do not run, and the base holds
    that same copy of a stage it does not run.
    """
    specific, shared = split_names(share_net)
    present = {p: {_stage(k, p) for k in state_dict} for p in STREAMS + (BASE,)}
    if not all(set(STAGES) <= stages for stages in present.values()):
        return state_dict, []

    def same(stage, a, b):
        xa = {k[len(a):]: v for k, v in state_dict.items() if _stage(k, a) == stage}
        xb = {k[len(b):]: v for k, v in state_dict.items() if _stage(k, b) == stage}
        return xa.keys() == xb.keys() and all(torch.equal(xa[k], xb[k]) for k in xa)

    for stage in STAGES:
        if stage in shared and not same(stage, *STREAMS):
            raise ValueError(f"--share_net {share_net}: this checkpoint of a reference code (three whole ResNets) "
                             f"has different {stage} weights in its two streams, so it ran {stage} per modality: "
                             f"it needs a larger --share_net (DGTL's is 2, AGW's and CAJ's 1)")
        if stage in specific and same(stage, *STREAMS) and not same(stage, STREAMS[0], BASE):
            raise ValueError(f"--share_net {share_net}: this checkpoint of a reference code (three whole ResNets) "
                             f"trained {stage} in the shared base only, so it shared {stage}: it needs a smaller "
                             f"--share_net (DGTL's is 2, AGW's and CAJ's 1)")
    unused = {p: set(shared) for p in STREAMS}
    unused[BASE] = set(specific)
    kept, ignored = OrderedDict(), []
    for k, v in state_dict.items():
        if any(_stage(k, p) in u for p, u in unused.items()):
            ignored.append(k)
        else:
            kept[k] = v
    return kept, ignored


def to_dgtl_state_dict(model):
    """This model's weights in the layout of the DGTL, AGW and CAJ references: three whole ResNets
    (thermal, visible, base) then the rest (head, AGW's non-local blocks NL_*). The stages the model
    does not run are filled with copies of the ones it does (their values never matter:
    drop_unused_stages removes them again)."""
    sd = to_original_state_dict(model)
    specific, _ = split_names(model.share_net)
    out = OrderedDict()
    for prefix in (STREAMS[1], STREAMS[0], BASE):
        for stage in STAGES:
            used = (stage in specific) == (prefix != BASE)
            owner = prefix if used else (BASE if prefix != BASE else STREAMS[0])
            for k, v in sd.items():
                if _stage(k, owner) == stage:
                    out[prefix + k[len(owner):]] = v if used else v.clone()
    out.update((k, v) for k, v in sd.items() if not k.startswith(STREAMS + (BASE,)))
    return out
