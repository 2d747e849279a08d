"""Retrieval metrics (CMC, mAP, mINP) for RegDB / SYSU-MM01 / LLCM, and two re-ranking methods.

Everything is vectorised torch on the input's device (numpy inputs are computed on the CPU).
Ranking is ascending distance with a stable sort: equal distances keep gallery order.

  eval_regdb(distmat, q_pids, g_pids, max_rank=20) -> (cmc, mAP, mINP)
  eval_sysu(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20) -> (cmc, mAP, mINP)
  eval_llcm(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20) -> (cmc, mAP, mINP)
  removed_mask(protocol, q_pids, g_pids, q_camids=None, g_camids=None) -> bool [Q, G]
  k_reciprocal(q_feat, g_feat, k1=20, k2=6, lambda_value=0.3) -> distance [Q, G]
  random_walk(q_feat, g_feat, alpha=0.95) -> distance [Q, G]

and the evaluators of the datasets' protocols (SYSUEval, RegDBEval, LLCMEval: the lists read, the
images read once, every search of every named feature), with the feature extraction they share.

cmc is a numpy float32 array of length max_rank; mAP and mINP are Python floats; all are
fractions. Queries without a true match in the (kept) gallery are skipped.
"""
import numpy as np
import torch

import data_loader
import data_manager

__all__ = ["eval_regdb", "eval_sysu", "eval_llcm", "removed_mask", "k_reciprocal", "random_walk", "extract_features",
           "distance", "metrics_row", "format_row", "summarize", "SYSUEval", "RegDBEval", "LLCMEval"]

# eval_regdb counts, for each true match, how many gallery items rank before it: 2 * R
# vectorised comparisons per matrix entry (R = matches per query). On CPU a stable row sort
# costs about as much as 2 * 30 of them, so above this R the sort is used instead.
_COUNT_MAX_MATCHES = 32
# Elements per temporary block in the chunked steps (bounds peak memory).
_CHUNK = 1 << 22


def _tensor(x, device=None):
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x)  # torch.as_tensor rejects negative strides
    return torch.as_tensor(x, device=device)


def _prepare(distmat, q_pids, g_pids, max_rank):
    dist = _tensor(distmat)
    if dist.dim() != 2:
        raise ValueError(f"distmat must be 2-D [num_query, num_gallery], got shape {tuple(dist.shape)}")
    if dist.dtype in (torch.float16, torch.bfloat16):
        dist = dist.float()  # lossless; full CPU op support
    elif not dist.is_floating_point():
        dist = dist.double()
    if dist.shape[1] == 0:
        raise ValueError("empty gallery: no query has a true match")
    q = _tensor(q_pids, dist.device).reshape(-1)
    g = _tensor(g_pids, dist.device).reshape(-1)
    if q.numel() != dist.shape[0] or g.numel() != dist.shape[1]:
        raise ValueError(f"distmat is {tuple(dist.shape)} but got {q.numel()} query and "
                         f"{g.numel()} gallery ids")
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    return dist, q, g


def _count(mask, dim):
    # Counting through int32 is several times faster on CPU than bool's default int64 sum.
    return mask.sum(dim, dtype=torch.int32).long()


def _rank(dist):
    return torch.sort(dist, dim=1, stable=True).indices


def _padded_positions(matches, pos=None):
    """Positions of the true matches per query, ascending, padded with L: ([Q, Rmax], counts).

    matches: [Q, L] bool in ranked order; pos: position of each ranked entry within the kept
    list (None: the column itself)."""
    num_q, length = matches.shape
    num_rel = _count(matches, 1)
    rmax = max(int(num_rel.max()), 1) if num_q else 1
    rows, cols = matches.nonzero(as_tuple=True)  # row-major, so positions ascend within a row
    p = cols if pos is None else pos[rows, cols]
    start = num_rel.cumsum(0) - num_rel
    r = torch.arange(rows.numel(), device=matches.device) - start[rows]
    out = torch.full((num_q, rmax), length, dtype=torch.long, device=matches.device)
    out[rows, r] = p
    return out, num_rel


def _positions_by_count(dist, match, num_rel, rmax):
    """Like _padded_positions on the stably ranked list, but without sorting: position of a
    match = number of gallery items with a smaller distance. Returns None if a match's
    distance is NaN, or too many matches tie with other items (then the sort is cheaper)."""
    num_q, num_g = dist.shape
    dev = dist.device
    rows, cols = match.nonzero(as_tuple=True)
    start = num_rel.cumsum(0) - num_rel
    r = torch.arange(rows.numel(), device=dev) - start[rows]
    col = torch.zeros((num_q, rmax), dtype=torch.long, device=dev)
    col[rows, r] = cols
    present = torch.zeros((num_q, rmax), dtype=torch.bool, device=dev)
    present[rows, r] = True
    val = dist.gather(1, col)
    # int32 counts (see _count).
    lt = torch.empty((num_q, rmax), dtype=torch.int32, device=dev)
    eq = torch.empty_like(lt)
    step = max(1, _CHUNK // (rmax * num_g))
    for s in range(0, num_q, step):  # blocks of queries keep the [b, R, G] temporaries small
        d = dist[s:s + step, None, :]
        v = val[s:s + step, :, None]
        lt[s:s + step] = (d < v).sum(-1, dtype=torch.int32)
        eq[s:s + step] = (d == v).sum(-1, dtype=torch.int32)
    if bool((eq == 0)[present].any()):
        return None  # NaN distance: leave it to the sort
    # Exact ties are rare but real in float32 (a few per 2060x2060 matrix): the stable order
    # also puts before a match the equal items with a smaller column. Count those only for
    # the tied matches.
    ti, tr = ((eq > 1) & present).nonzero(as_tuple=True)
    if ti.numel() * num_g > 4 * _CHUNK:
        return None  # tie-heavy input: the sort is cheaper
    if ti.numel():
        j = col[ti, tr]
        before = torch.arange(num_g, device=dev)[None, :] < j[:, None]
        lt[ti, tr] += ((dist[ti] == val[ti, tr][:, None]) & before).sum(1, dtype=torch.int32)
    # Distinct positions, so sorting per row orders the matches by rank.
    return torch.where(present, lt.long(), num_g).sort(dim=1).values


def _summarise(pos, num_rel, cmc_rank, max_rank):
    """Average AP, INP and CMC over queries with at least one match.

    pos: [Q, R] ascending match positions (padding beyond num_rel); cmc_rank: [Q] 0-based
    rank used for the CMC (first match, or SYSU's distinct-identity rank)."""
    valid = num_rel > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("no query has a true match in the gallery (after camera filtering); "
                         "CMC/mAP/mINP are undefined")
    max_rank = int(max_rank)
    p = pos[valid].double()
    n = num_rel[valid]
    r = torch.arange(p.shape[1], device=p.device, dtype=torch.float64)
    # AP = mean over matches of precision at the match: (matches so far) / (position + 1).
    prec = torch.where(r < n[:, None], (r + 1) / (p + 1), torch.zeros((), dtype=p.dtype, device=p.device))
    ap = prec.sum(1) / n
    last = p.gather(1, (n - 1)[:, None]).squeeze(1)
    inp = n / (last + 1)
    hist = torch.bincount(cmc_rank[valid].clamp(max=max_rank), minlength=max_rank + 1)[:max_rank]
    # Ranks beyond a short gallery never occur, so the cumulative count repeats its last value.
    cmc = hist.cumsum(0).double() / num_valid
    return cmc.float().cpu().numpy(), float(ap.mean()), float(inp.mean())


def eval_regdb(distmat, q_pids, g_pids, max_rank=20):
    """CMC (first true match), mAP and mINP over the whole gallery."""
    dist, q, g = _prepare(distmat, q_pids, g_pids, max_rank)
    match = g[None, :] == q[:, None]
    num_rel = _count(match, 1)
    rmax = int(num_rel.max()) if num_rel.numel() else 0
    if rmax == 0:
        raise ValueError("no query has a true match in the gallery; CMC/mAP/mINP are undefined")
    pos = None
    if rmax <= _COUNT_MAX_MATCHES:
        pos = _positions_by_count(dist, match, num_rel, rmax)
    if pos is None:
        pos, num_rel = _padded_positions(g[_rank(dist)] == q[:, None])
    return _summarise(pos, num_rel, pos[:, 0], max_rank)


def _camids(q_camids, g_camids, q, g):
    qc = _tensor(q_camids, q.device).reshape(-1)
    gc = _tensor(g_camids, q.device).reshape(-1)
    if qc.numel() != q.numel() or gc.numel() != g.numel():
        raise ValueError("camid arrays must match the query / gallery id arrays in length")
    return qc, gc


PROTOCOLS = ("sysu", "llcm", "regdb")


def _removed(protocol, q, g, qc, gc):
    if protocol == "sysu":  # cam3 queries and cam2 gallery images are in the same room
        return (qc == 3)[:, None] & (gc == 2)[None, :]
    if protocol == "llcm":  # the query's own identity seen by its own camera
        return (g[None, :] == q[:, None]) & (gc[None, :] == qc[:, None])
    return torch.zeros((q.numel(), g.numel()), dtype=torch.bool, device=q.device)


def removed_mask(protocol, q_pids, g_pids, q_camids=None, g_camids=None):
    """The gallery entries a protocol leaves out of each query's ranked list: bool tensor [Q, G]
    (on the ids' device) that eval_sysu / eval_llcm use and ranked-list pictures should use too.

    "sysu": cam3 queries ignore every cam2 gallery image, of any identity (the authors' code);
    "llcm": gallery images of the query's identity and camera; "regdb": nothing. Camera ids are
    needed for sysu and llcm only."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    q = _tensor(q_pids).reshape(-1)
    g = _tensor(g_pids, q.device).reshape(-1)
    if protocol == "regdb":
        return _removed(protocol, q, g, None, None)
    if q_camids is None or g_camids is None:
        raise ValueError(f"removed_mask({protocol!r}) needs the query and gallery camera ids")
    return _removed(protocol, q, g, *_camids(q_camids, g_camids, q, g))


def _eval_kept(dist, q, g, removed, max_rank):
    """The authors' SYSU-MM01 / LLCM evaluation on each query's ranked gallery minus `removed`
    ([Q, G] bool, gallery order): CMC = rank among the distinct identities of the kept list (first
    occurrence of each); mAP / mINP on the kept list without de-duplication."""
    num_q, num_g = dist.shape
    order = _rank(dist)
    keep = ~removed.gather(1, order)  # ranked order
    matches = (g[order] == q[:, None]) & keep
    pos, num_rel = _padded_positions(matches, keep.cumsum(1) - 1)

    # Distinct-identity rank: first kept position of every identity (inverse permutation,
    # removed items pushed to num_g, then min per identity); the query's rank is the number
    # of identities whose first position is earlier than its own identity's.
    ranks = torch.arange(num_g, device=dist.device).expand(num_q, num_g)
    where = torch.empty_like(order).scatter_(1, order, ranks)
    where = where.masked_fill(removed, num_g)
    ids, group = torch.unique(g, return_inverse=True)
    first = torch.full((num_q, ids.numel()), num_g, dtype=torch.long, device=dist.device)
    first.scatter_reduce_(1, group.expand(num_q, num_g), where, reduce="amin")
    qgroup = torch.searchsorted(ids, q.to(ids.dtype)).clamp(max=ids.numel() - 1)
    own = first.gather(1, qgroup[:, None])  # wrong group only for queries without matches (skipped)
    distinct_rank = _count(first < own, 1)
    return _summarise(pos, num_rel, distinct_rank, max_rank)


def eval_sysu(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    """SYSU-MM01 protocol: cam3 queries ignore cam2 gallery images (same room).

    CMC follows the authors' code: rank among the distinct identities of the kept list (first
    occurrence of each). mAP / mINP use the kept list without de-duplication."""
    dist, q, g = _prepare(distmat, q_pids, g_pids, max_rank)
    qc, gc = _camids(q_camids, g_camids, q, g)
    return _eval_kept(dist, q, g, _removed("sysu", q, g, qc, gc), max_rank)


def eval_llcm(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    """LLCM protocol (official eval_llcm): a query ignores the gallery images of its own identity
    taken by its own camera (camera ids are shared by both modalities).

    CMC, mAP and mINP as in eval_sysu: distinct-identity CMC, mAP / mINP on the kept list."""
    dist, q, g = _prepare(distmat, q_pids, g_pids, max_rank)
    qc, gc = _camids(q_camids, g_camids, q, g)
    return _eval_kept(dist, q, g, _removed("llcm", q, g, qc, gc), max_rank)


# ----------------------------------------------------------------------------- re-ranking

def _features(q_feat, g_feat):
    q = _tensor(q_feat)
    g = _tensor(g_feat, q.device)
    dtype = torch.float64 if torch.float64 in (q.dtype, g.dtype) else torch.float32
    return q.to(dtype), g.to(dtype)


def _stable_topk(x, k):
    """Indices of the k smallest entries per row, in the order a stable argsort gives
    (ties by column), without sorting whole rows."""
    vals, idx = torch.topk(x, k, dim=1, largest=False)
    kth = vals[:, -1:]
    # The top-k set is ambiguous only where entries equal to the k-th value straddle the
    # cut; there the stable rule keeps the lowest columns.
    cut = _count(x == kth, 1) != _count(vals == kth, 1)
    if bool(cut.any()):
        xc, kc = x[cut], kth[cut]
        eq = xc == kc
        lt = xc < kc
        take = lt | (eq & (eq.cumsum(1) <= k - lt.sum(1, keepdim=True)))
        idx[cut] = take.nonzero(as_tuple=True)[1].view(-1, k)
    idx = idx.sort(dim=1).values
    # A stable sort of the chosen values (in column order) gives (value, column) order.
    return idx.gather(1, torch.sort(x.gather(1, idx), dim=1, stable=True).indices)


def _reciprocal(idx, num):
    """k-reciprocal mask over a top-k list: idx[i, t] has i in its own top-k list."""
    n, k = idx.shape
    rows = torch.arange(n, device=idx.device)
    member = torch.zeros((num, num), dtype=torch.bool, device=idx.device)
    member[rows[:, None], idx] = True
    return member[idx, rows[:, None]]


def k_reciprocal(q_feat, g_feat, k1=20, k2=6, lambda_value=0.3):
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) -> distance [Q, G], lower is better.

    Convention: the widely used `re_ranking` (layumi / reid-strong-baseline) on all Q+G
    samples: original_dist = squared Euclidean distance (|x|^2 + |y|^2 - 2 x.y, clamped at 0;
    2 - 2 x.y for the unit features test_mine.py passes), divided by its column max and
    transposed; initial ranks by stable argsort; expansion with R(j, round(k1/2)) (round half
    to even, as np.around); V in float32 (float64 if the features are) rather than the original
    float16; query expansion over the top-k2 when k2 != 1; Jaccard distance blended as
    jaccard*(1-lambda) + original_dist*lambda.
    """
    q, g = _features(q_feat, g_feat)
    num_q = q.shape[0]
    feat = torch.cat([q, g])
    n = feat.shape[0]
    dev = feat.device
    sq = (feat * feat).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * feat @ feat.T).clamp_(min=0)
    dist = (dist / dist.max(dim=0).values).T.contiguous()

    kf = min(k1 + 1, n)
    kh = min(int(round(k1 / 2)) + 1, n)  # Python round == np.around (half to even)
    kq = min(k2, n)
    top = _stable_topk(dist, max(kf, kh, kq))
    rows = torch.arange(n, device=dev)

    idx1 = top[:, :kf]
    rec1 = _reciprocal(idx1, n)  # R(i, k1) as a masked list
    in_r1 = torch.zeros((n, n), dtype=torch.bool, device=dev)
    in_r1[rows[:, None], idx1] = rec1
    idx2 = top[:, :kh]
    rec2 = _reciprocal(idx2, n)  # R(j, k1/2)

    # Candidate j = idx1[i, t] in R(i): its half-size set R(j) must overlap R(i) by > 2/3.
    cand = idx2[idx1]  # [n, kf, kh]
    cand_rec = rec2[idx1]
    overlap = (cand_rec & in_r1[rows[:, None, None], cand]).sum(-1)
    size = cand_rec.sum(-1)
    accept = rec1 & (overlap.double() > (2 / 3) * size.double())  # same float test as numpy
    expand = in_r1.clone()
    add = accept[:, :, None] & cand_rec
    expand[rows[:, None, None].expand_as(cand)[add], cand[add]] = True

    v = torch.where(expand, torch.exp(-dist), torch.zeros((), dtype=dist.dtype, device=dev))
    v = v / v.sum(1, keepdim=True)
    if k2 != 1:  # local query expansion: mean of V over the top-k2 neighbours
        vq = torch.zeros_like(v)
        for t in range(kq):
            vq += v[top[:, t]]
        v = vq / kq
    del expand, in_r1

    temp_min = _sparse_min_join(v[:num_q], v[num_q:])
    jaccard = 1 - temp_min / (2 - temp_min)
    return jaccard * (1 - lambda_value) + dist[:num_q, num_q:] * lambda_value


def _sparse_min_join(a, b):
    """out[i, j] = sum_k min(a[i, k], b[j, k]) over the columns where both are nonzero.

    Pairs of nonzeros that share a column are enumerated in chunks and scatter-added."""
    na, nb = a.shape[0], b.shape[0]
    dev = a.device
    out = torch.zeros(na * nb, dtype=a.dtype, device=dev)
    bk, bj = b.T.nonzero(as_tuple=True)  # sorted by column, then row
    bval = b[bj, bk]
    per_col = torch.bincount(bk, minlength=a.shape[1])
    col_start = per_col.cumsum(0) - per_col
    ai, ak = a.nonzero(as_tuple=True)
    aval = a[ai, ak]
    pairs = per_col[ak]  # partners of each nonzero of a
    cum = pairs.cumsum(0)
    total = int(cum[-1]) if cum.numel() else 0
    budget = max(_CHUNK, nb)  # one a-nonzero has at most nb partners
    s = 0
    while s < ai.numel() and total:
        base = int(cum[s] - pairs[s])
        e = max(int(torch.searchsorted(cum, base + budget, right=True)), s + 1)
        cnt = pairs[s:e]
        src = torch.repeat_interleave(torch.arange(s, e, device=dev), cnt)
        offset = torch.arange(src.numel(), device=dev) - (cum[s:e] - cnt - base).repeat_interleave(cnt)
        bi = col_start[ak[src]] + offset
        out.index_add_(0, ai[src] * nb + bj[bi], torch.minimum(aval[src], bval[bi]))
        s = e
    return out.view(na, nb)


def random_walk(q_feat, g_feat, alpha=0.95):
    """Random-walk re-ranking over the gallery graph -> distance [Q, G], lower is better.

    A = row-softmax of g.g^T without self-loops; W = (1-alpha)(I - alpha A)^-1;
    similarity = (q.g^T) W^T, computed as a linear solve."""
    q, g = _features(q_feat, g_feat)
    num_g = g.shape[0]
    if num_g < 2:
        raise ValueError("random_walk needs at least 2 gallery samples")
    eye = torch.eye(num_g, dtype=g.dtype, device=g.device)
    logits = (g @ g.T).masked_fill(eye.bool(), float("-inf"))
    a = torch.softmax(logits, dim=1)
    # S W^T = (1-alpha) S (I - alpha A)^-T = (1-alpha) ((I - alpha A)^-1 S^T)^T
    sim = (1 - alpha) * torch.linalg.solve(eye - alpha * a, (q @ g.T).T).T
    return -sim


# ----------------------------------------------------------------------------- evaluators

METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
DIRECTIONS = {"off": ("visible->thermal",), "on": ("thermal->visible",),
              "both": ("visible->thermal", "thermal->visible")}
# LLCM (ZYK100/LLCM, test.py): A, B (the official test script's role swap: what the published table's second
# column group reports) and C (the literal reading).
LLCM_LABELS = {"ir2vis": "infrared->visible", "vis2ir": "visible->infrared (official: roles swapped)",
               "vis2ir_literal": "visible->infrared (literal)"}
LLCM_DIRECTIONS = {"ir2vis": ("ir2vis",), "vis2ir": ("vis2ir",), "vis2ir_literal": ("vis2ir_literal",),
                   "both": ("ir2vis", "vis2ir"), "all": ("ir2vis", "vis2ir", "vis2ir_literal")}
def half_dtype(device):
    """--half's autocast dtype: bf16, or fp16 on GPUs without bf16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


@torch.no_grad()
def model_features(model, x, modality, flip=False):
    """{name: feature} of a normalised batch x; flip: each the L2-normalised mean of the image's and its
    mirror image's (CAJ's test, ICCV21_CAJ/testa.py), or a method's own flip_features (DEEN's sum, not
    renormalised). What the evaluation reports, and what export.py's files compute."""
    if flip and hasattr(model, "flip_features"):
        return model.flip_features(x, modality)
    out = model.features(x, modality)
    if not flip:
        return out
    mirrored = model.features(x.flip(3), modality)
    return {n: torch.nn.functional.normalize((out[n] + mirrored[n]) / 2, dim=1) for n in out}


def extract_features(model, images, modality, device, batch_size=128, half=False, all_features=False, flip=False):
    """L2-normalised features [N, D] (float32, on device) of uint8 images [N, H, W, 3] through the stream of
    modality ('visible' or 'thermal'): the reported feature, or with all_features a dict of every
    named feature of the model (model.feature_names, the reported one first). flip: each feature is
    the L2-normalised mean of the image's and its mirror image's (CAJ's test, ICCV21_CAJ/testa.py)."""
    model.eval()
    feats = {n: [] for n in model.feature_names}
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(device, non_blocking=True)
        x = data_loader.normalize(x).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=half_dtype(device), enabled=half):
            out = model_features(model, x, modality, flip)
        for n in feats:
            feats[n].append(out[n])
    feats = {n: torch.cat(v) for n, v in feats.items()}
    # never rank with NaN distances: that gives a silent wrong result
    if not all(torch.isfinite(f).all() for f in feats.values()):
        raise ValueError("the model gives non-finite (NaN/inf) features: its weights are broken "
                         "(a diverged training run?)")
    return feats if all_features else feats[model.feature_names[0]]


def distance(qf, gf, re_rank="no"):
    if re_rank in ("no", "none", "off", None):
        return -(qf @ gf.T)
    if re_rank == "k_reciprocal":
        return k_reciprocal(qf, gf)
    if re_rank == "random_walk":
        return random_walk(qf, gf)
    raise ValueError(f"--re_rank must be no, k_reciprocal or random_walk, got {re_rank}")


def metrics_row(cmc, mAP, mINP):
    """Rank-1/5/10/20, mAP, mINP in percent."""
    return {"rank1": 100 * float(cmc[0]), "rank5": 100 * float(cmc[4]), "rank10": 100 * float(cmc[9]),
            "rank20": 100 * float(cmc[19]), "mAP": 100 * float(mAP), "mINP": 100 * float(mINP)}


def format_row(row):
    return " | ".join(f"{name}: {row[k]:.2f}%" for name, k in zip(
        ("Rank-1", "Rank-5", "Rank-10", "Rank-20", "mAP", "mINP"), METRICS))


def summarize(rows):
    """Mean and (population) standard deviation of every metric over the rounds (gallery trials or RegDB
    splits)."""
    values = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in METRICS}
    return {k: float(v.mean()) for k, v in values.items()}, {k: float(v.std()) for k, v in values.items()}


class Evaluator:
    """Features once per image, then every (setting, round) search, a round being a gallery trial (SYSU-MM01,
    LLCM) or a RegDB split; run() returns one record per (setting, feature, round):
    {'setting', 'feature', 'round', 'cmc', 'mAP', 'mINP'}."""

    swap_stems = False  # each modality through the other's stem (DEEN's RegDB test.py; a compatibility mode)

    def searches(self):
        """[(setting, round, query (modality, indices), gallery (modality, indices), metric)] to run."""
        raise NotImplementedError

    def run(self, model, device, batch_size=128, re_rank="no", half=False, on_distance=None, flip=False):
        """on_distance(setting, round, distmat, query paths, gallery paths, query labels, gallery labels,
        q_camids=, g_camids=, protocol=) sees every search of the reported feature (protocol: the name
        removed_mask takes, so that pictures leave out what the metric leaves out)."""
        feats = {m: extract_features(model, self.images[m], data_manager.other_modality(m) if self.swap_stems else m,
                                     device, batch_size, half, all_features=True, flip=flip) for m in self.images}
        names = model.feature_names
        records = []
        for setting, rnd, (qm, qi), (gm, gi), metric in self.searches():
            qi_t, gi_t = torch.as_tensor(qi, device=device), torch.as_tensor(gi, device=device)
            for feature in names:
                dist = distance(feats[qm][feature][qi_t], feats[gm][feature][gi_t], re_rank)
                if on_distance is not None and feature == names[0]:
                    on_distance(setting, rnd, dist, [self.paths[qm][i] for i in qi],
                                [self.paths[gm][i] for i in gi], self.pids[qm][qi], self.pids[gm][gi],
                                q_camids=self.camids[qm][qi], g_camids=self.camids[gm][gi], protocol=self.protocol)
                cmc, mAP, mINP = metric(dist, qi, gi)
                records.append({"setting": setting, "feature": feature, "round": rnd, "cmc": cmc, "mAP": mAP,
                                "mINP": mINP})
        return records

    def run_first(self, model, device, batch_size=128):
        """{feature: (cmc, mAP, mINP)} of the first search (what training evaluates and selects on)."""
        records = self.run(model, device, batch_size)
        first = (records[0]["setting"], records[0]["round"])
        return {r["feature"]: (r["cmc"], r["mAP"], r["mINP"]) for r in records
                if (r["setting"], r["round"]) == first}

    def _index(self, lists):
        """Read every image once: lists is {modality: [(paths, pids, camids), ...]}; sets self.paths,
        self.pids, self.camids, self.images per modality and returns each list's indices into them."""
        self.paths, self.pids, self.camids, self.images = {}, {}, {}, {}
        out = {}
        for m, entries in lists.items():
            meta = {}
            for paths, pids, camids in entries:
                meta.update(zip(paths, zip(np.asarray(pids).tolist(), np.asarray(camids).tolist())))
            self.paths[m] = sorted(meta)
            where = {p: i for i, p in enumerate(self.paths[m])}
            self.pids[m] = np.array([meta[p][0] for p in self.paths[m]], dtype=np.int64)
            self.camids[m] = np.array([meta[p][1] for p in self.paths[m]], dtype=np.int64)
            self.images[m] = data_loader.load_images(self.paths[m], self.img_w, self.img_h, self.workers)
            out[m] = [np.array([where[p] for p in paths], dtype=np.int64) for paths, _, _ in entries]
        return out


class SYSUEval(Evaluator):
    """SYSU-MM01: thermal queries against each trial's visible gallery; every image read once."""
    protocol = "sysu"

    def __init__(self, data_path, mode="all", trials=(0,), gall_mode="single", img_w=144, img_h=288, workers=4):
        self.img_w, self.img_h, self.workers, self.setting = img_w, img_h, workers, f"{mode} search"
        query = data_manager.process_query_sysu(data_path, mode)
        galleries = [data_manager.process_gallery_sysu(data_path, mode, t, gall_mode) for t in trials]
        idx = self._index({"thermal": [query], "visible": galleries})
        self.query = idx["thermal"][0]
        self.trials = list(zip(trials, idx["visible"]))

    def searches(self):
        def metric(dist, qi, gi):
            return eval_sysu(dist, self.pids["thermal"][qi], self.pids["visible"][gi],
                                          self.camids["thermal"][qi], self.camids["visible"][gi])
        return [(self.setting, t, ("thermal", self.query), ("visible", gi), metric) for t, gi in self.trials]


class RegDBEval(Evaluator):
    """One RegDB split's test images (visible and thermal), read once."""
    protocol = "regdb"

    def __init__(self, data_path, split=1, img_w=144, img_h=288, workers=4, directions=("visible->thermal",),
                 swap_stems=False):
        self.img_w, self.img_h, self.workers, self.split, self.directions = img_w, img_h, workers, split, directions
        self.swap_stems = swap_stems
        lists = {}
        for m in data_manager.MODALITIES:
            paths, labels = data_manager.process_test_regdb(data_path, split, m)
            lists[m] = [(paths, labels, np.zeros(len(paths), dtype=np.int64))]
        idx = self._index(lists)
        self.all = {m: idx[m][0] for m in idx}

    def searches(self):
        def metric(q, g):
            return lambda dist, qi, gi: eval_regdb(dist, self.pids[q][qi], self.pids[g][gi])
        out = []
        for d in self.directions:
            q, g = ("visible", "thermal") if d == "visible->thermal" else ("thermal", "visible")
            out.append((d, self.split, (q, self.all[q]), (g, self.all[g]), metric(q, g)))
        return out


class LLCMEval(Evaluator):
    """LLCM (the official ZYK100/LLCM test.py): for each trial, one image per (identity, camera) of the
    gallery modality; every query image; the metric of eval_llcm (same identity and camera excluded, de-duplicated CMC).
    Directions: ir2vis (A), vis2ir (B: the official script's swap, the sampled infrared images probe
    every visible image) and vis2ir_literal (C)."""
    protocol = "llcm"

    def __init__(self, data_path, trials=(0,), directions=("ir2vis",), img_w=144, img_h=288, workers=4):
        self.img_w, self.img_h, self.workers = img_w, img_h, workers
        self.trials, self.directions = list(trials), list(directions)
        lists = {"visible": [], "thermal": []}
        if "ir2vis" in directions:
            lists["thermal"].append(data_manager.process_query_llcm(data_path, "thermal"))
            lists["visible"] += [data_manager.process_gallery_llcm(data_path, "visible", t) for t in trials]
        if set(directions) - {"ir2vis"}:
            lists["visible"].append(data_manager.process_query_llcm(data_path, "visible"))
            lists["thermal"] += [data_manager.process_gallery_llcm(data_path, "thermal", t) for t in trials]
        idx = self._index({m: v for m, v in lists.items() if v})
        n = len(self.trials)
        if "ir2vis" in directions:
            self.nir_all, self.vis_gallery = idx["thermal"][0], idx["visible"][:n]
        if set(directions) - {"ir2vis"}:
            self.vis_all, self.nir_gallery = idx["visible"][-1], idx["thermal"][-n:]

    def searches(self):
        def metric(q, g):
            return lambda dist, qi, gi: eval_llcm(dist, self.pids[q][qi], self.pids[g][gi],
                                                               self.camids[q][qi], self.camids[g][gi])
        out = []
        for d in self.directions:
            for i, t in enumerate(self.trials):
                if d == "ir2vis":
                    q, g = ("thermal", self.nir_all), ("visible", self.vis_gallery[i])
                elif d == "vis2ir":
                    q, g = ("thermal", self.nir_gallery[i]), ("visible", self.vis_all)
                else:
                    q, g = ("visible", self.vis_all), ("thermal", self.nir_gallery[i])
                out.append((LLCM_LABELS[d], t, q, g, metric(q[0], g[0])))
        return out
