"""Pictures and tables for inspecting retrieval results, drawn with Pillow only (no matplotlib).

  ranked_list_size(k, thumb_w=64, thumb_h=128) -> (width, height)
  ranked_list_cell(slot, thumb_w=64, thumb_h=128) -> (x0, y0, x1, y1) of a thumbnail
  ranked_list_picture(query_path, gallery_paths, distances, matches=None, out_path=...,
                      query_label=None, thumb_w=64, thumb_h=128) -> out_path
  cmc_curve_picture(curves, out_path, title="CMC", width=640, height=480) -> out_path
  write_ranked_lists(out_dir, query_paths, gallery_paths, distmat, q_labels=None, g_labels=None,
                     num=10, top_k=10, order="hardest", seed=0, removed=None) -> [paths]
  topk_rows(query_paths, gallery_paths, distmat, top_k=10) -> [(query, rank, gallery, distance)]
  write_topk_csv(out_path, query_paths, gallery_paths, distmat, top_k=10) -> out_path

Ranking is ascending distance with a stable sort (equal distances keep gallery order), as in
eval_metrics. Every file is written atomically (fileio.atomic_write), so a crash never leaves a
half-written picture or CSV behind.
"""
import csv
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import fileio

__all__ = ["ranked_list_size", "ranked_list_cell", "ranked_list_picture", "cmc_curve_picture",
           "write_ranked_lists", "write_topk_csv"]

# ----------------------------------------------------------------------------- layout

# Each thumbnail sits in a cell with MARGIN pixels on every side: PAD of background (keeps
# neighbouring borders apart) then BORDER pixels of the match colour.
PAD = 1
BORDER = 3
MARGIN = PAD + BORDER
GAP = 12          # between the query cell and the first gallery cell
CAPTION_H = 16    # text band under the thumbnails (one line of the default font)

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
QUERY_COLOR = (30, 90, 220)
MATCH_COLOR = (0, 180, 0)
MISMATCH_COLOR = (220, 0, 0)
UNKNOWN_COLOR = (150, 150, 150)

# Distinct line colours for CMC curves (matplotlib's tab10).
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]

_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR


def ranked_list_size(k, thumb_w=64, thumb_h=128):
    """(width, height) of a ranked-list picture with k gallery thumbnails.

    width = (k + 1) * (thumb_w + 2 * MARGIN) + GAP; height = thumb_h + 2 * MARGIN + CAPTION_H
    (the caption band sits under the bordered thumbnails).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return (k + 1) * (thumb_w + 2 * MARGIN) + GAP, thumb_h + 2 * MARGIN + CAPTION_H


def ranked_list_cell(slot, thumb_w=64, thumb_h=128):
    """Box (x0, y0, x1, y1), exclusive end, of thumbnail `slot` (0 = query, i = rank i).

    Its border occupies the BORDER pixels just outside this box.
    """
    x = slot * (thumb_w + 2 * MARGIN) + (GAP if slot > 0 else 0) + MARGIN
    return x, MARGIN, x + thumb_w, MARGIN + thumb_h


# ----------------------------------------------------------------------------- helpers

def _save_png(img, out_path):
    return fileio.atomic_write(out_path, lambda f: img.save(f, format="PNG"))


def _font(size=None):
    # load_default(size) needs Pillow >= 10.1 with FreeType; otherwise the fixed bitmap font.
    if size is not None:
        try:
            return ImageFont.load_default(size=size)
        except (TypeError, ImportError, OSError, AttributeError):
            pass
    return ImageFont.load_default()


def _text_size(draw, text, font):
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return x1 - x0, y1 - y0


def _fit(draw, text, font, max_w):
    # Drop trailing characters until the caption fits its cell (long labels, huge distances).
    while text and _text_size(draw, text, font)[0] > max_w:
        text = text[:-1]
    return text


def _draw_centered(draw, cx, top, text, font, fill=TEXT):
    x0, y0, x1, _ = draw.textbbox((0, 0), text, font=font)
    draw.text((cx - (x1 - x0) / 2 - x0, top - y0), text, font=font, fill=fill)


def _to_rgb(img):
    """Any PIL mode -> RGB. 16-bit / float thermal frames are min-max scaled, not clipped."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        img = Image.fromarray(a.astype(np.uint8), "L")
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent areas go to the background colour rather than black.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        img = Image.alpha_composite(bg, rgba)
    return img.convert("RGB")


def _thumbnail(src, thumb_w, thumb_h):
    if isinstance(src, Image.Image):
        img = _to_rgb(src)
    else:
        with Image.open(os.fspath(src)) as im:
            img = _to_rgb(im)
    return img.resize((thumb_w, thumb_h), _BILINEAR)


def _numpy(x):
    # Accept torch tensors (on any device) without importing torch here.
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _distmat(distmat, n_query, n_gallery):
    d = _numpy(distmat)
    if d.ndim != 2 or d.shape != (n_query, n_gallery):
        raise ValueError(f"distmat must be [num_query={n_query}, num_gallery={n_gallery}], "
                         f"got shape {d.shape}")
    return d


# ----------------------------------------------------------------------------- ranked list

def ranked_list_picture(query_path, gallery_paths, distances, matches=None, out_path=None,
                        query_label=None, thumb_w=64, thumb_h=128):
    """Draw the query and its top-k gallery images in rank order into one PNG.

    Gallery borders are green (matches[i] true), red (false) or grey (matches is None). Under
    each gallery thumbnail: "#rank distance" (3 decimals). Paths may also be PIL images.
    Returns out_path.
    """
    if out_path is None:
        raise ValueError("out_path is required")
    k = len(gallery_paths)
    distances = _numpy(distances).reshape(-1)
    if len(distances) != k:
        raise ValueError(f"{k} gallery images but {len(distances)} distances")
    if matches is not None:
        matches = _numpy(matches).reshape(-1).astype(bool)
        if len(matches) != k:
            raise ValueError(f"{k} gallery images but {len(matches)} match flags")

    canvas = Image.new("RGB", ranked_list_size(k, thumb_w, thumb_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    cell_w = thumb_w + 2 * MARGIN
    text_top = thumb_h + 2 * MARGIN + 2

    def place(slot, src, color, caption):
        x0, y0, x1, y1 = ranked_list_cell(slot, thumb_w, thumb_h)
        # Border ring drawn as one filled rectangle; the thumbnail then covers its inside.
        draw.rectangle([x0 - BORDER, y0 - BORDER, x1 + BORDER - 1, y1 + BORDER - 1], fill=color)
        canvas.paste(_thumbnail(src, thumb_w, thumb_h), (x0, y0))
        _draw_centered(draw, (x0 + x1) / 2, text_top, _fit(draw, caption, font, cell_w), font)

    query_caption = "query" if query_label is None else f"query {query_label}"
    place(0, query_path, QUERY_COLOR, query_caption)
    if k:
        # Thin separator in the middle of the gap between query and gallery.
        sx = cell_w + GAP // 2
        draw.line([(sx, MARGIN), (sx, MARGIN + thumb_h - 1)], fill=UNKNOWN_COLOR, width=1)
    for i in range(k):
        if matches is None:
            color = UNKNOWN_COLOR
        else:
            color = MATCH_COLOR if matches[i] else MISMATCH_COLOR
        place(i + 1, gallery_paths[i], color, f"#{i + 1} {float(distances[i]):.3f}")
    return _save_png(canvas, out_path)


# ----------------------------------------------------------------------------- CMC curve

def cmc_curve_picture(curves, out_path, title="CMC", width=640, height=480):
    """Plot CMC curves {label: values} (fractions in [0, 1] or percentages) into a PNG.

    A curve whose values are all <= 1 is taken as fractions and scaled to percent (so a curve
    that is genuinely below 1% everywhere would be misread; pass percentages/100 then).
    x = rank 1..N (N = longest curve), y = 0..100%. Returns out_path.
    """
    series = _cmc_series(curves)
    n = max(len(v) for _, v in series)

    img = Image.new("RGB", (int(width), int(height)), BACKGROUND)
    draw = ImageDraw.Draw(img)
    f_title, f_tick, f_legend = _font(16), _font(11), _font(12)

    # Plot area: room on the left for "100%" and the rotated y label, below for ticks + label.
    left, right, top, bottom = 62, width - 16, 36, height - 44
    if right - left < 20 or bottom - top < 20:
        raise ValueError(f"{width}x{height} is too small for a plot")

    def px(rank):  # rank(s) 1..n -> x pixel(s); a single-rank curve sits in the middle
        rank = np.asarray(rank, dtype=np.float64)
        return left + (right - left) * ((rank - 1) / (n - 1) if n > 1 else np.full_like(rank, 0.5))

    def py(pct):  # 0..100 -> y pixel
        return bottom - (bottom - top) * pct / 100.0

    grid = (225, 225, 225)
    for pct in range(0, 101, 10):
        y = py(pct)
        draw.line([(left, y), (right, y)], fill=grid)
        label = f"{pct}%"
        tw, th = _text_size(draw, label, f_tick)
        _draw_centered(draw, left - 6 - tw / 2, y - th / 2 - 1, label, f_tick)
    # At most ~20 x ticks so labels never overlap on long curves.
    step = max(1, int(np.ceil(n / 20)))
    for rank in sorted(set(range(1, n + 1, step)) | {n}):
        x = float(px(rank))
        draw.line([(x, top), (x, bottom)], fill=grid)
        draw.line([(x, bottom), (x, bottom + 4)], fill=TEXT)
        _draw_centered(draw, x, bottom + 6, str(rank), f_tick)
    draw.rectangle([left, top, right, bottom], outline=TEXT)

    _draw_centered(draw, (left + right) / 2, height - 18, "Rank", f_tick)
    _paste_vertical(img, draw, "Matching rate (%)", f_tick, (top + bottom) / 2)
    _draw_centered(draw, width / 2, 10, title, f_title)

    for i, (label, v) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts = list(zip(px(np.arange(1, len(v) + 1)).tolist(), py(v).tolist()))
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2, joint="curve")
        for x, y in pts:
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=color)

    _cmc_legend(draw, series, f_legend, (left, right, top, bottom))
    return _save_png(img, out_path)


def _paste_vertical(img, draw, text, font, y_center):
    """text rotated by 90 degrees at the left edge: Pillow cannot draw rotated text directly, so it is
    rendered on a strip and the strip rotated."""
    tw, th = _text_size(draw, text, font)
    strip = Image.new("RGB", (tw + 4, th + 6), BACKGROUND)
    _draw_centered(ImageDraw.Draw(strip), (tw + 4) / 2, 2, text, font)
    strip = strip.rotate(90, expand=True)
    img.paste(strip, (4, int(y_center - strip.height / 2)))


def _cmc_series(curves):
    """[(label, percentages clipped to 0..100)] of cmc_curve_picture's curves, each checked."""
    if not curves:
        raise ValueError("curves is empty")
    series = []
    for label, values in curves.items():
        v = _numpy(values).astype(np.float64).reshape(-1)
        if v.size == 0 or not np.all(np.isfinite(v)):
            raise ValueError(f"curve {label!r} must be non-empty and finite")
        if v.max() <= 1.0:
            v = v * 100.0
        series.append((str(label), np.clip(v, 0.0, 100.0)))
    return series


def _cmc_legend(draw, series, font, box):
    """The legend in the lower right of the plot box, where rising CMC curves leave space."""
    left, right, top, bottom = box
    entries = [f"{label}: R1 {v[0]:.1f}%" for label, v in series]
    line_h = max(_text_size(draw, e, font)[1] for e in entries) + 6
    box_w = max(_text_size(draw, e, font)[0] for e in entries) + 40
    box_h = line_h * len(entries) + 6
    bx1, by1 = right - 8, bottom - 8
    bx0, by0 = max(left + 2, bx1 - box_w), max(top + 2, by1 - box_h)
    draw.rectangle([bx0, by0, bx1, by1], fill=BACKGROUND, outline=(160, 160, 160))
    for i, entry in enumerate(entries):
        color = PALETTE[i % len(PALETTE)]
        cy = by0 + 3 + line_h * i + line_h / 2
        draw.line([(bx0 + 6, cy), (bx0 + 28, cy)], fill=color, width=3)
        _, y0, _, y1 = draw.textbbox((0, 0), entry, font=font)
        draw.text((bx0 + 34, cy - (y0 + y1) / 2), entry, font=font, fill=TEXT)


# ----------------------------------------------------------------------------- batches

def _stable_rank(d):
    # Row-wise ascending, ties in gallery order (same convention as eval_metrics).
    return np.argsort(d, axis=1, kind="stable")


def _kept_rank(d, removed):
    """Stable ranking of each row with its removed entries moved to the end (the kept ones keep
    their order, as eval_metrics filters the ranked list): (ranking [Q, G], kept count [Q])."""
    ranking = _stable_rank(d)
    if removed is None:
        return ranking, np.full(len(d), d.shape[1])
    gone = np.take_along_axis(removed, ranking, axis=1)
    ranking = np.take_along_axis(ranking, np.argsort(gone, axis=1, kind="stable"), axis=1)
    return ranking, d.shape[1] - gone.sum(axis=1)


def _removed(removed, shape):
    if removed is None:
        return None
    m = _numpy(removed)
    if m.shape != shape or m.dtype != np.bool_:
        raise ValueError(f"removed must be a bool mask [num_query, num_gallery] = {list(shape)}, got "
                         f"{m.dtype} {list(m.shape)}")
    return m


def write_ranked_lists(out_dir, query_paths, gallery_paths, distmat, q_labels=None, g_labels=None,
                       num=10, top_k=10, order="hardest", seed=0, thumb_w=64, thumb_h=128, removed=None):
    """Write ranked-list pictures for `num` chosen queries as out_dir/query_{index:05d}.png.

    With labels and order="hardest": the queries whose first true match ranks worst (no true
    match at all = hardest; ties by query index), hardest first. order="random", or no labels:
    numpy default_rng(seed).choice without replacement. Returns the written paths in that order.
    removed: optional bool [Q, G] (eval_metrics.removed_mask): those gallery entries are left out
    of the query's list, of its picture and of the first-match rank, as the metric leaves them out;
    a query with fewer than top_k kept entries shows only those.
    """
    n_q, n_g = len(query_paths), len(gallery_paths)
    d = _distmat(distmat, n_q, n_g)
    if order not in ("hardest", "random"):
        raise ValueError(f"order must be 'hardest' or 'random', got {order!r}")
    if (q_labels is None) != (g_labels is None):
        raise ValueError("give both q_labels and g_labels, or neither")
    labelled = q_labels is not None
    if labelled:
        q_labels, g_labels = _numpy(q_labels).reshape(-1), _numpy(g_labels).reshape(-1)
        if len(q_labels) != n_q or len(g_labels) != n_g:
            raise ValueError(f"distmat is {d.shape} but got {len(q_labels)} query and "
                             f"{len(g_labels)} gallery labels")
    removed = _removed(removed, d.shape)
    num, top_k = min(int(num), n_q), min(int(top_k), n_g)
    if num <= 0:
        return []

    if labelled and order == "hardest":
        ranking, kept = _kept_rank(d, removed)                      # [Q, G], one sort
        hits = (g_labels[ranking] == q_labels[:, None]) & (np.arange(n_g) < kept[:, None])
        first = np.where(hits.any(axis=1), hits.argmax(axis=1), n_g)  # no match -> worst
        # lexsort: last key is primary -> descending first-match rank, then ascending index.
        chosen = np.lexsort((np.arange(n_q), -first))[:num]
        top, shown = ranking[chosen, :top_k], np.minimum(kept[chosen], top_k)
    else:
        chosen = np.random.default_rng(seed).choice(n_q, size=num, replace=False)
        # sort only the chosen rows
        ranking, kept = _kept_rank(d[chosen], None if removed is None else removed[chosen])
        top, shown = ranking[:, :top_k], np.minimum(kept, top_k)
    top_d = np.take_along_axis(d[chosen], top, axis=1)
    top_m = g_labels[top] == q_labels[chosen][:, None] if labelled else None

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for row, qi in enumerate(chosen.tolist()):
        path = os.path.join(out_dir, f"query_{qi:05d}.png")
        k = int(shown[row])
        ranked_list_picture(query_paths[qi], [gallery_paths[g] for g in top[row, :k].tolist()],
                            top_d[row, :k], None if top_m is None else top_m[row, :k], path,
                            query_label=q_labels[qi] if labelled else None,
                            thumb_w=thumb_w, thumb_h=thumb_h)
        written.append(path)
    return written


def topk_rows(query_paths, gallery_paths, distmat, top_k=10):
    """(query, rank, gallery, distance) per query and rank 1..top_k (stable ascending): the rows of
    write_topk_csv (and of test_mine.py's --json of a search). Distances at full float precision."""
    n_q, n_g = len(query_paths), len(gallery_paths)
    d = _distmat(distmat, n_q, n_g)
    k = min(int(top_k), n_g)
    top = _stable_rank(d)[:, :k]
    q_col = np.repeat(np.array([os.fspath(p) for p in query_paths], dtype=object), k)
    g_col = np.array([os.fspath(p) for p in gallery_paths], dtype=object)[top].reshape(-1)
    r_col = np.tile(np.arange(1, k + 1), n_q)
    d_col = np.take_along_axis(d, top, axis=1).reshape(-1).astype(np.float64)
    return list(zip(q_col.tolist(), r_col.tolist(), g_col.tolist(), d_col.tolist()))


def write_topk_csv(out_path, query_paths, gallery_paths, distmat, top_k=10):
    """CSV `query,rank,gallery,distance`: one row per query and rank 1..top_k (stable ascending).

    Distances are written at full float precision. Returns out_path.
    """
    rows = topk_rows(query_paths, gallery_paths, distmat, top_k)

    def write(f):
        w = csv.writer(f)
        w.writerow(["query", "rank", "gallery", "distance"])
        w.writerows(rows)

    return fileio.atomic_write(out_path, write, binary=False)
