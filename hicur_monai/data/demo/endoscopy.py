"""Synthetic nasopharyngoscopy frames with free-text reports and ground-truth sidecars.

Every frame is drawn from a findings grid (region x finding -> present / uncertain /
absent, see :mod:`hicur_monai.data.nasopharynx`); the report is then *written* from the
same grid in varied wording, and the grid is saved next to it as the ground truth. So the
picture, the text and the sidecar agree by construction, and a report parser can be
scored against the sidecars.

The view is the one a flexible scope gives looking backwards through the choanae: a
dark, vignetted circular field; the roof at the top, the posterior wall in the middle,
the lateral walls (with the torus tubarius and the Eustachian orifice) at the sides (the
patient's left on the image's left, as the scope looks the way the patient faces) and
the dark airway leading down at the bottom. :func:`region_masks` gives those regions as
boolean masks.

The wording below belongs to this generator only. The report parser
(:mod:`hicur_monai.data.reports`) keeps its own patterns in YAML and never imports these
lists, so scoring the parser on these reports is not circular.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hicur_monai.data.nasopharynx import FINDINGS, MAIN_REGIONS, category_from_grid, empty_grid
from hicur_monai.utils.io import atomic_open, atomic_write_json, atomic_write_text

__all__ = ["generate_endoscopy", "region_masks", "sample_findings", "render_frame", "write_frame", "write_report"]

# ----------------------------------------------------------------------------- geometry
_FIELD_RADIUS = 0.94  # circular field of view, in normalised coordinates [-1, 1]
_ROOF_BOTTOM = -0.35  # v below this is the roof
_LATERAL = 0.42  # |u| above this (below the roof) is a lateral wall
_LUMEN_TOP = 0.28  # v above this in the centre is the airway, not the posterior wall

_MUCOSA = np.array([0.80, 0.47, 0.45])
_FINDING_COLORS = {
    "congestion": np.array([0.74, 0.16, 0.18]),
    "swelling": np.array([0.93, 0.66, 0.62]),
    "neoplasm": np.array([0.93, 0.80, 0.76]),
    "secretion": np.array([0.90, 0.82, 0.40]),
    "ulceration": np.array([0.93, 0.90, 0.76]),
    "bleeding": np.array([0.45, 0.03, 0.05]),
}


@functools.lru_cache(maxsize=4)
def _grid_uv(size: int) -> tuple[np.ndarray, np.ndarray]:
    ax = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    v, u = np.meshgrid(ax, ax, indexing="ij")
    return u, v


@functools.lru_cache(maxsize=4)
def _vignette(size: int) -> np.ndarray:
    """The dark airway at the bottom centre, light falloff from the scope tip and the black surround."""
    u, v = _grid_uv(size)
    r = np.sqrt(u**2 + v**2)
    lumen = np.exp(-(((u / 0.42) ** 2) + (((v - 0.62) / 0.33) ** 2)) * 1.6)
    light = 0.55 + 0.55 * np.exp(-(r**2) / 0.55)
    field = np.clip((_FIELD_RADIUS - r) / 0.04, 0.0, 1.0)
    return ((1.0 - 0.85 * lumen) * light * field).astype(np.float32)[..., None]


def region_masks(size: int = 384) -> dict[str, np.ndarray]:
    """Boolean masks (``size x size``) of the four walls in a generated frame, plus ``"airway"``."""
    u, v = _grid_uv(size)
    field = u**2 + v**2 < (_FIELD_RADIUS * 0.97) ** 2
    roof = field & (v < _ROOF_BOTTOM)
    below = field & (v >= _ROOF_BOTTOM)
    left = below & (u < -_LATERAL)
    right = below & (u > _LATERAL)
    centre = below & (np.abs(u) <= _LATERAL)
    airway = centre & (v >= _LUMEN_TOP)
    return {"left_wall": left, "right_wall": right, "roof": roof,
            "posterior_wall": centre & ~airway, "airway": airway}


@functools.lru_cache(maxsize=4)
def _soft_masks(size: int) -> dict[str, np.ndarray]:
    """Region masks with blurred borders (float in [0, 1]) so that tints fade out between walls."""
    out = {}
    for name, mask in region_masks(size).items():
        img = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(size / 40))
        out[name] = np.asarray(img, dtype=np.float32) / 255.0
    return out


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] (a small random grid upsampled bicubically)."""
    small = (rng.random((cells, cells)) * 255).astype(np.uint8)
    big = Image.fromarray(small).resize((size, size), Image.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 255.0


def _to_px(size: int, u: float, v: float) -> tuple[float, float]:
    return ((u + 1.0) / 2.0 * size, (v + 1.0) / 2.0 * size)


class _Patch:
    """An alpha map covering ``[y0:y0+h, x0:x0+w]`` of the frame (drawing on crops keeps rendering fast)."""

    def __init__(self, alpha: np.ndarray, y0: int, x0: int):
        self.alpha, self.y0, self.x0 = alpha, y0, x0

    @property
    def window(self) -> tuple[slice, slice]:
        h, w = self.alpha.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)

    def clip_to(self, mask: np.ndarray) -> _Patch:
        return _Patch(self.alpha * mask[self.window], self.y0, self.x0)

    def scaled(self, k: float) -> _Patch:
        return _Patch(self.alpha * k, self.y0, self.x0)


def _blob(rng: np.random.Generator, size: int, cu: float, cv: float, radius: float,
          irregular: float = 0.25, blur: float = 2.0) -> _Patch:
    """A soft irregular blob centred at ``(cu, cv)`` (normalised coordinates)."""
    n = 40
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    wobble = sum(rng.uniform(-1, 1) * np.cos(k * angles + rng.uniform(0, 2 * np.pi)) / k ** 0.7
                 for k in range(2, 7))
    radii = radius * np.clip(1.0 + irregular * wobble, 0.3, None)
    pts = np.array([_to_px(size, cu + r * np.cos(a), cv + r * 0.8 * np.sin(a)) for a, r in zip(angles, radii)])
    pad = int(3 * blur) + 2
    x0 = int(np.clip(np.floor(pts[:, 0].min()) - pad, 0, size - 1))
    y0 = int(np.clip(np.floor(pts[:, 1].min()) - pad, 0, size - 1))
    x1 = int(np.clip(np.ceil(pts[:, 0].max()) + pad, x0 + 1, size))
    y1 = int(np.clip(np.ceil(pts[:, 1].max()) + pad, y0 + 1, size))
    img = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(img).polygon([(x - x0, y - y0) for x, y in pts], fill=255)
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return _Patch(np.asarray(img, dtype=np.float32) / 255.0, y0, x0)


def _vessels(rng: np.random.Generator, size: int, mask: np.ndarray, n: int) -> np.ndarray:
    """Thin tortuous vessel-like lines (alpha map) that start inside ``mask``."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros((size, size), np.float32)
    for _ in range(n):
        i = rng.integers(len(xs))
        x, y = float(xs[i]), float(ys[i])
        heading = rng.uniform(0, 2 * np.pi)
        pts = [(x, y)]
        for _step in range(rng.integers(6, 14)):
            heading += rng.normal(0, 0.6)
            step = rng.uniform(4, 10) * size / 384
            x, y = x + step * np.cos(heading), y + step * np.sin(heading)
            pts.append((x, y))
        draw.line(pts, fill=int(rng.integers(170, 255)), width=int(rng.integers(1, 3)))
    return np.asarray(img, dtype=np.float32) / 255.0


def _region_centre(rng: np.random.Generator, region: str) -> tuple[float, float]:
    if region == "roof":
        return rng.uniform(-0.3, 0.3), rng.uniform(-0.72, -0.52)
    if region == "left_wall":
        return rng.uniform(-0.78, -0.62), rng.uniform(-0.15, 0.3)
    if region == "right_wall":
        return rng.uniform(0.62, 0.78), rng.uniform(-0.15, 0.3)
    return rng.uniform(-0.18, 0.18), rng.uniform(-0.22, 0.05)  # posterior wall


def _paint(img: np.ndarray, patch: _Patch, color: np.ndarray) -> None:
    """Alpha-blend ``color`` (RGB, or an RGB map of the frame's size) into ``img`` in place."""
    win = patch.window
    a = np.clip(patch.alpha, 0.0, 1.0)[..., None]
    col = color[win] if color.ndim == 3 else color
    img[win] = img[win] * (1.0 - a) + col * a


def render_frame(grid: dict[str, dict[str, str]], rng: np.random.Generator, size: int = 384) -> np.ndarray:
    """Draw one endoscopic frame (``uint8``, ``size x size x 3``) showing the findings in ``grid``.

    ``"present"`` findings are drawn at full strength, ``"uncertain"`` ones faintly.
    """
    u, v = _grid_uv(size)
    masks = region_masks(size)
    fmask = _soft_masks(size)
    whole = _Patch(np.ones((size, size), np.float32), 0, 0)

    # mucosa: pink with low-frequency colour variation and fine texture
    tone = _smooth_noise(rng, size, 7)[..., None]
    fine = _smooth_noise(rng, size, 48)[..., None]
    img = (_MUCOSA + (tone - 0.5) * np.array([0.10, 0.08, 0.08]) + (fine - 0.5) * 0.05).astype(np.float32)
    img += rng.normal(0, 0.01, 3).astype(np.float32)  # per-frame white balance

    # torus tubarius (pale ridge) and Eustachian orifice (dark slit) on both lateral walls
    for side in (-1.0, 1.0):
        _paint(img, _blob(rng, size, side * 0.74, -0.12, 0.13, irregular=0.1, blur=6).scaled(0.45),
               np.array([0.90, 0.62, 0.58]))
        _paint(img, _blob(rng, size, side * 0.58, 0.08, 0.05, irregular=0.2, blur=3).scaled(0.7),
               np.array([0.30, 0.10, 0.10]))

    white = np.ones(3, np.float32)
    for region in MAIN_REGIONS:
        rmask = fmask[region]
        for finding in FINDINGS:
            status = grid.get(region, {}).get(finding, "absent")
            if status == "absent":
                continue
            k = 1.0 if status == "present" else 0.5
            cu, cv = _region_centre(rng, region)
            if finding == "congestion":
                tint = whole.clip_to(rmask * (0.55 + 0.35 * _smooth_noise(rng, size, 6)))
                _paint(img, tint.scaled(k), _FINDING_COLORS["congestion"])
                vessels = whole.clip_to(rmask * _vessels(rng, size, masks[region], n=14))
                _paint(img, vessels.scaled(0.8 * k), np.array([0.45, 0.02, 0.06]))
            elif finding == "swelling":
                bulge = _blob(rng, size, cu, cv, rng.uniform(0.2, 0.28), irregular=0.1, blur=10).clip_to(rmask)
                _paint(img, bulge.scaled(0.7 * k), _FINDING_COLORS["swelling"])
                img[bulge.window] *= 1.0 + k * 0.25 * bulge.alpha[..., None]
                _paint(img, _blob(rng, size, cu - 0.04, cv - 0.05, 0.035, 0.2, 3).clip_to(rmask).scaled(0.8 * k),
                       white)
            elif finding == "neoplasm":
                mass = _blob(rng, size, cu, cv, rng.uniform(0.14, 0.22), irregular=0.45, blur=1.5).clip_to(rmask)
                halo = _blob(rng, size, cu, cv, 0.24, irregular=0.3, blur=6).clip_to(rmask)
                _paint(img, halo.scaled(0.4 * k), np.array([0.78, 0.30, 0.32]))
                bumps = (0.75 + 0.5 * _smooth_noise(rng, size, 40))[..., None] * _FINDING_COLORS["neoplasm"]
                _paint(img, mass.scaled(0.9 * k), bumps.astype(np.float32))
            elif finding == "secretion":
                for _ in range(rng.integers(2, 5)):
                    du, dv = rng.normal(0, 0.08, 2)
                    drop = _blob(rng, size, cu + du, cv + dv, rng.uniform(0.04, 0.09), irregular=0.3)
                    _paint(img, drop.clip_to(rmask).scaled(0.9 * k), _FINDING_COLORS["secretion"])
                    glint = _blob(rng, size, cu + du - 0.015, cv + dv - 0.015, 0.012, blur=1)
                    _paint(img, glint.clip_to(rmask).scaled(k), white)
            elif finding == "ulceration":
                rim = _blob(rng, size, cu, cv, 0.13, irregular=0.4, blur=3).clip_to(rmask)
                base = _blob(rng, size, cu, cv, rng.uniform(0.06, 0.1), irregular=0.5, blur=1.5).clip_to(rmask)
                _paint(img, rim.scaled(0.8 * k), np.array([0.68, 0.12, 0.12]))
                _paint(img, base.scaled(0.9 * k), _FINDING_COLORS["ulceration"])
            elif finding == "bleeding":
                clot = _blob(rng, size, cu, cv, rng.uniform(0.05, 0.09), irregular=0.4).clip_to(rmask)
                _paint(img, clot.scaled(0.95 * k), _FINDING_COLORS["bleeding"])
                for j in range(3):  # a streak running down from the clot
                    drip = _blob(rng, size, cu + rng.normal(0, 0.01), cv + 0.06 + 0.05 * j, 0.025, 0.2, 2)
                    _paint(img, drip.clip_to(rmask).scaled(0.9 * k), _FINDING_COLORS["bleeding"])

    # specular glints on moist mucosa
    for _ in range(rng.integers(3, 7)):
        gu, gv = rng.uniform(-0.6, 0.6, 2)
        _paint(img, _blob(rng, size, gu, gv * 0.7, rng.uniform(0.008, 0.02), blur=1.5).scaled(0.8), white)

    # the dark airway at the bottom centre, light falloff from the scope tip, black surround
    img *= _vignette(size)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.008)  # sensor noise
    out = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return np.asarray(out.filter(ImageFilter.GaussianBlur(0.6)))


# ----------------------------------------------------------------------------- findings
def sample_findings(rng: np.random.Generator) -> dict[str, dict[str, str]]:
    """Draw a plausible findings grid (normal, inflammation, neoplasm or suspected neoplasm)."""
    grid = empty_grid()
    kind = rng.choice(["normal", "inflammation", "neoplasm", "suspected"], p=[0.22, 0.36, 0.28, 0.14])

    def regions_subset() -> list[str]:
        if rng.random() < 0.45:
            return ["left_wall", "right_wall"]
        k = int(rng.integers(1, 4))
        return list(rng.choice(MAIN_REGIONS, size=k, replace=False))

    if kind == "inflammation":
        for f in rng.choice(["congestion", "swelling", "secretion"], size=int(rng.integers(1, 4)), replace=False):
            for reg in regions_subset():
                grid[reg][f] = "present"
        if rng.random() < 0.1:
            grid[str(rng.choice(MAIN_REGIONS))]["bleeding"] = "present"
        if rng.random() < 0.12:
            grid[str(rng.choice(MAIN_REGIONS))]["ulceration"] = "uncertain"
    elif kind in ("neoplasm", "suspected"):
        site = str(rng.choice(MAIN_REGIONS, p=[0.25, 0.25, 0.25, 0.25]))
        grid[site]["neoplasm"] = "present" if kind == "neoplasm" else "uncertain"
        if kind == "neoplasm":
            if rng.random() < 0.25:
                other = str(rng.choice([r for r in MAIN_REGIONS if r != site]))
                grid[other]["neoplasm"] = "present"
            if rng.random() < 0.35:
                grid[site]["ulceration"] = "present"
            if rng.random() < 0.25:
                grid[site]["bleeding"] = "present"
        if rng.random() < 0.4:
            for reg in regions_subset():
                grid[reg]["congestion"] = "present"
        if rng.random() < 0.3:
            grid[str(rng.choice(MAIN_REGIONS))]["swelling"] = "present"
        if rng.random() < 0.2:
            grid[str(rng.choice(MAIN_REGIONS))]["secretion"] = "present"
    return grid


# ----------------------------------------------------------------------------- wording
# This generator's own phrasing. Not shared with the parser's YAML patterns.
_REGION_WORDS = {
    "left_wall": ["left wall", "left lateral wall", "left side wall", "left nasopharyngeal wall",
                  "left pharyngeal recess", "left fossa of Rosenmüller", "left torus region"],
    "right_wall": ["right wall", "right lateral wall", "right side wall", "right nasopharyngeal wall",
                   "right pharyngeal recess", "right fossa of Rosenmüller", "right torus region"],
    "roof": ["roof", "top wall", "vault", "superior wall", "roof of the nasopharynx", "nasopharyngeal vault"],
    "posterior_wall": ["posterior wall", "back wall", "posterior nasopharyngeal wall", "back of the nasopharynx"],
}
_BILATERAL_WORDS = ["both lateral walls", "the bilateral walls", "the left and right walls",
                    "both side walls", "the lateral walls bilaterally", "the two lateral walls"]
_ADJ = {"congestion": ["congested", "hyperaemic", "red and congested", "hyperemic", "reddened", "engorged"],
        "swelling": ["swollen", "oedematous", "edematous", "puffy and swollen", "boggy"]}
_NOUN = {
    "congestion": ["congestion", "mucosal hyperaemia", "hyperemia", "marked congestion"],
    "swelling": ["swelling", "oedema", "mucosal edema", "swelling of the mucosa"],
    "neoplasm": ["a neoplasm", "a mass", "a new growth", "an exophytic mass", "a cauliflower-like new growth",
                 "a lobulated mass", "a neoplastic lesion", "a tumour", "an irregular nodular mass"],
    "ulceration": ["ulceration", "an ulcer", "superficial ulceration", "an ulcerated area", "an erosion"],
    "secretion": ["purulent discharge", "mucopurulent secretions", "secretions", "thick yellow secretion",
                  "pus", "mucoid discharge"],
    "bleeding": ["bleeding", "haemorrhage", "contact bleeding", "fresh blood", "oozing of blood",
                 "a blood clot", "active haemorrhage"],
}
_NEG_NOUN = {
    "congestion": ["congestion", "hyperaemia"],
    "swelling": ["swelling", "oedema"],
    "neoplasm": ["neoplasm", "new growth", "mass", "neoplastic lesion"],
    "ulceration": ["ulceration", "ulcer"],
    "secretion": ["secretion", "purulent discharge", "discharge"],
    "bleeding": ["bleeding", "haemorrhage", "blood"],
}
_SEEN = ["is seen", "is noted", "was observed", "is visible", "is present"]
_SEEN_PL = ["are seen", "are noted", "were observed", "are visible", "are present"]
_PREP = ["on", "at", "in", "over"]
_UNCERTAIN_NEOPLASM = [
    "The {R} shows irregular mucosa, suspicious for {N}.",
    "{N_cap} of the {R} cannot be excluded.",
    "Possible {n} at the {R}.",
    "A questionable {n} is seen on the {R}.",
    "{R_cap}: ? {n}, to be confirmed.",
    "Slightly raised area on the {R}, suspicious for {N}.",
    "The {R} shows an area that may represent {N}.",
    "Query {n}, {R}.",
]
_UNCERTAIN_OTHER = [
    "Possible {n} on the {R}.",
    "{N_cap} of the {R} cannot be ruled out.",
    "Questionable {n} at the {R}.",
    "Equivocal {n} on the {R}.",
]
_SMOOTH = [
    "The {R} is smooth.", "{R_cap} mucosa smooth.", "The mucosa of the {R} is smooth and intact.",
    "{R_cap}: unremarkable.", "The {R} looks normal.",
]
_GLOBAL_NORMAL = [
    "The nasopharyngeal mucosa is smooth and symmetrical.",
    "Nasopharynx symmetrical with smooth mucosa throughout.",
    "All walls of the nasopharynx appear normal.",
]
_GLOBAL_NEG = [
    "No {a} seen.", "No obvious {a} or {b}.", "There is no evidence of {a}.",
    "Negative for {a}.", "Neither {a} nor {b} is seen.", "No {a} was found.",
    "{a_cap} is not seen.", "No sign of {a} or {b}.",
]
_REGION_NEG = [
    "The {R} is smooth without {a}.", "The {R} shows no {a}.", "{R_cap}: no {a}.",
    "No {a} on the {R}.",
]
_PREAMBLE = [
    "The scope was introduced through the {side} nostril.",
    "Flexible endoscope passed via the {side} nasal passage after topical anaesthesia.",
    "Examination performed under local anaesthesia; the patient tolerated it well.",
    "Nasal cavity: septum roughly midline, turbinates unremarkable.",
    "",
]
_HEADER = ["NASOPHARYNGOSCOPY REPORT", "Electronic nasopharyngoscopy", "Flexible nasoendoscopy", ""]
_SECTION = ["Findings:", "Endoscopic findings:", "Description:", ""]
_IMPRESSION_KEY = ["Impression:", "Diagnosis:", "Conclusion:", "Endoscopic diagnosis:"]
_IMPRESSION = {
    "normal": ["Normal nasopharynx.", "No abnormality detected in the nasopharynx.",
               "Unremarkable nasopharyngoscopy."],
    "inflammation": ["Chronic nasopharyngitis.", "Nasopharyngeal inflammation.",
                     "Inflammatory changes of the nasopharynx.", "Nasopharyngitis."],
    "suspected_neoplasm": ["Nasopharyngeal lesion, suspicious for carcinoma; biopsy advised.",
                           "? Nasopharyngeal neoplasm, to be confirmed by biopsy.",
                           "Nasopharyngeal carcinoma cannot be ruled out; histology needed."],
    "neoplasm": ["Nasopharyngeal neoplasm, carcinoma likely.", "Nasopharyngeal mass consistent with carcinoma.",
                 "New growth of the nasopharynx; histological confirmation recommended.",
                 "Nasopharyngeal carcinoma (endoscopic appearance)."],
}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _strip_article(s: str) -> str:
    for art in ("a ", "an "):
        if s.startswith(art):
            return s[len(art):]
    return s


def _join(items: list[str], conj: str = "and") -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + f" {conj} " + items[-1]


def _present_sentence(rng: np.random.Generator, region_np: str, plural: bool, findings: list[str]) -> str:
    """One sentence stating that ``findings`` are present on the region(s) ``region_np`` (with its article)."""
    adjs = [f for f in findings if f in _ADJ]
    others = [f for f in findings if f not in _ADJ]
    style = int(rng.integers(4))
    if style == 0 and adjs:
        verb = _pick(rng, ["are", "appear"] if plural else ["is", "appears", "looks"])
        s = f"{region_np} {verb} " + _join([_pick(rng, _ADJ[f]) for f in adjs])
        if others:
            s += ", with " + _join([_pick(rng, _NOUN[f]) for f in others])
        return _cap(s) + "."
    nouns = [_pick(rng, _NOUN[f]) for f in findings]
    if style == 1:
        seen = _pick(rng, _SEEN_PL if len(nouns) > 1 else _SEEN)
        return _cap(_join(nouns)) + f" {seen} {_pick(rng, _PREP)} {region_np}."
    if style == 2:
        return _cap(region_np.removeprefix("the ")) + ": " + ", ".join(_strip_article(n) for n in nouns) + "."
    return f"There is {_join(nouns)} {_pick(rng, _PREP)} {region_np}."


def write_report(grid: dict[str, dict[str, str]], rng: np.random.Generator) -> tuple[str, dict]:
    """Write a free-text report for ``grid``.

    The parts are drawn in a fixed order (preamble, findings, normal regions, negations,
    sentence order, impression): the same ``rng`` state gives the same report.

    Returns:
        ``(text, truth)`` where ``truth`` holds the grid, the explicitly negated
        ``(region, finding)`` pairs, the regions called smooth/normal and the impression.
    """
    lines = _report_preamble(rng)
    present = {r: [f for f in FINDINGS if grid[r][f] == "present"] for r in MAIN_REGIONS}
    uncertain = {r: [f for f in FINDINGS if grid[r][f] == "uncertain"] for r in MAIN_REGIONS}
    body = _finding_sentences(rng, present, uncertain)
    normal, smooth = _normal_sentences(rng, present, uncertain)
    negations, negated = _negation_sentences(rng, grid, present, uncertain)
    body += normal + negations

    if len(body) > 1:  # vary the order, keeping the picture the same
        order = rng.permutation(len(body))
        body = [body[i] for i in order]
    lines.append(" ".join(body))

    category = category_from_grid(grid)
    impression = _pick(rng, _IMPRESSION[category])
    lines.append(f"{_pick(rng, _IMPRESSION_KEY)} {impression}")
    truth = {
        "findings": grid,
        "negated": [list(p) for p in negated],
        "smooth": smooth,
        "impression": {"category": category, "text": impression},
    }
    return "\n".join(lines) + "\n", truth


def _report_preamble(rng: np.random.Generator) -> list[str]:
    """The optional header, preamble and section title lines."""
    lines: list[str] = []
    header = _pick(rng, _HEADER)
    if header:
        lines.append(header)
    pre = _pick(rng, _PREAMBLE).format(side=_pick(rng, ["left", "right"]))
    if pre:
        lines.append(pre)
    section = _pick(rng, _SECTION)
    if section:
        lines.append(section)
    return lines


def _finding_sentences(rng: np.random.Generator, present: dict[str, list[str]],
                       uncertain: dict[str, list[str]]) -> list[str]:
    """Sentences for present findings (identical lateral walls as one bilateral statement) and uncertain ones."""
    body: list[str] = []
    done: set[str] = set()
    if present["left_wall"] and present["left_wall"] == present["right_wall"] and rng.random() < 0.7:
        body.append(_present_sentence(rng, _pick(rng, _BILATERAL_WORDS), True, present["left_wall"]))
        done |= {"left_wall", "right_wall"}
    for r in MAIN_REGIONS:
        if r not in done and present[r]:
            body.append(_present_sentence(rng, "the " + _pick(rng, _REGION_WORDS[r]), False, present[r]))
    for r in MAIN_REGIONS:
        for f in uncertain[r]:
            n = _pick(rng, _NOUN[f])
            tmpl = _pick(rng, _UNCERTAIN_NEOPLASM if f == "neoplasm" else _UNCERTAIN_OTHER)
            rp = _pick(rng, _REGION_WORDS[r])
            body.append(tmpl.format(R=rp, R_cap=_cap(rp), N=n, N_cap=_cap(n), n=_strip_article(n)))
    return body


def _normal_sentences(rng: np.random.Generator, present: dict[str, list[str]],
                      uncertain: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """Regions with nothing: sometimes called smooth / normal. Returns the sentences and those regions."""
    body: list[str] = []
    smooth: list[str] = []
    clean = [r for r in MAIN_REGIONS if not present[r] and not uncertain[r]]
    if len(clean) == len(MAIN_REGIONS) and rng.random() < 0.6:
        body.append(_pick(rng, _GLOBAL_NORMAL))
        smooth.extend(clean)
    else:
        for r in clean:
            if rng.random() < 0.5:
                rp = _pick(rng, _REGION_WORDS[r])
                body.append(_pick(rng, _SMOOTH).format(R=rp, R_cap=_cap(rp)))
                smooth.append(r)
    return body, smooth


def _negation_sentences(rng: np.random.Generator, grid: dict[str, dict[str, str]], present: dict[str, list[str]],
                        uncertain: dict[str, list[str]]) -> tuple[list[str], list[tuple[str, str]]]:
    """Explicit negations: globally for findings absent everywhere, else per region.

    Returns the sentences and the negated ``(region, finding)`` pairs.
    """
    body: list[str] = []
    negated: list[tuple[str, str]] = []
    absent_everywhere = [f for f in FINDINGS if all(grid[r][f] == "absent" for r in MAIN_REGIONS)]
    rng.shuffle(absent_everywhere)
    if absent_everywhere and rng.random() < 0.8:
        prefer = [f for f in absent_everywhere if f in ("neoplasm", "ulceration", "bleeding")] or absent_everywhere
        chosen = prefer[:2] if rng.random() < 0.5 else prefer[:1]
        tmpl = _pick(rng, [t for t in _GLOBAL_NEG if ("{b}" in t) == (len(chosen) == 2)])
        words = [_pick(rng, _NEG_NOUN[f]) for f in chosen]
        body.append(tmpl.format(a=words[0], b=words[-1], a_cap=_cap(words[0])))
        negated.extend((r, f) for f in chosen for r in MAIN_REGIONS)
    for r in MAIN_REGIONS:
        if (present[r] or uncertain[r]) and rng.random() < 0.3:
            cands = [f for f in FINDINGS if grid[r][f] == "absent" and (r, f) not in negated]
            if cands:
                f = _pick(rng, cands)
                rp = _pick(rng, _REGION_WORDS[r])
                body.append(_pick(rng, _REGION_NEG).format(R=rp, R_cap=_cap(rp), a=_pick(rng, _NEG_NOUN[f])))
                negated.append((r, f))
    return body, negated


# ----------------------------------------------------------------------------- cohort
def generate_endoscopy(out_dir: Path, n_frames: int, seed: int, image_size: int = 384,
                       write_images: bool = True) -> list[dict]:
    """Write ``n_frames`` synthetic frames, reports and ground-truth sidecars under ``out_dir``.

    Files: ``endoscopy/<id>.png`` (RGB), ``reports/<id>.txt`` (free text),
    ``reports/<id>.json`` (ground truth: ``findings`` grid region -> finding -> status,
    ``negated`` pairs, ``smooth`` regions, ``impression``). Frame ``i`` depends only on
    ``(seed, i)``; its findings, picture and wording use separate random streams.

    Args:
        out_dir: cohort root; paths in the returned entries are relative to it.
        n_frames: number of frames (one patient each).
        seed: random seed.
        image_size: side of the square frames in pixels.
        write_images: ``False`` writes only reports and sidecars (identical to those written
            with images), e.g. to benchmark the report parser quickly.

    Returns:
        Datalist entries ``{"image", "report", "findings", "modality": "endoscopy", "patient"}``.
    """
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    out_dir = Path(out_dir)
    (out_dir / "endoscopy").mkdir(parents=True, exist_ok=True)
    (out_dir / "reports").mkdir(parents=True, exist_ok=True)
    return [write_frame(out_dir, i, seed, image_size=image_size, write_images=write_images) for i in range(n_frames)]


def write_frame(out_dir: Path, index: int, seed: int, grid: dict[str, dict[str, str]] | None = None,
                patient: str | None = None, study: str | None = None, image_size: int = 384,
                write_images: bool = True) -> dict:
    """Write frame ``endo_<index>``: its PNG, report and ground-truth sidecar; return its datalist entry.

    Args:
        out_dir: cohort root (``endoscopy/`` and ``reports/`` must exist).
        index, seed: the frame depends only on ``(seed, index)`` (and ``grid``).
        grid: the patient's findings (the linked cohort derives it from the tumour); drawn when ``None``.
        patient, study: the patient the frame belongs to (default ``endo_p<index>``) and their MRI study.
    """
    fid, pid = f"endo_{index:04d}", patient or f"endo_p{index:04d}"
    if grid is None:
        grid = sample_findings(np.random.default_rng([int(seed), index, 0]))
    text, truth = write_report(grid, np.random.default_rng([int(seed), index, 2]))
    if write_images:
        frame = render_frame(grid, np.random.default_rng([int(seed), index, 1]), image_size)
        with atomic_open(out_dir / "endoscopy" / f"{fid}.png", "wb", encoding=None) as fh:
            Image.fromarray(frame).save(fh, format="PNG", compress_level=1)
    link = {"study": study} if study else {}
    atomic_write_text(out_dir / "reports" / f"{fid}.txt", text)
    atomic_write_json(out_dir / "reports" / f"{fid}.json", {"id": fid, "patient": pid, **link, **truth})
    return {"image": f"endoscopy/{fid}.png", "report": f"reports/{fid}.txt",
            "findings": f"reports/{fid}.json", "modality": "endoscopy", "patient": pid, **link}
