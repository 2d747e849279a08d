"""DEEN (Zhang and Wang, "Diverse Embedding Expansion Network and Low-Light Cross-Modality Benchmark
for Visible-Infrared Person Re-identification", CVPR 2023; code: ZYK100/LLCM, DEEN/) as its code runs it.

The two-stream ResNet of model_mine (modality-specific stems, shared layer1..4, last stride 1) with:
  MFA blocks after layer1..3 (a channel non-local CNL, then a pixel non-local PNL; DEEN/model.py),
  DEE before the last stage: two branches of three dilated 3x3 convolutions whose outputs join the
      batch, B rows -> 3B ([original; expansion 1; expansion 2]), dropout 0.01 on all 3B rows,
  average pooling, the BN neck with its bias frozen, the bias-free classifier;
the RegDB variant has no MFA3 and no layer4 (DEE before layer3, 1024-d).
Module names are the reference's, so that its checkpoints ({'net': ...}, three whole ResNets) load
as they are (model_mine.drop_unused_stages keeps the stages this network runs).

Loss (DEEN/train.py): CE + batch-hard triplet (margin 0.3, on the pooled feature) over all 3B rows,
lambda_1 x [CPM(orig, exp1) + CPM(orig, exp2)] (DEEN/loss.py CPMLoss, margin 0.2), lambda_2 x the
orthogonality term.

Test (DEEN/test.py): six features {pooled, BN} x {original, expansion 1, expansion 2}, each
L2-normalised, flip-summed (not renormalised), compared in float64. The features 'distmat7' and
'distmat8' are their concatenations, scaled so that a plain inner product is the reference's sum of
the six similarities (distmat7) or its 0.1 pooled / 0.9 BN weighting (distmat8).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import data_manager
import loss as losses
import model_mine
import utils

POOL_WEIGHT = 0.1  # distmat8: a x (pooled similarities) + (1 - a) x (BN ones), a = 0.1 (DEEN/test.py)


def _rows(t, rows):
    """t [B, C, H, W] read row-major as [B, rows, C*H*W/rows]: the reference's view(B, rows, -1) with -1 for
    the batch instead, every other size given, so that an empty batch (an exported model's N = 0) reshapes
    too, in PyTorch and in ONNX (whose Reshape cannot infer a -1 beside a 0), as model_mine.NonLocal."""
    return t.reshape(-1, rows, t.shape[1] * t.shape[2] * t.shape[3] // rows)


def _zero_bn(channels):
    """The output BatchNorm2d of a non-local block, weight and bias 0: the block starts as the identity."""
    bn = nn.BatchNorm2d(channels)
    nn.init.zeros_(bn.weight)
    nn.init.zeros_(bn.bias)
    return bn


class CNL(nn.Module):
    """Channel non-local: a c x c channel affinity of theta(x_h) and phi(x_l), divided by c (no softmax),
    applied to g(x_l); z = x_h + BN(W(y)). stride 2 (MFA2, MFA3) brings x_l's grid to x_h's."""

    def __init__(self, high, low, stride):
        super().__init__()
        self.low = low
        self.g = nn.Conv2d(low, low, 1)
        self.theta = nn.Conv2d(high, low, 1)
        self.phi = nn.Conv2d(low, low, 1, stride=stride)
        self.W = nn.Sequential(nn.Conv2d(low, high, 1, stride=stride), _zero_bn(high))

    def forward(self, x_h, x_l):
        b = x_h.shape[0]
        g = _rows(self.g(x_l), self.low)
        energy = _rows(self.theta(x_h), self.low) @ _rows(self.phi(x_l), self.low).transpose(1, 2)
        y = (energy / energy.shape[-1]) @ g
        return self.W(y.reshape(b, self.low, *x_l.shape[2:])) + x_h


class PNL(nn.Module):
    """Pixel non-local on low/2 channels, divided by the number of positions (no softmax), as coded: the
    reference reads each low/2-channel map as low rows (view(B, low_dim, -1)), so that a "position" is a
    pair (pixel p, the pixel H/2 rows below p) and top-half outputs read only top-half values, bottom-half
    only bottom-half ones. Weights trained so mean nothing under a per-pixel formula: the same row-major
    reshapes are kept here (the maps' position counts must be even)."""

    def __init__(self, high, low):
        super().__init__()
        self.low = low
        self.g = nn.Conv2d(low, low // 2, 1)
        self.theta = nn.Conv2d(high, low // 2, 1)
        self.phi = nn.Conv2d(low, low // 2, 1)
        self.W = nn.Sequential(nn.Conv2d(low // 2, high, 1), _zero_bn(high))

    def forward(self, x_h, x_l):
        b = x_h.shape[0]
        g = _rows(self.g(x_l), self.low).transpose(1, 2)                   # [B, N_l/2, low]
        theta = _rows(self.theta(x_h), self.low).transpose(1, 2)           # [B, N_h/2, low]
        energy = theta @ _rows(self.phi(x_l), self.low)                    # [B, N_h/2, N_l/2]
        y = ((energy / energy.shape[-1]) @ g).transpose(1, 2)               # [B, low, N_h/2]
        return self.W(y.reshape(b, self.low // 2, *x_h.shape[2:])) + x_h


class MFA_block(nn.Module):  # noqa: N801 -- the reference's name
    """CNL then PNL, both given the stage's input x_l (its output x_h for the CNL, the CNL's for the PNL)."""

    def __init__(self, high, low, stride):
        super().__init__()
        self.CNL = CNL(high, low, stride)
        self.PNL = PNL(high, low)

    def forward(self, x_h, x_l):
        return self.PNL(self.CNL(x_h, x_l), x_l)


class DEE_module(nn.Module):  # noqa: N801 -- the reference's name
    """Two branches FC1(ReLU(mean of three dilated 3x3 convs)) and FC2(...), not residual, joined along the
    batch axis: [x; x1; x2]; the dropout (p 0.01) hits all 3B rows, the original ones too."""

    def __init__(self, channels):
        super().__init__()
        c = channels // 4
        for branch in (1, 2):  # the reference's registration order: FC11, FC12, FC13, FC1, FC21, ...
            for d in (1, 2, 3):
                conv = nn.Conv2d(channels, c, 3, padding=d, dilation=d, bias=False)
                nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
                setattr(self, f"FC{branch}{d}", conv)
            out = nn.Conv2d(c, channels, 1)  # the bias keeps torch's default initialisation
            nn.init.kaiming_normal_(out.weight, a=0, mode="fan_in")
            setattr(self, f"FC{branch}", out)
        self.dropout = nn.Dropout(p=0.01)

    def _branch(self, x, i):
        convs = [getattr(self, f"FC{i}{d}")(x) for d in (1, 2, 3)]
        return getattr(self, f"FC{i}")(F.relu((convs[0] + convs[1] + convs[2]) / 3))

    def forward(self, x):
        return self.dropout(torch.cat((x, self._branch(x, 1), self._branch(x, 2)), 0))


class DEEN(model_mine.TwoStreamResNet):
    """DEEN's network: model_mine's two-stream backbone with the MFA and DEE blocks inserted at its places.
    last_stage 4 (SYSU-MM01, LLCM) or 3 (RegDB: no MFA3, no layer4); ResNet-18 (the demo's) gets blocks
    sized to its channels. config: what rebuilds it (checkpoints record it)."""

    def __init__(self, class_num, arch="resnet50", share_net=1, head="deen", last_stage=4, pretrained="none"):
        if share_net != 1 or head != "deen" or last_stage not in (3, 4):
            raise ValueError(f"DEEN's network has modality-specific stems and shared layer1..4 (share_net 1) and "
                             f"last stage 4 (3 on RegDB); got share_net {share_net}, head {head}, "
                             f"last_stage {last_stage}")
        super().__init__(arch, 1, pretrained, last_stage)
        self.config = dict(class_num=class_num, arch=arch, share_net=1, head="deen", last_stage=last_stage)
        self.pcb, self.last_stage = "off", last_stage
        self.DEE = DEE_module(self.channels(f"layer{last_stage - 1}")[1])
        for k in range(1, last_stage):
            low, high = self.channels(f"layer{k}")
            setattr(self, f"MFA{k}", MFA_block(high, low, 1 if k == 1 else 2))
            self.insert(f"layer{k}", getattr(self, f"MFA{k}"), with_input=True)  # MFA_k(layer_k(x), x)
        self.insert(f"layer{last_stage - 1}", self.DEE)  # before the last stage, after the MFA there
        dim = self.out_channels
        self.bottleneck = model_mine.bn_neck(dim)
        self.classifier = model_mine.id_classifier(dim, class_num)
        # the reference's RegDB network holds a layer4 it never runs (untrained ImageNet weights): its
        # checkpoints' keys there are left out on load (checkpoints.model_from_checkpoint)
        self.unused_reference_keys = ("base_resnet.base.layer4.",) if last_stage == 3 else ()

    def full_rate_parameters(self):
        """The full-rate group, --lr: the BN neck and the classifier (the backbone, MFA and DEE at
        --backbone_lr_mult x)."""
        return list(self.bottleneck.parameters()) + list(self.classifier.parameters())

    def forward(self, x1, x2, modality=None, looped_head=False):
        """Training: {'feat': pooled [3B, D], 'logits' [3B, classes], 'ort'}; evaluation: {'pool', 'bn'}
        [3B, D], rows [original; expansion 1; expansion 2]."""
        x = self.backbone(x1, x2, modality)
        with torch.autocast(x.device.type, enabled=False):  # the head in float32, as embed_net's
            x_pool = x.float().mean(dim=(2, 3))
            feat = self.bottleneck(x_pool)
            if not self.training:
                return {"pool": x_pool, "bn": feat}
            b = x_pool.shape[0] // 3
            # the raw dot product of the two expansions of each image, divided by 3B (DEEN/model.py)
            ort = (x_pool[b:2 * b] * x_pool[2 * b:]).sum() / x_pool.shape[0]
            return {"feat": x_pool, "logits": self.classifier(feat), "ort": ort}

    feature_names = ("distmat7", "distmat8")
    l2_normalized = False  # six unit vectors side by side (flip-summed: longer still); export.py's model.json says so

    def parts(self, x, modality):
        """The six unit vectors f1..f6 (pool, BN) x (original, exp1, exp2) of one modality's images ('visible'
        or 'thermal'), float32, as DEEN/test.py."""
        out = self(x, x, data_manager.check_modality(modality))
        b = x.shape[0]  # not len(x): a traced export keeps the batch size dynamic
        # Normalize(2) of the reference: no epsilon
        pool, bn = (v / v.pow(2).sum(1, keepdim=True).pow(0.5) for v in (out["pool"], out["bn"]))
        return [t[i * b:(i + 1) * b] for i in range(3) for t in (pool, bn)]

    def features(self, x, modality):
        return assemble(self.parts(x, modality))

    def flip_features(self, x, modality):
        """The test's flip: the sum of each unit vector and its mirror image's, not renormalised."""
        return assemble([a + m for a, m in zip(self.parts(x, modality), self.parts(x.flip(3), modality))])


def assemble(parts):
    """{'distmat7', 'distmat8'} float64 [N, 6D] from f1..f6: inner products give sum_k f_k.g_k and
    0.1 (pooled) / 0.9 (BN) of it."""
    parts = [p.double() for p in parts]
    w = (math.sqrt(POOL_WEIGHT), math.sqrt(1 - POOL_WEIGHT)) * 3
    return {"distmat7": torch.cat(parts, 1), "distmat8": torch.cat([p * s for p, s in zip(parts, w)], 1)}



# ----------------------------------------------------------------------------- loss

def check_layout(labels, modality, num_pos):
    """CPM's batch contract (DEEN/loss.py CPMLoss finds its identity centres by position): the batch is
    [visible; thermal], each P contiguous blocks of K = num_pos images of one identity, P distinct
    identities, in the same order in both modalities (the sampler's layout). Anything else would give a
    wrong number silently: a one-line ValueError instead."""
    n = labels.numel()
    half = n // 2
    ok = n % 2 == 0 and half % num_pos == 0 and half > 0
    if ok:
        blocks = labels[:half].reshape(-1, num_pos)
        ok = bool(torch.equal(labels[:half], labels[half:]) and (blocks == blocks[:, :1]).all()
                  and blocks[:, 0].unique().numel() == blocks.shape[0]
                  and (modality is None
                       or torch.equal(modality, utils.modality_column(half, half, modality.device).to(modality))))
    if not ok:
        raise ValueError(f"--method deen: its CPM loss needs the batch [visible; thermal], each P contiguous blocks "
                         f"of K = {num_pos} images of one identity in the same identity order (DEEN's sampler); got "
                         f"{n} rows with labels {labels.tolist()[:2 * num_pos]}...")


def cpm_loss(feats, num_pos, margin=0.2):
    """CPMLoss of DEEN/loss.py on [V; T; V'; T'] (four quarters, P blocks of K rows each): identity centres
    by position; a generated centre must be nearer the other modality's centre of its identity than its
    own source's (that distance detached) and than the nearest other-identity centre among the generated
    ones and among its source modality's, margin 0.2 (the code's hard-coded one)."""
    q = feats.shape[0] // 4
    c1, c2, c3, c4 = feats.reshape(4, q // num_pos, num_pos, -1).mean(2)
    eye = torch.eye(c1.shape[0], dtype=torch.bool, device=feats.device)

    def nearest_other(c):
        return losses.pairwise_distance(c, c).masked_fill(eye, float("inf")).amin(1)

    def hinge(x):
        return F.relu(x + margin).mean()

    def side(source, other, generated):
        ap = losses.pairwise_distance(other, generated).diagonal()
        an = losses.pairwise_distance(source, generated).diagonal().detach()
        return hinge(ap - an) + 0.5 * (hinge(ap - nearest_other(generated)) + hinge(ap - nearest_other(source)))

    return (side(c1, c2, c3) + side(c2, c1, c4)) / 2


class DEENLoss(nn.Module):
    """CE + batch-hard triplet (margin, on the pooled feature) over all 3B rows, with the source image's
    label for every expansion; lambda_1 x the sum of CPM(orig, exp1) and CPM(orig, exp2); lambda_2 x the
    orthogonality term. Returns (total, {'id', 'tri', 'cpm', 'ort'}), the last two with their weights.
    Relies only on the batch's layout (check_layout), never on a process-local size."""

    def __init__(self, margin, lambda_1, lambda_2, num_pos):
        super().__init__()
        self.id_loss = nn.CrossEntropyLoss()
        self.tri = losses.TripletLoss(margin)
        self.lambda_1, self.lambda_2, self.num_pos = lambda_1, lambda_2, num_pos

    def forward(self, out, labels, modality=None):
        if not torch.compiler.is_compiling():  # it reads values, which a compiled graph cannot branch on
            check_layout(labels, modality, self.num_pos)
        feat, n = out["feat"].float(), labels.numel()
        labels3 = labels.repeat(3)
        loss_id = self.id_loss(out["logits"].float(), labels3)
        loss_tri = self.tri(feat, labels3)[0]
        loss_cpm = self.lambda_1 * (cpm_loss(torch.cat((feat[:n], feat[n:2 * n])), self.num_pos)
                                    + cpm_loss(torch.cat((feat[:n], feat[2 * n:])), self.num_pos))
        loss_ort = self.lambda_2 * out["ort"]
        return loss_id + loss_tri + loss_cpm + loss_ort, {"id": loss_id, "tri": loss_tri, "cpm": loss_cpm,
                                                          "ort": loss_ort}
