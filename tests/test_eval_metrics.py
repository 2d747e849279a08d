"""Tests for eval_metrics: hand-worked cases, loop oracles (the original per-query code), and
numpy ports of the classic re-ranking code."""
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import eval_metrics as em  # noqa: E402
from eval_metrics import eval_regdb, eval_sysu, k_reciprocal, random_walk  # noqa: E402


# ----------------------------------------------------------------------------- oracles

def _pad(c, max_rank):
    # The original appends cmc[:max_rank]; pad a shorter one with its last value (the spec).
    c = np.asarray(c, dtype=np.float64)[:max_rank]
    return np.concatenate([c, np.full(max_rank - len(c), c[-1])])


def ref_regdb(distmat, q_pids, g_pids, max_rank=20):
    """Per-query loop of the original eval_regdb (no camera filtering), stable argsort."""
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for q_idx in range(len(q_pids)):
        raw = matches[q_idx]
        if not np.any(raw):
            continue
        cmc = raw.cumsum()
        pos_max = np.max(np.where(raw == 1))
        all_inp.append(cmc[pos_max] / (pos_max + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(_pad(cmc, max_rank))
        tmp = raw.cumsum() / (np.arange(len(raw)) + 1.0) * raw
        all_ap.append(tmp.sum() / raw.sum())
    all_cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / len(all_ap)
    return all_cmc, np.mean(all_ap), np.mean(all_inp)


def ref_sysu(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    """The SYSU-MM01 authors' loop (as in the brief), stable argsort."""
    num_q = distmat.shape[0]
    indices = np.argsort(distmat, axis=1, kind="stable")
    pred_label = g_pids[indices]
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    new_all_cmc, all_ap, all_inp = [], [], []
    num_valid_q = 0.0
    for q_idx in range(num_q):
        q_pid = q_pids[q_idx]
        q_camid = q_camids[q_idx]
        order = indices[q_idx]
        remove = (q_camid == 3) & (g_camids[order] == 2)
        keep = np.invert(remove)
        new_cmc = pred_label[q_idx][keep]
        new_index = np.unique(new_cmc, return_index=True)[1]
        new_cmc = np.asarray([new_cmc[index] for index in sorted(new_index)])
        new_match = (new_cmc == q_pid).astype(np.int32)
        new_cmc = new_match.cumsum()
        new_all_cmc.append(_pad(new_cmc, max_rank))
        orig_cmc = matches[q_idx][keep]
        if not np.any(orig_cmc):
            continue
        cmc = orig_cmc.cumsum()
        pos_max_idx = np.max(np.where(orig_cmc == 1))
        all_inp.append(cmc[pos_max_idx] / (pos_max_idx + 1.0))
        num_valid_q += 1.0
        tmp = orig_cmc.cumsum() / (np.arange(len(orig_cmc)) + 1.0) * orig_cmc
        all_ap.append(tmp.sum() / orig_cmc.sum())
    new_all_cmc = np.asarray(new_all_cmc).astype(np.float32).sum(0) / num_valid_q
    return new_all_cmc, np.mean(all_ap), np.mean(all_inp)


def ref_re_ranking(q_feat, g_feat, k1, k2, lambda_value):
    """Direct port of the classic numpy `re_ranking` loop (layumi / reid-strong-baseline) with
    original_dist = squared Euclidean distance (clamped), stable argsort, and float64 V instead of
    float16."""
    query_num = q_feat.shape[0]
    feat = np.concatenate([q_feat, g_feat]).astype(np.float64)
    all_num = feat.shape[0]
    sq = (feat * feat).sum(1)
    original_dist = np.maximum(sq[:, None] + sq[None, :] - 2 * feat @ feat.T, 0)
    gallery_num = original_dist.shape[0]
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            cand_fwd = initial_rank[candidate, :int(np.around(k1 / 2)) + 1]
            cand_bwd = initial_rank[cand_fwd, :int(np.around(k1 / 2)) + 1]
            fi_candidate = np.where(cand_bwd == candidate)[0]
            cand_k_rec = cand_fwd[fi_candidate]
            if len(np.intersect1d(cand_k_rec, k_reciprocal_index)) > 2 / 3 * len(cand_k_rec):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, cand_k_rec)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = weight / np.sum(weight)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    invIndex = [np.where(V[:, i] != 0)[0] for i in range(gallery_num)]
    jaccard_dist = np.zeros_like(original_dist)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, gallery_num])
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(
                V[i, indNonZero[j]], V[indImages[j], indNonZero[j]])
        jaccard_dist[i] = 1 - temp_min / (2 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def ref_random_walk(q, g, alpha):
    s = g @ g.T
    np.fill_diagonal(s, -np.inf)
    e = np.exp(s - s.max(1, keepdims=True))
    a = e / e.sum(1, keepdims=True)
    w = (1 - alpha) * np.linalg.inv(np.eye(len(g)) - alpha * a)
    return -((q @ g.T) @ w.T)


def assert_same(got, want, atol=1e-6):
    cmc, mAP, mINP = got
    assert isinstance(cmc, np.ndarray) and cmc.dtype == np.float32
    assert isinstance(mAP, float) and isinstance(mINP, float)
    np.testing.assert_allclose(cmc, want[0], atol=atol)
    assert mAP == pytest.approx(want[1], abs=atol)
    assert mINP == pytest.approx(want[2], abs=atol)


def cmc_of(values, max_rank=20):
    return _pad(values, max_rank)


# ----------------------------------------------------------------------------- hand-worked

def test_regdb_hand_worked():
    q_pids = np.array([0, 1])
    g_pids = np.array([0, 1, 0, 2, 1])
    dist = np.array([[0.5, 0.1, 0.9, 0.3, 0.7],    # ranked pids 1 2 0 1 0 -> matches at 2, 4
                     [0.2, 0.4, 0.6, 0.8, 0.1]])   # ranked pids 1 0 1 0 2 -> matches at 0, 2
    ap0, inp0 = (1 / 3 + 2 / 5) / 2, 2 / 5
    ap1, inp1 = (1 / 1 + 2 / 3) / 2, 2 / 3
    want = (cmc_of([0.5, 0.5, 1.0]), (ap0 + ap1) / 2, (inp0 + inp1) / 2)
    assert_same(eval_regdb(dist, q_pids, g_pids), want)
    assert eval_regdb(dist, q_pids, g_pids)[1] == pytest.approx(0.6)
    assert eval_regdb(dist, q_pids, g_pids)[2] == pytest.approx(8 / 15)


def test_sysu_cam3_removes_cam2():
    # Same ranking for both queries: g0 (pid 0, cam 2), g1 (1), g2 (1), g3 (pid 0, cam 5), g4 (2).
    q_pids, q_cams = np.array([0, 0]), np.array([3, 6])
    g_pids, g_cams = np.array([0, 1, 1, 0, 2]), np.array([2, 1, 4, 5, 1])
    dist = np.tile([0.1, 0.2, 0.3, 0.4, 0.5], (2, 1))
    # cam3 query: g0 removed, kept list pids 1 1 0 2 -> one match at kept position 2;
    # distinct ids 1 0 2 -> the query id is 2nd.
    # cam6 query: keeps g0, pids 0 1 1 0 2 -> matches at 0 and 3; distinct rank 0.
    ap = (1 / 3 + (1 + 2 / 4) / 2) / 2
    inp = (1 / 3 + 2 / 4) / 2
    assert_same(eval_sysu(dist, q_pids, g_pids, q_cams, g_cams), (cmc_of([0.5, 1.0]), ap, inp))
    assert ap == pytest.approx(13 / 24) and inp == pytest.approx(5 / 12)
    # cam3 query alone: plain first-match rank would be 2, de-duplicated rank is 1.
    assert_same(eval_sysu(dist[:1], q_pids[:1], g_pids, q_cams[:1], g_cams),
                (cmc_of([0.0, 1.0]), 1 / 3, 1 / 3))
    # cam6 query alone: cam2 image kept, first match at 0.
    assert_same(eval_sysu(dist[1:], q_pids[1:], g_pids, q_cams[1:], g_cams),
                (cmc_of([1.0]), 0.75, 0.5))


def test_sysu_dedup_cmc_differs_from_plain():
    # Wrong identity 7 twice, then identity 8, then the true match: plain rank 3, distinct rank 2.
    q_pids, q_cams = np.array([5]), np.array([6])
    g_pids, g_cams = np.array([7, 7, 8, 5, 7]), np.array([1, 2, 4, 5, 1])
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    plain = eval_regdb(dist, q_pids, g_pids)
    sysu = eval_sysu(dist, q_pids, g_pids, q_cams, g_cams)
    assert_same(plain, (cmc_of([0, 0, 0, 1]), 1 / 4, 1 / 4))
    assert_same(sysu, (cmc_of([0, 0, 1]), 1 / 4, 1 / 4))


def test_perfect_and_reversed():
    rng = np.random.default_rng(0)
    q_pids = np.arange(6) % 3
    g_pids = np.repeat(np.arange(4), 3)  # 12 gallery, 3 matches per query (id 3 never queried)
    match = g_pids[None, :] == q_pids[:, None]
    base = rng.permutation(match.size).reshape(match.shape) / match.size  # no ties
    perfect = base + np.where(match, 0.0, 10.0)
    reverse = base + np.where(match, 10.0, 0.0)
    cams_q, cams_g = np.full(6, 3), np.array([1, 4, 5] * 4)
    for res in (eval_regdb(perfect, q_pids, g_pids),
                eval_sysu(perfect, q_pids, g_pids, cams_q, cams_g)):
        assert_same(res, (np.ones(20), 1.0, 1.0))
    # Reversed: the 3 matches at positions 9, 10, 11 of 12.
    ap = (1 / 10 + 2 / 11 + 3 / 12) / 3
    assert_same(eval_regdb(reverse, q_pids, g_pids), (cmc_of([0] * 9 + [1]), ap, 3 / 12))
    # SYSU: 3 other identities precede, so the distinct rank is 3.
    assert_same(eval_sysu(reverse, q_pids, g_pids, cams_q, cams_g), (cmc_of([0] * 3 + [1]), ap, 3 / 12))


def test_query_without_match_is_skipped_and_all_invalid_raises():
    rng = np.random.default_rng(1)
    g_pids = np.repeat(np.arange(5), 4)
    q_pids = np.array([0, 1, 2, 99])
    dist = rng.random((4, 20))
    full = eval_regdb(dist, q_pids, g_pids)
    assert_same(full, eval_regdb(dist[:3], q_pids[:3], g_pids))
    q_cams, g_cams = np.array([3, 6, 3, 6]), rng.choice([1, 2, 4, 5], 20)
    assert_same(eval_sysu(dist, q_pids, g_pids, q_cams, g_cams),
                eval_sysu(dist[:3], q_pids[:3], g_pids, q_cams[:3], g_cams))
    # A cam3 query whose only true matches are cam2 images is skipped too.
    g_cams2 = np.where(g_pids == 0, 2, 1)
    assert_same(eval_sysu(dist, q_pids, g_pids, np.array([3, 6, 6, 6]), g_cams2),
                eval_sysu(dist[1:3], q_pids[1:3], g_pids, np.array([6, 6]), g_cams2))
    with pytest.raises(ValueError, match="no query"):
        eval_regdb(dist[3:], q_pids[3:], g_pids)
    with pytest.raises(ValueError, match="no query"):
        eval_sysu(dist[:1], q_pids[:1], g_pids, np.array([3]), g_cams2)


def test_short_gallery_repeats_last_value():
    q_pids, g_pids = np.array([0, 1]), np.array([2, 0, 1, 3, 1])
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]])
    cmc, _, _ = eval_regdb(dist, q_pids, g_pids)
    assert cmc.shape == (20,)
    np.testing.assert_allclose(cmc, cmc_of([0, 0.5, 1.0]))
    cmc, _, _ = eval_sysu(dist, q_pids, g_pids, np.array([6, 6]), np.ones(5, int))
    assert cmc.shape == (20,)
    np.testing.assert_allclose(cmc, cmc_of([0, 0.5, 1.0]))
    cmc, _, _ = eval_regdb(dist, q_pids, g_pids, max_rank=3)
    assert cmc.shape == (3,)


def test_ties_keep_gallery_order():
    q_pids, g_pids = np.array([0]), np.array([1, 0, 2, 0])
    dist = np.zeros((1, 4))  # all tied: ranking is the gallery order, matches at 1 and 3
    want = (cmc_of([0, 1]), (1 / 2 + 2 / 4) / 2, 2 / 4)
    assert_same(eval_regdb(dist, q_pids, g_pids), want)
    assert_same(eval_sysu(dist, q_pids, g_pids, np.array([6]), np.ones(4, int)), want)
    # A match tied with an earlier non-match ranks after it.
    dist = np.array([[0.3, 0.1, 0.2, 0.1]])  # order: g1 (0.1), g3 (0.1), g2, g0
    assert_same(eval_regdb(dist, np.array([1]), np.array([5, 6, 7, 1])), (cmc_of([0, 1]), 1 / 2, 1 / 2))


@pytest.mark.parametrize("seed,chunk", [(0, None), (1, None), (2, None), (3, 16)])
def test_ties_random_against_oracle(seed, chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr(em, "_CHUNK", chunk)  # tie-heavy fallback to the sort
    rng = np.random.default_rng(seed)
    dist = rng.integers(0, 4, (30, 40)).astype(np.float32)  # many ties
    q_pids, g_pids = rng.integers(0, 8, 30), rng.integers(0, 8, 40)
    q_cams, g_cams = rng.choice([3, 6], 30), rng.choice([1, 2, 4, 5], 40)
    assert_same(eval_regdb(dist, q_pids, g_pids), ref_regdb(dist, q_pids, g_pids))
    assert_same(eval_sysu(dist, q_pids, g_pids, q_cams, g_cams),
                ref_sysu(dist, q_pids, g_pids, q_cams, g_cams))


def test_nan_distances_rank_last():
    rng = np.random.default_rng(10)
    dist = rng.random((20, 30))
    dist[rng.random((20, 30)) < 0.1] = np.nan
    q_pids, g_pids = rng.integers(0, 5, 20), rng.integers(0, 5, 30)
    assert_same(eval_regdb(dist, q_pids, g_pids), ref_regdb(dist, q_pids, g_pids))


# ----------------------------------------------------------------------------- random vs loop

@pytest.mark.parametrize("seed,nq,ng,nid", [(0, 50, 80, 20), (1, 40, 300, 3), (2, 7, 12, 4),
                                            (3, 60, 200, 60), (4, 30, 30, 30)])
def test_regdb_random_against_oracle(seed, nq, ng, nid):
    rng = np.random.default_rng(seed)
    dist = rng.random((nq, ng))
    q_pids, g_pids = rng.integers(0, nid + 2, nq), rng.integers(0, nid, ng)  # some ids absent
    for max_rank in (20, 5):
        assert_same(eval_regdb(dist, q_pids, g_pids, max_rank),
                    ref_regdb(dist, q_pids, g_pids, max_rank))


@pytest.mark.parametrize("seed,nq,ng,nid", [(0, 50, 80, 20), (1, 40, 300, 3), (2, 7, 12, 4),
                                            (3, 80, 301, 50), (4, 30, 30, 30)])
def test_sysu_random_against_oracle(seed, nq, ng, nid):
    rng = np.random.default_rng(seed)
    dist = rng.random((nq, ng)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, nid + 2, nq), rng.integers(0, nid, ng)
    q_cams, g_cams = rng.choice([3, 6], nq), rng.choice([1, 2, 4, 5], ng)
    for max_rank in (20, 5):
        assert_same(eval_sysu(dist, q_pids, g_pids, q_cams, g_cams, max_rank),
                    ref_sysu(dist, q_pids, g_pids, q_cams, g_cams, max_rank))


def test_regdb_both_paths_agree(monkeypatch):
    rng = np.random.default_rng(5)
    dist = rng.random((40, 90))
    q_pids, g_pids = rng.integers(0, 9, 40), rng.integers(0, 9, 90)
    fast = eval_regdb(dist, q_pids, g_pids)
    monkeypatch.setattr(em, "_COUNT_MAX_MATCHES", 0)  # force the sort path
    assert_same(eval_regdb(dist, q_pids, g_pids), fast, atol=1e-12)
    assert_same(fast, ref_regdb(dist, q_pids, g_pids))


def test_numpy_and_torch_inputs_agree():
    rng = np.random.default_rng(6)
    dist = rng.random((25, 40)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 6, 25), rng.integers(0, 6, 40)
    q_cams, g_cams = rng.choice([3, 6], 25), rng.choice([1, 2, 4, 5], 40)
    t = torch.from_numpy
    assert_same(eval_regdb(t(dist), t(q_pids), t(g_pids)), eval_regdb(dist, q_pids, g_pids), atol=0)
    assert_same(eval_sysu(t(dist), t(q_pids), t(g_pids), t(q_cams), t(g_cams)),
                eval_sysu(dist, q_pids, g_pids, q_cams, g_cams), atol=0)
    # Mixed: tensor distances, numpy / list ids.
    assert_same(eval_regdb(t(dist), list(q_pids), g_pids), eval_regdb(dist, q_pids, g_pids), atol=0)


# ----------------------------------------------------------------------------- re-ranking

def _unit(rng, n, d, dtype=np.float64):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("nq,ng,d,k1,k2,lam", [(15, 25, 8, 5, 3, 0.3), (40, 80, 16, 20, 6, 0.3),
                                               (10, 30, 6, 7, 1, 0.5), (12, 9, 4, 20, 6, 0.1)])
def test_k_reciprocal_against_classic(nq, ng, d, k1, k2, lam):
    rng = np.random.default_rng(nq * 1000 + ng)
    q, g = _unit(rng, nq, d), _unit(rng, ng, d)
    got = k_reciprocal(torch.from_numpy(q), torch.from_numpy(g), k1=k1, k2=k2, lambda_value=lam)
    assert isinstance(got, torch.Tensor) and got.shape == (nq, ng)
    np.testing.assert_allclose(got.numpy(), ref_re_ranking(q, g, k1, k2, lam), atol=1e-10)


def test_k_reciprocal_on_features_that_are_not_unit_length():
    rng = np.random.default_rng(9)
    q, g = 3 * rng.standard_normal((12, 8)), 0.5 * rng.standard_normal((40, 8))
    got = k_reciprocal(torch.from_numpy(q), torch.from_numpy(g), k1=6, k2=3, lambda_value=0.3)
    np.testing.assert_allclose(got.numpy(), ref_re_ranking(q, g, 6, 3, 0.3), atol=1e-10)


def test_k_reciprocal_float32_and_chunked(monkeypatch):
    rng = np.random.default_rng(7)
    q, g = _unit(rng, 30, 12, np.float32), _unit(rng, 50, 12, np.float32)
    want = ref_re_ranking(q.astype(np.float64), g.astype(np.float64), 20, 6, 0.3)
    got = k_reciprocal(torch.from_numpy(q), torch.from_numpy(g))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    monkeypatch.setattr(em, "_CHUNK", 64)  # many small chunks in the sparse join
    np.testing.assert_allclose(k_reciprocal(torch.from_numpy(q), torch.from_numpy(g)).numpy(),
                               got.numpy(), atol=1e-6)


def test_stable_topk_matches_stable_argsort():
    rng = np.random.default_rng(8)
    x = torch.from_numpy(rng.integers(0, 5, (20, 30)).astype(np.float32))
    for x in (x, torch.from_numpy(rng.random((20, 30)))):
        for k in (1, 4, 11, 30):
            want = torch.sort(x, dim=1, stable=True).indices[:, :k]
            assert torch.equal(em._stable_topk(x, k), want)


def test_random_walk_against_inverse():
    rng = np.random.default_rng(9)
    q, g = _unit(rng, 20, 10), _unit(rng, 35, 10)
    for alpha in (0.95, 0.5):
        got = random_walk(torch.from_numpy(q), torch.from_numpy(g), alpha=alpha)
        np.testing.assert_allclose(got.numpy(), ref_random_walk(q, g, alpha), atol=1e-9, rtol=1e-9)
    got32 = random_walk(torch.from_numpy(q.astype(np.float32)), torch.from_numpy(g.astype(np.float32)))
    np.testing.assert_allclose(got32.numpy(), ref_random_walk(q, g, 0.95), atol=1e-4)
