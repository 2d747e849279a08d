"""Procedurally generated visible/thermal person re-identification demo data.

Lets a newcomer without SYSU-MM01 or RegDB run the whole pipeline on a CPU.

Every identity is a combination of *modality-invariant* attributes:

* body shape (continuous): person height, build (overall width), shoulder
  width, head size, leg length;
* upper garment: texture / layout (plain, horizontal or vertical stripes at two
  frequencies, checker, diagonal stripes, two-tone upper/lower split, open
  jacket, chest band) and sleeve length (short / long);
* lower garment: type (trousers, shorts, knee skirt, long skirt) and texture
  (plain, side stripe, horizontal bands);
* head: short hair, long hair, hat;
* lightness order of the two tones of each garment's texture;
* carried object: none, shoulder bag, backpack, handbag, suitcase (bag,
  handbag and suitcase on the left or right side).

Colour carries no identity information: in visible images every colour
(clothing, skin, hair, objects, background) is drawn afresh for every image,
with hue drawn independently of lightness.  Only the lightness *order* of a
garment's two tones is fixed per identity (``upper_polarity`` /
``lower_polarity``: e.g. light stripes on a dark shirt), in both modalities,
as part of the texture layout; the tones differ clearly in grey level so that
textures survive the loss of colour.  Thermal images are single intensity:
warm (bright) skin, clothing whose intensity is modulated by its texture,
cooler objects and hair, a dark noisy background.  Per image nuisances: shift, scale, walking pose
(stride, arm swing), background clutter, brightness / contrast jitter, blur and
sensor noise.

One renderer (:func:`render_person`) serves both on-disk layouts:

* :func:`make_regdb_demo` -- RegDB layout (``Visible/``, ``Thermal/``,
  ``idx/{train,test}_{visible,thermal}_{t}.txt``), PNG;
* :func:`make_sysu_demo` -- raw SYSU-MM01 layout (``cam1..cam6/<pid>/<n>.jpg``,
  ``exp/{train,val,test}_id.txt``), JPEG;
* :func:`make_llcm_demo` -- LLCM layout (``vis/``, ``nir/``, ``test_vis/camN/``,
  ``test_nir/camN/``, ``idx/*.txt``), JPEG; near-infrared images use the thermal renderer.

Both writers are deterministic (same arguments -> byte-identical files),
atomic (everything is written into a temporary sibling folder that is moved
into place at the end) and idempotent (a finished dataset records its
parameters in ``demo.json``; calling again with the same parameters returns at
once unless ``force=True``).

They delete or replace only what is provably their own: ``demo.json`` also lists
every file the generator wrote, and an existing ``root`` is replaced only when it
is an empty folder or a real folder (not a link, not a file) holding no file
outside that list; anything else is refused with a ``FileExistsError``.

Command line::

    python demo_data.py --root data/regdb_demo --layout regdb
    python demo_data.py --root data/sysu_demo --layout sysu --num_ids 40
    python demo_data.py --root data/llcm_demo --layout llcm --num_ids 30
"""

import argparse
import json
import os
import shutil
import time

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

import fileio
import data_manager

# Bump whenever the rendered pixels or the layout change: a cached dataset
# written by another version is regenerated.
GENERATOR_VERSION = 1
# The same for the LLCM layout only (its file plan; its pixels follow GENERATOR_VERSION).
LLCM_LAYOUT_VERSION = 1
# Written last into every demo: its parameters and the list of every file the generator wrote,
# the proof that a folder is this module's to replace.
MANIFEST = "demo.json"

UPPER_PATTERNS = ("plain", "hstripes_coarse", "hstripes_fine", "vstripes_coarse",
                  "vstripes_fine", "checker", "diagonal", "split", "jacket",
                  "chestband")
SLEEVES = ("short", "long")
LOWER_TYPES = ("trousers", "shorts", "skirt", "long_skirt")
LOWER_PATTERNS = ("plain", "sidestripe", "bands")
HEADS = ("short_hair", "long_hair", "hat")
OBJECTS = ("none", "shoulder_bag", "backpack", "handbag", "suitcase")
SIDED_OBJECTS = ("shoulder_bag", "handbag", "suitcase")

# Discrete attributes that make up an identity's "signature"; identities drawn
# by draw_identities differ in at least two of them whenever possible.
SIGNATURE_KEYS = ("upper", "sleeves", "lower", "lower_pattern", "head_style", "object")

SYSU_VISIBLE_CAMS = (1, 2, 4, 5)
SYSU_THERMAL_CAMS = (3, 6)
# per-camera (width, height) scale factors: real cameras differ in resolution
_SYSU_CAM_SCALE = {1: 1.0, 2: 1.125, 3: 1.0, 4: 0.875, 5: 1.25, 6: 1.125}

LLCM_VISIBLE_CAMS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
LLCM_NIR_CAMS = (1, 2, 4, 5, 6, 7, 8, 9)  # no near-infrared camera 3, as in the real set
_LLCM_CAM_SCALE = {1: 1.0, 2: 1.125, 3: 0.875, 4: 1.0, 5: 1.25, 6: 1.0, 7: 0.875, 8: 1.125, 9: 1.0}

_LUMA = np.array([0.299, 0.587, 0.114])

# Identifiers for seeding independent random streams.
_STREAM_IDENTITY, _STREAM_IMAGE, _STREAM_SPLIT, _STREAM_SYSU, _STREAM_LLCM = 11, 23, 37, 41, 53


def _rng(*keys):
    """Independent, order-free random stream for a tuple of non-negative ints."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


# --------------------------------------------------------------------------
# identities
# --------------------------------------------------------------------------

def identity_attributes(pid, rng):
    """Draw the modality-invariant attributes of one identity.

    Returns a JSON-serialisable dict.  Body-shape values are fractions: of the
    image height (``height``) or of the person's height (the others).
    """
    obj = OBJECTS[rng.integers(len(OBJECTS))]
    return {
        "pid": int(pid),
        "height": float(rng.uniform(0.74, 0.95)),   # person height / image height
        "build": float(rng.uniform(0.78, 1.28)),   # overall width factor
        "shoulder": float(rng.uniform(0.105, 0.14)),  # half shoulder width / height
        "head": float(rng.uniform(0.11, 0.16)),     # head height / height
        "legs": float(rng.uniform(0.42, 0.55)),     # leg length / height
        "upper": UPPER_PATTERNS[rng.integers(len(UPPER_PATTERNS))],
        "sleeves": SLEEVES[rng.integers(len(SLEEVES))],
        "lower": LOWER_TYPES[rng.integers(len(LOWER_TYPES))],
        "lower_pattern": LOWER_PATTERNS[rng.integers(len(LOWER_PATTERNS))],
        "head_style": HEADS[rng.integers(len(HEADS))],
        "object": obj,
        "side": int(rng.choice([-1, 1])) if obj in SIDED_OBJECTS else 0,
        # lightness order of each garment's two tones (+1: the pattern parts
        # are the lighter ones), the same in both modalities: part of the
        # clothing layout, like a light shirt under a dark jacket
        "upper_polarity": int(rng.choice([-1, 1])),
        "lower_polarity": int(rng.choice([-1, 1])),
    }


def _signature(attrs):
    return tuple(attrs[k] for k in SIGNATURE_KEYS)


def draw_identities(num_ids, seed=0, first_pid=1):
    """Attributes of identities ``first_pid .. first_pid+num_ids-1``.

    Identities are drawn one after another; a draw whose discrete signature is
    within Hamming distance 1 of an earlier identity is redrawn (the
    requirement is relaxed when the signature space runs out), so that every
    pair differs in at least two discrete attributes plus the continuous body
    shape.  Deterministic in ``seed``.
    """
    out, sigs = [], []
    for i in range(num_ids):
        pid = first_pid + i
        rng = _rng(_STREAM_IDENTITY, seed, pid)
        best, best_d = None, -1
        for _attempt in range(200):
            a = identity_attributes(pid, rng)
            s = _signature(a)
            d = min((sum(x != y for x, y in zip(s, t)) for t in sigs), default=99)
            if d > best_d:
                best, best_d = a, d
            if d >= 2:
                break
        out.append(best)
        sigs.append(_signature(best))
    return out


# --------------------------------------------------------------------------
# renderer
# --------------------------------------------------------------------------

_SS = 2  # supersampling factor (anti-aliasing)
_GRID_CACHE = {}


def _grid(h, w):
    key = (h, w)
    if key not in _GRID_CACHE:
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        _GRID_CACHE[key] = (x + 0.5, y + 0.5)
    return _GRID_CACHE[key]


def _segment(X, Y, x0, y0, x1, y1):
    """Distance to a segment, position t in [0, 1] along it, signed offset."""
    dx, dy = x1 - x0, y1 - y0
    L = max(np.hypot(dx, dy), 1e-6)
    rx, ry = X - x0, Y - y0
    t = np.clip((rx * dx + ry * dy) / (L * L), 0.0, 1.0)
    d = np.hypot(X - (x0 + t * dx), Y - (y0 + t * dy))
    perp = (rx * dy - ry * dx) / L
    return d, t, perp


def _capsule(X, Y, x0, y0, x1, y1, r):
    """Mask of points within ``r`` of a segment, with t and signed offset.

    Computed on the segment's bounding window only (speed); outside it the
    mask is False and t / offset are 0.
    """
    H, W = X.shape
    ya, yb = max(int(min(y0, y1) - r) - 1, 0), min(int(max(y0, y1) + r) + 2, H)
    xa, xb = max(int(min(x0, x1) - r) - 1, 0), min(int(max(x0, x1) + r) + 2, W)
    mask = np.zeros((H, W), bool)
    t = np.zeros((H, W), np.float32)
    perp = np.zeros((H, W), np.float32)
    if ya < yb and xa < xb:
        win = (slice(ya, yb), slice(xa, xb))
        d, t[win], perp[win] = _segment(X[win], Y[win], x0, y0, x1, y1)
        mask[win] = d <= r
    return mask, t, perp


def _rect(X, Y, x0, y0, x1, y1):
    return (X >= min(x0, x1)) & (X < max(x0, x1)) & (Y >= y0) & (Y < y1)


def _ellipse(X, Y, cx, cy, rx, ry):
    return ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 <= 1.0


def _bands(coord, cycles):
    """Alternating 0/1 bands; ``coord`` in [0, 1] -> ``cycles`` dark/light pairs."""
    return (np.floor(coord * cycles * 2.0) % 2.0) == 1.0


# orthonormal basis of the colour plane of constant luma (hue directions)
_HUE_E1 = np.array([1.0, -1.0, 0.0]) - (np.array([1.0, -1.0, 0.0]) @ _LUMA) / (_LUMA @ _LUMA) * _LUMA
_HUE_E1 /= np.linalg.norm(_HUE_E1)
_HUE_E2 = np.cross(_LUMA, _HUE_E1)
_HUE_E2 /= np.linalg.norm(_HUE_E2)


def _colour(rng, luma):
    """Random RGB colour of grey level ``luma`` with a uniformly random hue.

    Hue is drawn independently of lightness (plain uniform RGB would make
    light colours greenish and dark ones bluish, leaking lightness into hue).
    """
    theta = rng.uniform(0, 2 * np.pi)
    u = np.cos(theta) * _HUE_E1 + np.sin(theta) * _HUE_E2
    # grey (luma, luma, luma) + s * u keeps the luma; largest s inside the cube
    with np.errstate(divide="ignore"):
        smax = np.min(np.where(u > 0, (255 - luma) / u, np.where(u < 0, -luma / u, np.inf)))
    return luma + rng.uniform(0.35, 1.0) * smax * u


class _Palette:
    """Colours (visible) or intensities (thermal) for one image."""

    def __init__(self, modality, rng, polarity=(1, 1)):
        self.thermal = modality == "thermal"
        self.rng = rng
        if self.thermal:
            body = rng.uniform(150, 185)
            self.skin = rng.uniform(218, 248)
            self.hair = rng.uniform(95, 130)
            self.shoe = rng.uniform(65, 95)
            self.obj = rng.uniform(80, 118)
            self.hat = rng.uniform(100, 135)
            self.upper = self._pair(polarity[0], body)
            self.lower = self._pair(polarity[1], body - rng.uniform(0, 20))
        else:
            self.skin = self._skin()
            self.hair = _colour(rng, rng.uniform(10, 120) if rng.random() < 0.8 else rng.uniform(0, 255))
            self.shoe = _colour(rng, rng.uniform(0, 255))
            self.obj = _colour(rng, rng.uniform(0, 255))
            self.hat = _colour(rng, rng.uniform(0, 255))
            self.upper = self._pair(polarity[0])
            self.lower = self._pair(polarity[1])

    def _skin(self):
        tones = np.array([[255, 224, 196], [234, 192, 160], [198, 144, 110],
                          [141, 95, 66], [95, 62, 45]], dtype=float)
        i = self.rng.integers(len(tones))
        return np.clip(tones[i] * self.rng.uniform(0.9, 1.1) + self.rng.normal(0, 8, 3), 0, 255)

    def _pair(self, polarity, body=None):
        """Base and pattern tone of a garment; the pattern tone is lighter
        (polarity +1) or darker (-1) by a clear margin.  Visible hues are
        random."""
        rng = self.rng
        if self.thermal:
            delta = rng.uniform(45, 70) * polarity
            return (np.array([body]), np.array([np.clip(body + delta, 60, 215)]))
        gap = rng.uniform(90, 200)
        dark = rng.uniform(0, 255 - gap)
        a, b = (dark, dark + gap) if polarity > 0 else (dark + gap, dark)
        return _colour(rng, a), _colour(rng, b)


def _rect_window(x0, y0, x1, y1, h, w):
    """Slices of the pixels whose centres lie in [x0, x1) x [y0, y1)."""
    c = lambda z, n: int(min(max(np.ceil(z - 0.5), 0), n))
    return slice(c(y0, h), c(y1, h)), slice(c(x0, w), c(x1, w))


def _background(h, w, modality, rng, cam_style=None):
    """Random, mildly cluttered background, float32 array (h, w, C).

    Clutter (walls, doors, poles / warm pipes) is kept low in contrast: with
    only a few hundred training steps from scratch, loud clutter drowns the
    person and the identity cues.
    """
    ys = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None, None]
    xs = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, :, None]
    if modality == "thermal":
        base = rng.uniform(25, 70)
        gy, gx = rng.uniform(-20, 20), rng.uniform(-10, 10)
        bg = (base + gy * (ys - 0.5)) + gx * (xs - 0.5)
        for _ in range(rng.integers(0, 4)):
            x0, y0 = rng.uniform(-w / 4, w), rng.uniform(-h / 4, h)
            win = _rect_window(x0, y0, x0 + rng.uniform(4, w * 0.6), y0 + rng.uniform(4, h * 0.5), h, w)
            bg[win] += rng.uniform(-12, 28)
    else:
        # scenes are mostly greyish (concrete, asphalt, walls): a grey level
        # plus a weak random tint; clothing colours are saturated
        tint = np.zeros(3) if cam_style is None else cam_style
        top = np.clip(rng.uniform(20, 235) + rng.uniform(-30, 30, 3) + tint, 0, 255)
        bot = np.clip(top + rng.uniform(-50, 50) + rng.uniform(-15, 15, 3), 0, 255)
        top, bot = top.astype(np.float32), bot.astype(np.float32)
        bg = np.repeat(top * (1 - ys) + bot * ys, w, axis=1)
        for _ in range(rng.integers(0, 4)):
            x0, y0 = rng.uniform(-w / 4, w), rng.uniform(-h / 4, h)
            win = _rect_window(x0, y0, x0 + rng.uniform(4, w * 0.6), y0 + rng.uniform(4, h * 0.5), h, w)
            bg[win] += rng.uniform(-20, 20) + rng.uniform(-6, 6, 3).astype(np.float32)
        bg[int(h * rng.uniform(0.88, 0.98)):] += rng.uniform(-40, 40) + rng.uniform(-10, 10, 3).astype(np.float32)
    return np.ascontiguousarray(np.clip(bg, 0, 255), dtype=np.float32)


def render_person(attrs, modality, rng, img_w=64, img_h=128, cam_style=None):
    """Render one image of the identity ``attrs``.

    modality: ``"visible"`` or ``"thermal"``.  ``rng`` supplies every per-image
    nuisance (colours, pose, placement, clutter, noise).  Returns a uint8 array
    of shape (img_h, img_w, 3); thermal images have three identical channels.
    ``cam_style`` optionally biases the visible background colour (a camera's
    scene).
    """
    data_manager.check_modality(modality)
    H, W = img_h * _SS, img_w * _SS
    X, Y = _grid(H, W)
    pal = _Palette(modality, rng, (attrs.get("upper_polarity", 1), attrs.get("lower_polarity", 1)))
    img = _background(H, W, modality, rng, cam_style)
    figure = _Figure(attrs, img, X, Y, pal, rng)
    # back to front: what is behind the body, legs, torso, arms, head, what is carried in front
    for part in (_behind, _legs, _torso, _arms, _head, _carried):
        part(figure)
    return _photometric(img, modality, rng)


class _Figure:
    """One person on the supersampled canvas ``img`` (pixels of X, Y): its proportions and pose, drawn from rng;
    the functions below paint its parts."""

    def __init__(self, a, img, X, Y, pal, rng):
        self.a, self.img, self.X, self.Y, self.pal = a, img, X, Y, pal
        H, W = X.shape
        P = self.P = a["height"] * H * rng.uniform(0.97, 1.03)  # person height
        self.feet = H - H * rng.uniform(0.015, 0.045)
        self.top = self.feet - P
        self.cx = W / 2 + rng.uniform(-0.05, 0.05) * W
        build = a["build"]
        head_h = self.head_h = a["head"] * P
        self.head_ry, self.head_rx = head_h / 2, head_h / 2 * 0.78
        self.head_cy = self.top + self.head_ry
        self.shoulder_y = self.top + head_h + 0.025 * P
        self.hip_y = self.feet - a["legs"] * P
        self.sw = a["shoulder"] * P * build                  # half shoulder width
        self.hw = self.sw * 0.82                              # half hip width
        self.arm_r = 0.028 * P * build
        self.leg_r = 0.042 * P * build
        self.hand_y = self.hip_y + 0.07 * P
        self.stride = rng.uniform(-0.04, 0.04) * P
        self.swing = rng.uniform(-0.025, 0.025) * P
        self.side = a["side"] if a["side"] else 1

    def paint(self, mask, value):
        self.img[mask] = value

    def paint_pattern(self, mask, pattern, pair):
        self.img[mask] = pair[0]
        self.img[mask & pattern] = pair[1]


def _behind(f):
    """Backpack, long hair."""
    a, X, Y, P, cx, sw = f.a, f.X, f.Y, f.P, f.cx, f.sw
    if a["object"] == "backpack":
        f.paint(_rect(X, Y, cx - sw * 1.22, f.shoulder_y - 0.01 * P, cx + sw * 1.22,
                         f.hip_y - 0.04 * P), f.pal.obj)
    if a["head_style"] == "long_hair":
        rx, ry, cy = f.head_rx, f.head_ry, f.head_cy
        f.paint(_rect(X, Y, cx - rx * 1.15, cy, cx + rx * 1.15, f.shoulder_y + 0.09 * P) |
                   _ellipse(X, Y, cx, cy, rx * 1.15, ry * 1.08), f.pal.hair)


def _legs(f):
    a, X, Y, P, cx, hw, hip_y, feet = f.a, f.X, f.Y, f.P, f.cx, f.hw, f.hip_y, f.feet
    lower, lower_pat, leg_r = a["lower"], a["lower_pattern"], f.leg_r
    legs_cloth = np.zeros_like(X, dtype=bool)
    legs_pattern = np.zeros_like(X, dtype=bool)
    clothed_to = {"trousers": 0.93, "shorts": 0.42, "skirt": 0.0, "long_skirt": 0.0}[lower]
    for s, st in ((-1, f.stride), (1, -f.stride)):
        x0, y0 = cx + s * hw * 0.5, hip_y
        x1, y1 = cx + s * hw * 0.5 + st * 0.5, feet - 0.03 * P
        leg, t, perp = _capsule(X, Y, x0, y0, x1, y1, leg_r)
        f.paint(leg, f.pal.skin)
        cloth = leg & (t <= clothed_to)
        legs_cloth |= cloth
        if lower_pat == "sidestripe":
            # outer third of each leg; perp > 0 is the +x side for a downward leg
            legs_pattern |= cloth & (-s * perp > leg_r * 0.2)
        elif lower_pat == "bands":
            legs_pattern |= cloth & _bands(t, 3.0)
        # shoe
        f.paint(_ellipse(X, Y, x1 + s * 0.012 * P, feet - 0.018 * P, leg_r * 1.25, 0.022 * P), f.pal.shoe)
    pelvis = _rect(X, Y, cx - hw, hip_y - 0.01 * P, cx + hw, hip_y + 0.06 * P)
    if lower in ("skirt", "long_skirt"):
        length = (0.5 if lower == "skirt" else 0.8) * (feet - hip_y)
        v = np.clip((Y[:, :1] - hip_y) / length, 0, 1)     # (H, 1)
        half = hw * (1.0 + 0.55 * v)
        skirt = (Y >= hip_y - 0.01 * P) & (Y < hip_y + length) & (np.abs(X - cx) <= half)
        pat = False
        if lower_pat == "sidestripe":
            pat = np.abs(X - cx) > half * 0.6
        elif lower_pat == "bands":
            pat = _bands(v, 2.0)
        f.paint_pattern(skirt, pat, f.pal.lower)
    else:
        legs_cloth |= pelvis
        f.paint_pattern(legs_cloth, legs_pattern, f.pal.lower)


def _torso(f):
    """The torso with the upper garment's texture."""
    X, Y, cx, sw, hw, arm_r, shoulder_y = f.X, f.Y, f.cx, f.sw, f.hw, f.arm_r, f.shoulder_y
    v = (Y[:, :1] - shoulder_y) / (f.hip_y - shoulder_y)  # (H, 1)
    half = sw + (hw - sw) * np.clip(v, 0, 1)
    torso = (v >= 0) & (v <= 1.0) & (np.abs(X - cx) <= half)
    torso |= _capsule(X, Y, cx - sw + arm_r, shoulder_y + arm_r, cx + sw - arm_r, shoulder_y + arm_r, arm_r)[0]
    u = (X[:1, :] - cx) / (2 * sw) + 0.5                  # (1, W), 0..1 across shoulders
    f.paint_pattern(torso, _upper_pattern(f.a["upper"], u, v), f.pal.upper)


def _arms(f):
    X, Y, P, cx, sw, arm_r = f.X, f.Y, f.P, f.cx, f.sw, f.arm_r
    sleeve_to = 0.9 if f.a["sleeves"] == "long" else 0.3
    for s in (-1, 1):
        x0, y0 = cx + s * (sw - arm_r * 0.6), f.shoulder_y + arm_r
        x1, y1 = cx + s * (sw + arm_r * 0.6) + s * 0.01 * P, f.hand_y
        x1 += f.swing * s * 0.3
        arm, t, _ = _capsule(X, Y, x0, y0, x1, y1, arm_r)
        f.paint(arm, f.pal.skin)
        f.paint(arm & (t <= sleeve_to), f.pal.upper[0])


def _head(f):
    X, Y, P, cx, rx, ry, cy = f.X, f.Y, f.P, f.cx, f.head_rx, f.head_ry, f.head_cy
    f.paint(_rect(X, Y, cx - rx * 0.4, cy, cx + rx * 0.4, f.shoulder_y + 0.01 * P), f.pal.skin)  # neck
    face = _ellipse(X, Y, cx, cy, rx, ry)
    f.paint(face, f.pal.skin)
    if f.a["head_style"] in ("short_hair", "long_hair"):
        f.paint(face & (Y < cy - ry * 0.35), f.pal.hair)
    else:  # hat: crown and brim
        f.paint(_rect(X, Y, cx - rx * 1.05, f.top - 0.35 * f.head_h, cx + rx * 1.05, cy - ry * 0.25),
                   f.pal.hat)
        f.paint(_rect(X, Y, cx - rx * 1.7, cy - ry * 0.45, cx + rx * 1.7, cy - ry * 0.2), f.pal.hat)


def _carried(f):
    """Carried objects in front of the body."""
    X, Y, P, cx, sw, hw, side, obj = f.X, f.Y, f.P, f.cx, f.sw, f.hw, f.side, f.a["object"]
    arm_r, hand_y, feet, shoulder_y, hip_y = f.arm_r, f.hand_y, f.feet, f.shoulder_y, f.hip_y
    if obj == "backpack":  # straps over the shoulders
        for s in (-1, 1):
            f.paint(_rect(X, Y, cx + s * sw * 0.45, shoulder_y - 0.005 * P,
                             cx + s * sw * 0.62, hip_y - 0.06 * P), f.pal.obj)
    elif obj == "shoulder_bag":
        bx = cx + side * (hw + arm_r * 1.6)
        by0 = hip_y - 0.06 * P
        f.paint(_capsule(X, Y, cx - side * sw * 0.7, shoulder_y, bx, by0, 0.009 * P)[0], f.pal.obj)
        f.paint(_rect(X, Y, bx - side * 0.02 * P, by0, bx + side * 0.14 * P, by0 + 0.14 * P), f.pal.obj)
    elif obj == "handbag":
        hx = cx + side * (sw + arm_r * 1.6)
        f.paint(_rect(X, Y, hx - 0.045 * P, hand_y - 0.005 * P, hx + 0.045 * P, hand_y + 0.075 * P),
                   f.pal.obj)
    elif obj == "suitcase":
        sx = cx + side * (sw + arm_r * 2.0)
        handle = _capsule(X, Y, sx, hand_y, sx + side * 0.03 * P, feet - 0.27 * P, 0.008 * P)[0]
        f.paint(handle, f.pal.shoe)
        f.paint(_rect(X, Y, sx, feet - 0.27 * P, sx + side * 0.16 * P, feet - 0.01 * P), f.pal.obj)


def _upper_pattern(up, u, v):
    """The upper garment's texture mask from u (across the shoulders) and v (shoulders to hips), 0..1."""
    patterns = {"plain": lambda: False, "hstripes_coarse": lambda: _bands(v, 2.0),
                "hstripes_fine": lambda: _bands(v, 3.5), "vstripes_coarse": lambda: _bands(u, 1.5),
                "vstripes_fine": lambda: _bands(u, 2.5), "checker": lambda: _bands(u, 2.0) ^ _bands(v, 2.5),
                "diagonal": lambda: _bands((u + v) / 2, 3.0), "split": lambda: v > 0.5,
                "jacket": lambda: np.abs(u - 0.5) < 0.16, "chestband": lambda: (v > 0.28) & (v < 0.55)}
    if up not in patterns:
        raise ValueError(f"unknown upper pattern {up!r}")
    return patterns[up]()


def _photometric(img, modality, rng):
    """Downsample the supersampled canvas, then blur, gain, bias and noise: uint8 (h, w, 3)."""
    c = img.shape[-1]
    img = sum(img[i::_SS, j::_SS] for i in range(_SS) for j in range(_SS)) * (1.0 / _SS ** 2)
    if modality == "thermal":
        sigma = rng.uniform(0.3, 0.8)
        gain, bias = rng.uniform(0.85, 1.12), rng.uniform(-15, 15)
        noise = rng.uniform(2, 6)
    else:
        sigma = rng.uniform(0.0, 0.6)
        gain, bias = rng.uniform(0.7, 1.25), rng.uniform(-25, 25)
        noise = rng.uniform(2, 6)
    if sigma > 0.05:
        img = gaussian_filter(img, sigma=(sigma, sigma, 0))
    img = img * gain + bias + rng.normal(0, noise, img.shape)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if c == 1:
        img = np.repeat(img, 3, axis=2)
    return img


def read_meta(root):
    """The contents of root/demo.json (a dict), or None where root is not a folder or holds no
    readable demo.json: a file is never taken for a demo."""
    return fileio.read_manifest(root, MANIFEST)


_OWNER = dict(manifest=MANIFEST, what="demo folder", writer="the demo generator")


def _build_atomically(root, params, writer, force):
    """Run ``writer(tmp_dir)`` and move the result to ``root``.

    Returns without work (and without deleting anything) when ``root`` already holds a dataset
    with the same ``params``. Otherwise replaces only what is provably this module's
    (fileio.check_owned): demo.json records the params and every file the writer wrote.
    """
    root = os.path.abspath(root)
    meta = read_meta(root)
    if meta is not None and meta.get("params") == params and not force:
        return root  # reading is safe whatever else the folder holds
    fileio.check_owned(root, **_OWNER)  # before any work
    tmp = fileio.new_build_folder(root)
    try:
        writer(tmp)
        fileio.write_manifest(tmp, MANIFEST, params=params)
        fileio.replace_owned(tmp, root, **_OWNER)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def ensure_demo(args, log=print):
    """--dataset demo (train_mine.py, test_mine.py): generate the demo set at args.data_path on first
    use; a folder that holds one is used as it is (a set of another generator version is said)."""
    if args.dataset != "demo":
        return
    meta = read_meta(args.data_path)
    if meta is None:
        start = time.time()
        make_regdb_demo(args.data_path, workers=0)  # every core; the files do not depend on it
        log(f"demo data written to {args.data_path} in {time.time() - start:.0f} s (first use)")
        return
    version = meta.get("params", {}).get("version")
    if version != GENERATOR_VERSION:  # kept (it may be a set made on purpose), but said
        log(f"note: {args.data_path} holds demo data of generator version {version}, not the current "
            f"{GENERATOR_VERSION}; delete the folder to regenerate it")


def _check_size(img_w, img_h):
    if img_w < 4 or img_h < 8:  # the renderer's smallest (a camera's scale 0.875 included)
        raise ValueError(f"img_w and img_h must be at least 4 and 8, got {img_w}x{img_h}")


def _save_png(arr, path):
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def _write_image(job):
    """Render and save one image; ``job`` is a picklable tuple (see callers)."""
    path, attrs, modality, keys, w, h, cam_style, mixed_gray = job
    rng = _rng(*keys)
    arr = render_person(attrs, modality, rng, w, h, cam_style=cam_style)
    if path.endswith(".png"):
        _save_png(arr, path)
    else:
        im = Image.fromarray(arr)
        if mixed_gray and rng.random() < 0.5:
            im = im.convert("L")
        im.save(path, format="JPEG", quality=92)


def _run_jobs(jobs, workers):
    """Write all images, in ``workers`` processes when > 1 (output identical)."""
    if workers is None or workers <= 0:
        workers = os.cpu_count() or 1
    workers = min(workers, max(1, len(jobs) // 64))
    if workers > 1:
        import multiprocessing as mp
        try:
            ctx = mp.get_context("fork")
        except ValueError:  # no fork on this platform
            ctx = None
        if ctx is not None:
            with ctx.Pool(workers) as pool:
                for _ in pool.imap_unordered(_write_image, jobs, chunksize=32):
                    pass
            return
    for job in jobs:
        _write_image(job)


# --------------------------------------------------------------------------
# RegDB layout
# --------------------------------------------------------------------------

def regdb_split(num_ids, seed, split):
    """(train_pids, test_pids) of split number ``split``: random halves, both sorted."""
    pids = np.arange(1, num_ids + 1)
    perm = _rng(_STREAM_SPLIT, seed, split).permutation(pids)
    n_train = num_ids // 2
    return sorted(int(p) for p in perm[:n_train]), sorted(int(p) for p in perm[n_train:])


def make_regdb_demo(root, num_ids=120, imgs_per_id=10, seed=0, img_w=64, img_h=128,
                    num_splits=10, force=False, workers=1):
    """Write a RegDB-layout demo dataset to ``root`` and return ``root``.

    ``root/Visible/<id>/v_<id>_<k>.png``, ``root/Thermal/<id>/t_<id>_<k>.png``
    (ids 1..num_ids as 4 digits, k = 01..imgs_per_id; thermal images are grey
    RGB) and, for every split s in 1..num_splits,
    ``root/idx/{train,test}_{visible,thermal}_{s}.txt`` with lines
    ``<path relative to root> <label>``.  Split s divides the identities in
    random halves; train labels are 0..C-1 in sorted identity order, test
    labels are the identity numbers.  ``workers`` > 1 renders in that many
    processes (0: one per CPU); the files do not depend on it.
    """
    if num_ids < 2:
        raise ValueError(f"num_ids must be >= 2, got {num_ids}")
    if imgs_per_id < 1 or num_splits < 1:
        raise ValueError(f"imgs_per_id and num_splits must be >= 1, got {imgs_per_id} and {num_splits}")
    _check_size(img_w, img_h)
    # demo.json's key stays num_trials: sets generated before the rename remain up to date
    params = {"layout": "regdb", "version": GENERATOR_VERSION, "num_ids": int(num_ids),
              "imgs_per_id": int(imgs_per_id), "seed": int(seed), "img_w": int(img_w),
              "img_h": int(img_h), "num_trials": int(num_splits)}

    def writer(out):
        ids = draw_identities(num_ids, seed)
        files = {"visible": {}, "thermal": {}}
        jobs = []
        for mod, folder, prefix, code in (("visible", "Visible", "v", 1),
                                          ("thermal", "Thermal", "t", 2)):
            for a in ids:
                pid = a["pid"]
                os.makedirs(os.path.join(out, folder, f"{pid:04d}"))
                names = [f"{folder}/{pid:04d}/{prefix}_{pid:04d}_{k:02d}.png"
                         for k in range(1, imgs_per_id + 1)]
                jobs += [(os.path.join(out, rel), a, mod, (_STREAM_IMAGE, seed, pid, code, k),
                          img_w, img_h, None, False) for k, rel in enumerate(names, 1)]
                files[mod][pid] = names
        _run_jobs(jobs, workers)
        os.makedirs(os.path.join(out, "idx"))
        for split in range(1, num_splits + 1):
            train, test = regdb_split(num_ids, seed, split)
            for part, pids, relabel in (("train", train, True), ("test", test, False)):
                for mod in ("visible", "thermal"):
                    lines = []
                    for lab, pid in enumerate(pids):
                        label = lab if relabel else pid
                        lines += [f"{rel} {label}\n" for rel in files[mod][pid]]
                    with open(os.path.join(out, "idx", f"{part}_{mod}_{split}.txt"), "w") as f:
                        f.writelines(lines)
        with open(os.path.join(out, "identities.json"), "w") as f:
            json.dump(ids, f, indent=0, sort_keys=True)

    return _build_atomically(root, params, writer, force)


# --------------------------------------------------------------------------
# SYSU-MM01 raw layout
# --------------------------------------------------------------------------

def sysu_plan(num_ids, seed, n_val, n_test):
    """Split and camera plan of the SYSU demo.

    Returns (train_ids, val_ids, test_ids, cams) where ``cams[pid]`` maps each
    camera the identity appears in to its number of images (4..6).  Every
    identity has at least one visible and one thermal camera; test identities
    have at least one of cam1/cam2 (the indoor-search gallery).
    """
    rng = _rng(_STREAM_SYSU, seed)
    pids = rng.permutation(np.arange(1, num_ids + 1))
    test = sorted(int(p) for p in pids[:n_test])
    val = sorted(int(p) for p in pids[n_test:n_test + n_val])
    train = sorted(int(p) for p in pids[n_test + n_val:])
    cams = {}
    for pid in range(1, num_ids + 1):
        r = _rng(_STREAM_SYSU, seed, pid)
        vis = [c for c in SYSU_VISIBLE_CAMS if r.random() < 0.75]
        if pid in test and not ({1, 2} & set(vis)):
            vis.append(int(r.choice([1, 2])))
        if not vis:
            vis.append(int(r.choice(SYSU_VISIBLE_CAMS)))
        thr = [c for c, p in ((3, 0.6), (6, 0.85)) if r.random() < p]
        if not thr:
            thr.append(int(r.choice(SYSU_THERMAL_CAMS)))
        cams[pid] = {c: int(r.integers(4, 7)) for c in sorted(vis + thr)}
    return train, val, test, cams


def make_sysu_demo(root, num_ids=40, seed=0, img_w=64, img_h=128, n_val=4, n_test=12,
                   force=False, workers=1):
    """Write a raw SYSU-MM01-layout demo dataset to ``root`` and return ``root``.

    ``root/cam{1..6}/<pid:04d>/<n:04d>.jpg`` (cams 1, 2, 4, 5 visible; 3, 6
    thermal, stored as a mix of 1-channel 'L' and 3-channel JPEGs), and
    ``root/exp/{train,val,test}_id.txt``, each one comma-separated line of
    1-based ids (default 24 / 4 / 12).  Image size differs a little between
    cameras; visible cameras have their own background tint.
    """
    if n_val < 0 or n_test < 1 or n_val + n_test >= num_ids:
        raise ValueError(f"need n_test >= 1, n_val >= 0 and n_val + n_test < num_ids, got n_test {n_test}, "
                         f"n_val {n_val}, num_ids {num_ids}")
    _check_size(img_w, img_h)
    params = {"layout": "sysu", "version": GENERATOR_VERSION, "num_ids": int(num_ids),
              "seed": int(seed), "img_w": int(img_w), "img_h": int(img_h),
              "n_val": int(n_val), "n_test": int(n_test)}

    def writer(out):
        ids = draw_identities(num_ids, seed)
        train, val, test, cams = sysu_plan(num_ids, seed, n_val, n_test)
        cam_rng = _rng(_STREAM_SYSU, seed, 0, 99)
        styles = {c: cam_rng.uniform(-25, 25, 3) for c in range(1, 7)}
        for c in range(1, 7):
            os.makedirs(os.path.join(out, f"cam{c}"))
        jobs = []
        for a in ids:
            pid = a["pid"]
            for c, n in cams[pid].items():
                thermal = c in SYSU_THERMAL_CAMS
                w = int(round(img_w * _SYSU_CAM_SCALE[c]))
                h = int(round(img_h * _SYSU_CAM_SCALE[c]))
                d = os.path.join(out, f"cam{c}", f"{pid:04d}")
                os.makedirs(d)
                jobs += [(os.path.join(d, f"{k:04d}.jpg"), a,
                          "thermal" if thermal else "visible",
                          (_STREAM_IMAGE, seed, pid, 10 + c, k), w, h,
                          None if thermal else styles[c], thermal)
                         for k in range(1, n + 1)]
        _run_jobs(jobs, workers)
        os.makedirs(os.path.join(out, "exp"))
        for name, lst in (("train", train), ("val", val), ("test", test)):
            with open(os.path.join(out, "exp", f"{name}_id.txt"), "w") as f:
                f.write(",".join(str(p) for p in lst) + "\n")
        with open(os.path.join(out, "identities.json"), "w") as f:
            json.dump(ids, f, indent=0, sort_keys=True)

    return _build_atomically(root, params, writer, force)


# --------------------------------------------------------------------------
# LLCM layout
# --------------------------------------------------------------------------

def _shuffled(rng, items):
    """A random order of ``items`` that is not the sorted one (when there are two or more)."""
    out = [items[i] for i in rng.permutation(len(items))]
    if len(out) > 1 and out == sorted(out):
        out[0], out[1] = out[1], out[0]
    return out


def llcm_plan(num_ids, seed):
    """Identities, orders and cameras of the LLCM demo.

    Returns (pids, test_order, train_order, cams): ``pids`` sorted, with a few
    gaps like the real set's; the test identities are the pids divisible by 3,
    listed in ``test_order`` (the unsorted order of idx/test_id.txt); the others
    train, ``train_order[label]`` being the pid of each label (first-appearance
    order, not sorted by pid); ``cams[pid]`` maps "visible" / "thermal" to
    {camera: number of images (2..4)}.  Every identity has 1-3 cameras per
    modality; a camera records one modality per identity (as in the real set),
    except the first test identity, which has two cameras in each modality and
    one camera in both (so the same-identity same-camera exclusion applies).
    """
    if num_ids < 6:
        raise ValueError(f"num_ids must be >= 6 (test ids are those divisible by 3), got {num_ids}")
    rng = _rng(_STREAM_LLCM, seed)
    n_gaps = max(1, num_ids // 10)
    top = num_ids + n_gaps
    gaps = set(int(g) for g in rng.choice(np.arange(1, top), n_gaps, replace=False))
    pids = [p for p in range(top) if p not in gaps]
    test = [p for p in pids if p % 3 == 0]
    train = [p for p in pids if p % 3]
    cams = {}
    for pid in pids:
        r = _rng(_STREAM_LLCM, seed, pid)
        vis = [int(c) for c in r.choice(LLCM_VISIBLE_CAMS, r.choice([1, 2, 3], p=[0.6, 0.3, 0.1]), replace=False)]
        free = [c for c in LLCM_NIR_CAMS if c not in vis]
        nir = [int(c) for c in r.choice(free, r.choice([1, 2, 3], p=[0.4, 0.45, 0.15]), replace=False)]
        if pid == test[0]:
            vis = [int(c) for c in r.choice(LLCM_NIR_CAMS, 2, replace=False)]  # both have a NIR camera
            free = [c for c in LLCM_NIR_CAMS if c not in vis]
            nir = [vis[0], int(r.choice(free))]
        cams[pid] = {mod: {c: int(r.integers(2, 5)) for c in sorted(lst)}
                     for mod, lst in (("visible", vis), ("thermal", nir))}
    return pids, _shuffled(rng, test), _shuffled(rng, train), cams


def _llcm_names(pid, cam, n, mod, rng):
    """File names of one identity's passage in front of one camera: PPPP_cNN_sHHMMSS_fF_vis.jpg
    (frames of varying digit counts, so string order differs from numeric order)."""
    hour = int(rng.choice([6, 7, 16, 17, 18, 19, 20, 21, 22]))
    stamp = f"{hour:02d}{int(rng.integers(60)):02d}{int(rng.integers(60)):02d}"
    frames = sorted(int(f) for f in rng.choice(np.arange(10, 100000), n, replace=False))
    tag = "vis" if mod == "visible" else "nir"
    return [f"{pid:04d}_c{cam:02d}_s{stamp}_f{f}_{tag}.jpg" for f in frames]


def make_llcm_demo(root, num_ids=30, seed=0, img_w=64, img_h=128, force=False, workers=1):
    """Write an LLCM-layout demo dataset to ``root`` and return ``root``.

    ``root/vis/PPPP/PPPP_cNN_sHHMMSS_fF_vis.jpg`` and ``root/nir/PPPP/..._nir.jpg``
    for every identity; the test identities' images again under
    ``root/test_vis/camN/PPPP/`` (N = 1..9) and ``root/test_nir/camN/PPPP/``
    (N = 1, 2, 4..9); ``root/idx/train_{vis,nir}.txt`` and
    ``root/idx/test_{vis,nir}.txt`` (lines ``<vis|nir>/PPPP/<file> <label>``,
    labels 0..C-1 in first-appearance order, the same for an identity in both
    lists) and ``root/idx/test_id.txt`` (one unsorted line of comma-separated
    4-digit ids, no newline).  See :func:`llcm_plan` for the identities and
    cameras.  Near-infrared images are rendered by the thermal renderer and
    stored as 3-channel JPEGs.
    """
    params = {"layout": "llcm", "version": GENERATOR_VERSION, "llcm_version": LLCM_LAYOUT_VERSION,
              "num_ids": int(num_ids), "seed": int(seed), "img_w": int(img_w), "img_h": int(img_h)}
    _check_size(img_w, img_h)
    pids, test_order, train_order, cams = llcm_plan(num_ids, seed)

    def writer(out):
        ids = {a["pid"]: a for a in draw_identities(pids[-1] + 1, seed, first_pid=0)}
        cam_rng = _rng(_STREAM_LLCM, seed, 0, 99)
        styles = {c: cam_rng.uniform(-25, 25, 3) for c in LLCM_VISIBLE_CAMS}
        folders = {"visible": ("vis", "test_vis", LLCM_VISIBLE_CAMS), "thermal": ("nir", "test_nir", LLCM_NIR_CAMS)}
        files = {}  # (pid, modality) -> [(camera, name)]
        jobs = []
        for pid in pids:
            for code, (mod, (top, _, _)) in enumerate(folders.items(), 1):
                os.makedirs(os.path.join(out, top, f"{pid:04d}"))
                entries = []
                for cam, n in cams[pid][mod].items():
                    names = _llcm_names(pid, cam, n, mod, _rng(_STREAM_LLCM, seed, pid, code, cam))
                    w = int(round(img_w * _LLCM_CAM_SCALE[cam]))
                    h = int(round(img_h * _LLCM_CAM_SCALE[cam]))
                    jobs += [(os.path.join(out, top, f"{pid:04d}", name), ids[pid], mod,
                              (_STREAM_LLCM, seed, pid, code, cam, k), w, h,
                              styles[cam] if mod == "visible" else None, False)
                             for k, name in enumerate(names, 1)]
                    entries += [(cam, name) for name in names]
                files[pid, mod] = entries
        _run_jobs(jobs, workers)
        for mod, (top, test_top, cam_list) in folders.items():
            for cam in cam_list:
                os.makedirs(os.path.join(out, test_top, f"cam{cam}"))
            for pid in test_order:
                for cam, name in files[pid, mod]:
                    d = os.path.join(out, test_top, f"cam{cam}", f"{pid:04d}")
                    os.makedirs(d, exist_ok=True)
                    shutil.copyfile(os.path.join(out, top, f"{pid:04d}", name), os.path.join(d, name))
        _write_llcm_lists(out, files, train_order, test_order)
        with open(os.path.join(out, "identities.json"), "w") as f:
            json.dump([ids[pid] for pid in pids], f, indent=0, sort_keys=True)

    return _build_atomically(root, params, writer, force)


def _write_llcm_lists(out, files, train_order, test_order):
    """idx/{train,test}_{vis,nir}.txt (labels in first-appearance order) and idx/test_id.txt."""
    os.makedirs(os.path.join(out, "idx"))
    for part, order in (("train", train_order), ("test", test_order)):
        for mod, tag in (("visible", "vis"), ("thermal", "nir")):
            with open(os.path.join(out, "idx", f"{part}_{tag}.txt"), "w") as f:
                f.writelines(f"{tag}/{pid:04d}/{name} {label}\n"
                             for label, pid in enumerate(order) for _, name in files[pid, mod])
    with open(os.path.join(out, "idx", "test_id.txt"), "w") as f:
        f.write(",".join(f"{pid:04d}" for pid in test_order))


# --------------------------------------------------------------------------
# contact sheet / CLI
# --------------------------------------------------------------------------

def contact_sheet(num_ids=12, per_modality=4, seed=0, img_w=64, img_h=128, path=None):
    """Grid image: one row per identity, visible images then thermal images."""
    ids = draw_identities(num_ids, seed)
    gap = 4
    cols = 2 * per_modality
    sheet = np.full((num_ids * (img_h + gap), cols * (img_w + gap) + gap * 2, 3), 255, np.uint8)
    for r, a in enumerate(ids):
        for j in range(cols):
            mod = "visible" if j < per_modality else "thermal"
            k = j % per_modality + 1
            img = render_person(a, mod, _rng(_STREAM_IMAGE, seed, a["pid"], 1 if mod == "visible" else 2, k),
                                img_w, img_h)
            x = j * (img_w + gap) + (gap * 2 if mod == "thermal" else 0)
            sheet[r * (img_h + gap):r * (img_h + gap) + img_h, x:x + img_w] = img
    if path is not None:
        _save_png(sheet, path)
    return sheet


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="output folder")
    p.add_argument("--layout", choices=("regdb", "sysu", "llcm"), default="regdb")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_ids", type=int, default=None,
                   help="identities (default 120 for regdb, 40 for sysu, 30 for llcm)")
    p.add_argument("--imgs_per_id", type=int, default=10, help="regdb: images per id per modality")
    p.add_argument("--num_splits", "--num_trials", type=int, default=10,
                   help="regdb: number of train/test splits (--num_trials: its former name)")
    p.add_argument("--n_val", type=int, default=4, help="sysu: validation identities")
    p.add_argument("--n_test", type=int, default=12, help="sysu: test identities")
    p.add_argument("--img_w", type=int, default=64)
    p.add_argument("--img_h", type=int, default=128)
    p.add_argument("--force", action="store_true", help="regenerate even if up to date")
    p.add_argument("--workers", type=int, default=0,
                   help="rendering processes (0: one per CPU); output does not depend on it")
    p.add_argument("--sheet", default=None, help="also write a contact sheet PNG here")
    args = p.parse_args(argv)
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0 (0: one per CPU), got {args.workers}")
    t0 = time.time()
    if args.layout == "regdb":
        root = make_regdb_demo(args.root, num_ids=args.num_ids or 120,
                               imgs_per_id=args.imgs_per_id, seed=args.seed, img_w=args.img_w,
                               img_h=args.img_h, num_splits=args.num_splits, force=args.force,
                               workers=args.workers)
    elif args.layout == "llcm":
        root = make_llcm_demo(args.root, num_ids=args.num_ids or 30, seed=args.seed, img_w=args.img_w,
                              img_h=args.img_h, force=args.force, workers=args.workers)
    else:
        root = make_sysu_demo(args.root, num_ids=args.num_ids or 40, seed=args.seed,
                              img_w=args.img_w, img_h=args.img_h, n_val=args.n_val,
                              n_test=args.n_test, force=args.force, workers=args.workers)
    if args.sheet:
        contact_sheet(seed=args.seed, img_w=args.img_w, img_h=args.img_h, path=args.sheet)
    print(f"{args.layout} demo dataset ready at {root} ({time.time() - t0:.1f}s)")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:  # refusals and bad parameters: one line, no traceback
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted")
