"""embed_net: the two-stream ResNet-50 of Liu et al. (TMM 2021) with a configurable share point.

share_net = s splits ResNet-50 into modality-specific and shared parts:
  s = 0  everything shared;  s = 1  specific stem, shared layer1..4;
  s = 2..4  specific stem + layer1..layer(s-1), shared layer s..4;  s = 5  nothing shared.
The module tree mirrors the authors' code (visible_module.visible.*, thermal_module.thermal.*,
base_resnet.base.*) so that their checkpoints load as they are.
"""
import copy
import os
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

STEM = ("conv1", "bn1", "relu", "maxpool")
LAYERS = ("layer1", "layer2", "layer3", "layer4")
RESNET50_URL = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url


def imagenet_state_dict():
    """ImageNet ResNet-50 weights from torch's hub cache, downloading them if possible."""
    cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(RESNET50_URL))
    try:
        return torch.hub.load_state_dict_from_url(RESNET50_URL, progress=True, map_location="cpu")
    except Exception as e:  # no network, proxy, disk: one clear message for all of them
        raise RuntimeError(
            f"--pretrained imagenet: cannot load ImageNet ResNet-50 weights ({type(e).__name__}: {e}). "
            f"Download {RESNET50_URL} and put it at {cache}, or pass --pretrained PATH_TO_FILE "
            f"(or --pretrained none to train from scratch)") from None


def load_backbone_weights(pretrained):
    """None for 'none', else a torchvision ResNet-50 state dict from 'imagenet' or a file path."""
    if pretrained in (None, "none"):
        return None
    if pretrained == "imagenet":
        return imagenet_state_dict()
    if not os.path.isfile(pretrained):
        raise FileNotFoundError(f"--pretrained: no such file: {pretrained} (expected 'imagenet', 'none' "
                                f"or the path of a torchvision ResNet-50 state dict)")
    sd = torch.load(pretrained, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd)
    return {k.removeprefix("module."): v for k, v in sd.items()}


def resnet50_last_stride1(state_dict=None):
    """torchvision ResNet-50 whose layer4 keeps the resolution (288x144 input -> 18x9 map).

    Without weights to load, each residual block's last batch norm starts at zero (Goyal et al.
    2017, torchvision's zero_init_residual), so that every block starts as the identity: without
    it a ResNet-50 trained from scratch on a small set barely leaves its initial point.
    """
    net = torchvision.models.resnet50(weights=None, zero_init_residual=state_dict is None)
    if state_dict is not None:
        missing, unexpected = net.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        unexpected = [k for k in unexpected if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(f"--pretrained: not a ResNet-50 state dict (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
    net.layer4[0].conv2.stride = (1, 1)
    net.layer4[0].downsample[0].stride = (1, 1)
    return net


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
        scale = m.squeeze(dims)
        return (x.div(m).pow(p).mean(dim=dims) + 1e-12 / scale.pow(p)).pow(1.0 / p) * scale


class PCBHead(nn.Module):
    """num_strips part strips: GeM pool, per-strip 1x1 conv + BN + ReLU, per-strip classifier.

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
        b, c, h, w = x.shape
        if h % self.num_strips:
            raise ValueError(f"feature map height {h} is not divisible by --num_strips {self.num_strips}: "
                             f"use an --img_h that is a multiple of {16 * self.num_strips}")
        x = x.reshape(b, c, self.num_strips, (h // self.num_strips) * w)
        if self.gm_pool == "on":
            pooled = gem(x, self.gem_p, dims=-1)
        else:  # the authors' PCB falls back to max pooling
            pooled = x.amax(dim=-1).float()
        return pooled.transpose(1, 2)

    def forward(self, x):
        """[B, C, H, W] -> local features [B, S, D] and logits [B, S, classes]."""
        pooled = self.pool(x)
        b = pooled.shape[0]
        feat = torch.einsum("bsc,sdc->bsd", pooled, self.conv_weight) + self.conv_bias
        feat = F.relu(self.bn(feat.reshape(b, -1))).reshape(b, self.num_strips, -1)
        logits = torch.einsum("bsd,skd->bsk", feat, self.fc_weight) + self.fc_bias
        return feat, logits

    def forward_looped(self, x):
        """Reference: the authors' loop over strips (Conv2d, BatchNorm2d, Linear per strip), same weights.

        Used by tests and by bench.py's plain path; the batch-norm statistics it updates are the same.
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


class embed_net(nn.Module):  # noqa: N801 -- the authors' public name
    """The two-stream ResNet-50 of the paper (SPEC §4): share_net 0..5, PCB strips or a global head.

    pretrained: 'imagenet' (the paper's initialisation; what train_mine.py uses for SYSU-MM01 and
    RegDB), 'none' (the default, like torchvision's weights=None: nothing is downloaded, residual
    blocks start as identities) or the path of a torchvision ResNet-50 state dict.
    """

    def __init__(self, class_num, no_local="off", gm_pool="on", arch="resnet50", share_net=2, pcb="on",
                 local_feat_dim=256, num_strips=6, gem_p=None, pretrained="none"):
        super().__init__()
        if arch != "resnet50":
            raise ValueError(f"--arch: only resnet50 is supported, got {arch}")
        if pcb not in ("on", "off"):
            raise ValueError(f"--pcb must be 'on' or 'off', got {pcb}")
        self.share_net, self.pcb, self.gm_pool = share_net, pcb, gm_pool
        self.gem_p = float(gem_p if gem_p is not None else (10.0 if pcb == "on" else 3.0))
        self.config = dict(class_num=class_num, gm_pool=gm_pool, share_net=share_net, pcb=pcb,
                           local_feat_dim=local_feat_dim, num_strips=num_strips, gem_p=self.gem_p)

        specific, shared = split_names(share_net)
        base = resnet50_last_stride1(load_backbone_weights(pretrained))
        # Each stream starts from its own copy of the same weights.
        self.visible_module = nn.Module()
        self.thermal_module = nn.Module()
        self.base_resnet = nn.Module()
        self.visible_module.visible = _part(copy.deepcopy(base), specific)
        self.thermal_module.thermal = _part(copy.deepcopy(base), specific)
        self.base_resnet.base = _part(base, shared)

        if pcb == "on":
            self.head = PCBHead(2048, class_num, num_strips, local_feat_dim, self.gem_p, gm_pool)
        else:
            self.bottleneck = nn.BatchNorm1d(2048)
            self.bottleneck.bias.requires_grad_(False)
            nn.init.normal_(self.bottleneck.weight, 1.0, 0.01)
            nn.init.zeros_(self.bottleneck.bias)
            self.classifier = nn.Linear(2048, class_num, bias=False)
            nn.init.normal_(self.classifier.weight, std=0.001)
        self._register_load_state_dict_pre_hook(_original_pcb_keys_hook)

    def head_parameters(self):
        """The parameters trained at the full learning rate (the rest, the backbone, at 0.1x)."""
        if self.pcb == "on":
            return list(self.head.parameters())
        return list(self.bottleneck.parameters()) + list(self.classifier.parameters())

    def backbone(self, x1, x2, modal=0):
        if modal == 0:
            x = torch.cat((self.visible_module.visible(x1), self.thermal_module.thermal(x2)), 0)
        elif modal == 1:
            x = self.visible_module.visible(x1)
        elif modal == 2:
            x = self.thermal_module.thermal(x2)
        else:
            raise ValueError(f"modal must be 0 (both), 1 (visible) or 2 (thermal), got {modal}")
        return self.base_resnet.base(x)

    def forward(self, x1, x2, modal=0, looped_head=False):
        x = self.backbone(x1, x2, modal)
        # The heads run in float32 even under autocast: they cost little, and their batch norms
        # divide by the spread of the pooled features across the batch, which bf16 rounding can
        # swamp (early in training that spread is tiny).
        with torch.autocast(x.device.type, enabled=False):
            return self._head(x.float(), looped_head)

    def _head(self, x, looped_head):
        if self.pcb == "on":
            feat, logits = (self.head.forward_looped if looped_head else self.head)(x)
            feat_all = feat.flatten(1)
            if self.training:
                return list(feat.unbind(1)), list(logits.unbind(1)), feat_all
            return F.normalize(feat_all, dim=1)
        if self.gm_pool == "on":
            x_pool = gem(x, self.gem_p, dims=(2, 3))
        else:
            x_pool = x.mean(dim=(2, 3))
        feat = self.bottleneck(x_pool)
        if self.training:
            return x_pool, self.classifier(feat)
        return F.normalize(x_pool, dim=1), F.normalize(feat, dim=1)


def _original_pcb_keys_hook(state_dict, prefix, *args):
    convert_original_keys(state_dict, prefix)


def convert_original_keys(state_dict, prefix=""):
    """Rewrite, in place, the authors' per-strip keys (local_conv_list.i.{0,1}.*, fc_list.i.*) into
    PCBHead's stacked ones; a state dict without them is left as it is."""
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
