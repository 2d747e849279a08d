"""Losses: hetero-center triplet (the paper's), batch-hard triplet, weighted regularised triplet (AGW), ADP (CAJ),
and the total losses built from them: ReIDLoss (the paper's) and DGTLLoss (DGTL, Liu et al. SPL 2021).

Every triplet loss takes features [..., B, D] (a leading strip axis is allowed, so the PCB
strips are one call) and returns (loss, n_correct): loss has the leading shape ([] for a plain
[B, D] batch), n_correct counts anchors whose hardest negative is at least as far as their
hardest positive, summed over everything. No .item(): nothing here waits for the GPU. Their
`modality` is the per-sample modality tensor: each sample's index in data_manager.MODALITIES (None: the first
half visible, the second thermal).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import data_manager
import utils


def pairwise_distance(x, y):
    """Euclidean distances, sqrt(clamp(d^2, 1e-12)), computed as the authors do (in float32)."""
    x, y = x.float(), y.float()
    d2 = x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1).unsqueeze(-2) - 2 * x @ y.transpose(-1, -2)
    return d2.clamp(min=1e-12).sqrt()


def hardest(dist, pos, neg=None):
    """Hardest positive (largest distance among pos) and negative (smallest among neg, by default
    ~pos) per anchor."""
    d_ap = dist.masked_fill(~pos, float("-inf")).amax(-1)
    d_an = dist.masked_fill(pos if neg is None else ~neg, float("inf")).amin(-1)
    return d_ap, d_an


def modality_of(batch_size, device):
    """The default per-sample modality tensor (utils.modality_column): first half visible, second half thermal."""
    return utils.modality_column(batch_size // 2, batch_size - batch_size // 2, device)


class CenterTripletLoss(nn.Module):
    """Hetero-center triplet loss (Liu et al. 2021), margin rho.

    Centers are the mean feature of each (identity, modality) group present in the batch,
    found from labels and modality (not positions), so any batch order gives the same loss.
    The groups are numbered by sorting, into at most B slots of which the absent ones are
    masked: no data-dependent shapes, so nothing waits for the GPU.
    """

    def __init__(self, margin):
        super().__init__()
        self.margin = margin

    def forward(self, feats, labels, modality=None):
        loss, correct, _ = self.anchors(feats, labels, modality)
        return loss, correct

    def anchors(self, feats, labels, modality=None):
        """(loss, n_correct, number of anchors = centers)."""
        b = labels.numel()
        if modality is None:
            modality = modality_of(b, labels.device)
        key, order = (labels * len(data_manager.MODALITIES) + modality).sort()
        first = torch.ones_like(key, dtype=torch.bool)
        first[1:] = key[1:] != key[:-1]
        group = torch.empty_like(order)
        group[order] = first.long().cumsum(0) - 1
        feats = feats.float()
        count = torch.zeros(b, device=feats.device).index_add_(0, group, torch.ones(b, device=feats.device))
        centers = torch.zeros(feats.shape, device=feats.device).index_add_(-2, group, feats)
        centers = centers / count.clamp(min=1)[:, None]
        center_label = torch.zeros_like(labels).scatter_(0, group, labels)
        present = count > 0
        both = present[:, None] & present[None, :]
        same = center_label[:, None] == center_label[None, :]
        d_ap, d_an = hardest(pairwise_distance(centers, centers), same & both, ~same & both)
        per_anchor = F.relu(d_ap - d_an + self.margin) * present
        n = present.sum()
        return per_anchor.sum(-1) / n, ((d_an >= d_ap) & present).sum(), n


class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017) over all samples of the batch."""

    def __init__(self, margin):
        super().__init__()
        self.margin = margin

    def forward(self, feats, labels, modality=None):
        dist = pairwise_distance(feats, feats)
        d_ap, d_an = hardest(dist, labels[:, None] == labels[None, :])
        return F.relu(d_ap - d_an + self.margin).mean(-1), (d_an >= d_ap).sum()


class TripletLoss_WRT(nn.Module):  # noqa: N801 -- the AGW code's name
    """Weighted regularised triplet (AGW, Ye et al. TPAMI 2021): softmax-weighted positives and
    negatives, soft-margin loss; no margin parameter."""

    def __init__(self):
        super().__init__()

    def forward(self, feats, labels, modality=None):
        dist = pairwise_distance(feats, feats)
        pos = (labels[:, None] == labels[None, :]).float()
        neg = 1.0 - pos
        furthest_pos = (dist * pos * softmax_weights(dist * pos, pos)).sum(-1)
        closest_neg = (dist * neg * softmax_weights(-dist * neg, neg)).sum(-1)
        loss = F.softplus(closest_neg.neg() + furthest_pos).mean(-1)  # SoftMarginLoss with y = 1
        return loss, (closest_neg >= furthest_pos).sum()


class TripletLoss_ADP(nn.Module):  # noqa: N801 -- the CAJ code's name
    """CAJ's triplet loss (Ye et al., ICCV 2021; mangye16/Cross-Modal-Re-ID-baseline, ICCV21_CAJ/loss.py):
    WRT's softmax-weighted positives and negatives with the distances scaled by alpha inside the
    weights; square 0: softplus(gamma * (D+ - D-)); square 1 (the published setting), the "enhanced
    squared difference": softplus(s * min(gamma * (D+ - D-)^2, 88)), s = +1 where D+ > D-, else -1
    (so an anchor past the clamp gets no gradient, as there)."""

    def __init__(self, alpha, gamma, square):
        super().__init__()
        self.alpha, self.gamma, self.square = alpha, gamma, square

    def forward(self, feats, labels, modality=None):
        dist = pairwise_distance(feats, feats)
        pos = (labels[:, None] == labels[None, :]).float()
        neg = 1.0 - pos
        furthest_pos = (dist * pos * softmax_weights(dist * pos * self.alpha, pos)).sum(-1)
        closest_neg = (dist * neg * softmax_weights(-dist * neg * self.alpha, neg)).sum(-1)
        delta = furthest_pos - closest_neg
        if self.square:
            sign = torch.where(delta > 0, 1.0, -1.0)
            loss = F.softplus(sign * (self.gamma * delta.pow(2)).clamp(max=88))
        else:
            loss = F.softplus(self.gamma * delta)
        return loss.mean(-1), (closest_neg >= furthest_pos).sum()


def softmax_weights(dist, mask):
    """AGW's masked softmax, kept as written there (the +1e-6 and the shift by the masked max)."""
    diff = dist - (dist * mask).amax(-1, keepdim=True)
    e = diff.exp() * mask
    return e / (e.sum(-1, keepdim=True) + 1e-6)


class ReIDLoss(nn.Module):
    """The paper's total loss, on the head's named training outputs:

    PCB on:  sum_strips ID(strip_logits_i) + Tri(feat) + w_center * sum_strips Tri(strips_i)
    PCB off: ID(logits) + w_center * Tri(feat)
    Returns (total, {'id', 'tri', 'acc'}), acc being the fraction of anchors whose hardest negative
    is no nearer than their hardest positive, on the concatenated (PCB) or pooled (global) feature,
    as the authors report it.
    """

    def __init__(self, tri, w_center, label_smooth):
        super().__init__()
        self.id_loss = nn.CrossEntropyLoss(label_smoothing=0.1 if label_smooth == "on" else 0.0)
        self.tri = tri  # the triplet loss module (CenterTripletLoss for the paper's), or None: the ID loss alone
        self.w_center = w_center

    def _tri(self, feats, labels, modality):
        if isinstance(self.tri, CenterTripletLoss):
            return self.tri.anchors(feats, labels, modality)
        loss, correct = self.tri(feats, labels, modality)
        return loss, correct, labels.numel()

    def forward(self, out, labels, modality=None):
        local = out.get("strips")  # the PCB strips: [S, B, D], logits [S, B, classes]
        if local is not None:
            logits = out["strip_logits"]
            s = logits.shape[0]
            # the sum of the strips' mean cross-entropies, in one call
            loss_id = s * self.id_loss(logits.flatten(0, 1).float(), labels.repeat(s))
        else:
            loss_id = self.id_loss(out["logits"].float(), labels)
        if self.tri is None:
            zero = torch.zeros_like(loss_id)
            return loss_id, {"id": loss_id, "tri": zero, "acc": zero}
        loss_tri, correct, n = self._tri(out["feat"], labels, modality)
        if local is None:
            loss_tri = self.w_center * loss_tri
        else:
            loss_tri = loss_tri + self.w_center * self._tri(local, labels, modality)[0].sum()
        return loss_id + loss_tri, {"id": loss_id, "tri": loss_tri, "acc": correct / n}


HCLOSSES = ("HcTri", "OriTri", "no")


class DGTLLoss(nn.Module):
    """DGTL's total loss (Liu et al., IEEE SPL 2021; hijune6/DGTL-for-VT-ReID, train.py), all terms weighted 1:

    CE(W1 b) + TriBH(f; margin)                                   fine granularity, always
    + CE(W2 h) + HcTri(h; margin + margin_hc)                     coarse granularity, hcloss 'HcTri'
    + CE(W2 h) + TriBH(h; margin)                                 coarse granularity, hcloss 'OriTri'
    + CE(W2 h)                                                    coarse granularity, hcloss 'no'
    The coarse terms exist when the model has a coarse branch (a 'coarse' output); with cpool 'no'
    hcloss has nothing to apply to. forward returns (total, {'id', 'tri', 'acc'}): the ID and the
    triplet terms summed, and the fraction of anchors of the sample triplet whose hardest negative
    is no nearer than their hardest positive.
    """

    def __init__(self, margin, margin_hc, hcloss, label_smooth):
        super().__init__()
        self.id_loss = nn.CrossEntropyLoss(label_smoothing=0.1 if label_smooth == "on" else 0.0)
        self.sample_tri = TripletLoss(margin=margin)
        # margin_hc is added for the center triplet only (the reference's train.py does the same)
        self.coarse_tri = {"HcTri": CenterTripletLoss(margin=margin + margin_hc),
                           "OriTri": TripletLoss(margin=margin), "no": None}[hcloss]

    def _terms(self, out, labels, modality):
        tri, correct = self.sample_tri(out["feat"], labels)
        terms = {"id_fine": self.id_loss(out["logits"].float(), labels), "tri_fine": tri}
        if "coarse" in out:
            terms["id_coarse"] = self.id_loss(out["coarse_logits"].float(), labels)
            if self.coarse_tri is not None:
                terms["tri_coarse"] = self.coarse_tri(out["coarse"], labels, modality)[0]
        return terms, correct / labels.numel()

    def terms(self, out, labels, modality=None):
        """The individual loss terms: id_fine, tri_fine and, with a coarse branch, id_coarse and
        (unless hcloss is 'no') tri_coarse."""
        return self._terms(out, labels, modality)[0]

    def forward(self, out, labels, modality=None):
        terms, acc = self._terms(out, labels, modality)
        loss_id = sum(v for k, v in terms.items() if k.startswith("id_"))
        loss_tri = sum(v for k, v in terms.items() if k.startswith("tri_"))
        return loss_id + loss_tri, {"id": loss_id, "tri": loss_tri, "acc": acc}
