"""Procedural whole-body anatomy from demographics: organ label map and lesion label map.

Geometry is built in millimetres, patient coordinates LPS (x to the patient's left, y posterior,
z superior), on the CT grid that every output shares. Body landmarks are placed as fractions of the
standing height below the vertex (segment proportions of Drillis & Contini 1966, as tabulated in
Winter, "Biomechanics and Motor Control of Human Movement", Fig. 4.1: chin 0.870 H, shoulder
0.818 H, chest 0.720 H, hip/greater trochanter 0.530 H above the floor). Organs are superellipsoids
with random size, position, rotation and smooth sinusoidal deformation; organ volumes are drawn
around the AutoPET means of TotalGen Table 1 (liver, heart, kidneys) scaled with body size.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

# Organ class map written to case.json["organ_labels"] (ids are stable: trainers import it).
ORGAN_LABELS: dict[int, str] = {
    1: "body", 2: "fat", 3: "muscle", 4: "lung_left", 5: "lung_right", 6: "liver", 7: "spleen",
    8: "kidney_left", 9: "kidney_right", 10: "heart_myocardium", 11: "heart_blood_pool",
    12: "aorta", 13: "bladder", 14: "stomach", 15: "vertebrae", 16: "pelvis", 17: "ribs",
    18: "bone_marrow", 19: "brain", 20: "bone_femur", 21: "trachea", 22: "bowel",
    23: "salivary_glands", 24: "skull",
}
LABEL_ID: dict[str, int] = {v: k for k, v in ORGAN_LABELS.items()}
BONE_LABELS = ("vertebrae", "pelvis", "ribs", "bone_marrow", "bone_femur", "skull")

# Field of view (physical, fixed whatever the matrix): 512 mm transaxial (a clinical PET FOV is
# 500-700 mm) and 800 mm axial, neck to upper thighs of a 177 cm adult (chin 0.13 H below the
# vertex to 0.57 H, Winter Fig. 4.1 proportions).
FOV_XY_MM = 512.0
FOV_Z_MM = 800.0
FOV_TOP_FRACTION = 0.12  # of height below the vertex: upper neck (chin at 0.13 H)

# TotalGen Table 1 (AutoPET test cohort): demographics and organ volumes in litres, by sex.
POPULATION = {
    "M": {"age": (58.0, 17.0), "height_cm": (177.0, 7.0), "weight_kg": (83.0, 15.0),
          "liver_l": (1.76, 0.44), "heart_l": (0.68, 0.15), "kidneys_l": (0.30, 0.08)},
    "F": {"age": (59.0, 15.0), "height_cm": (165.0, 7.0), "weight_kg": (76.0, 19.0),
          "liver_l": (1.55, 0.37), "heart_l": (0.55, 0.09), "kidneys_l": (0.30, 0.06)},
}
# TotalGen's test cohort: 108 male, 92 female.
MALE_PROBABILITY = 108 / 200


@dataclass
class Demographics:
    sex: str  # "M" or "F"
    age: float
    height_cm: float
    weight_kg: float

    @property
    def bmi(self) -> float:
        return self.weight_kg / (self.height_cm / 100.0) ** 2


def sample_demographics(rng: np.random.Generator, sex: str | None = None) -> Demographics:
    """Draw a patient like TotalGen's AutoPET cohort (Table 1), clipped to plausible adults."""
    sex = sex or ("M" if rng.random() < MALE_PROBABILITY else "F")
    p = POPULATION[sex]
    age = float(np.clip(rng.normal(*p["age"]), 18, 90))
    h = float(np.clip(rng.normal(*p["height_cm"]), p["height_cm"][0] - 20, p["height_cm"][0] + 20))
    # weight correlates with height; BMI kept between 16 and 45
    w = float(rng.normal(*p["weight_kg"]))
    w = float(np.clip(w, 16 * (h / 100) ** 2, 45 * (h / 100) ** 2))
    return Demographics(sex, round(age, 1), round(h, 1), round(w, 1))


@dataclass
class Grid:
    """The shared CT grid: array order [z, y, x]; spacing (x, y, z) mm; origin at voxel (0,0,0)."""

    size: int = 128
    slices: int = 160

    @property
    def spacing(self) -> tuple[float, float, float]:
        return (FOV_XY_MM / self.size, FOV_XY_MM / self.size, FOV_Z_MM / self.slices)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.slices, self.size, self.size)

    def axes(self, top_z_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel centre coordinates (z, y, x) in mm; z runs from the bottom slice up to ``top_z_mm``."""
        sx, sy, sz = self.spacing
        x = (np.arange(self.size) - (self.size - 1) / 2) * sx
        y = (np.arange(self.size) - (self.size - 1) / 2) * sy
        z = top_z_mm - (self.slices - 1 - np.arange(self.slices)) * sz
        return z, y, x


@dataclass
class Lesion:
    id: int
    site: str
    diameter_mm: float
    suv: float
    centre_mm: tuple[float, float, float]  # x, y, z
    necrotic: bool
    heterogeneous: bool
    voxels: int = 0


@dataclass
class Anatomy:
    demographics: Demographics
    grid: Grid
    organs: np.ndarray  # uint16 [z, y, x]
    lesions: np.ndarray  # uint16 [z, y, x], instance ids 1..n
    lesion_list: list[Lesion]
    origin: tuple[float, float, float]
    necrotic: np.ndarray  # bool [z, y, x]: necrotic lesion cores
    params: dict = field(default_factory=dict)


class _Canvas:
    """Paints labelled shapes into the organ map, each evaluated on its bounding box only."""

    def __init__(self, grid: Grid, top_z: float):
        self.grid = grid
        self.z, self.y, self.x = grid.axes(top_z)
        self.sp = np.array(grid.spacing)  # x, y, z
        self.labels = np.zeros(grid.shape, np.uint16)

    def box(self, centre, radius):
        """Slices of the voxels within ``radius`` (x, y, z mm) of ``centre`` and their coordinates."""
        sl = []
        coords = []
        for ax, c, r in ((self.z, centre[2], radius[2]), (self.y, centre[1], radius[1]),
                         (self.x, centre[0], radius[0])):
            lo = np.searchsorted(ax, c - r)
            hi = np.searchsorted(ax, c + r, side="right")
            sl.append(slice(lo, hi))
            coords.append(ax[lo:hi])
        Z, Y, X = np.meshgrid(*coords, indexing="ij")
        return tuple(sl), X, Y, Z


def _rotation(rng: np.random.Generator | None, max_deg: float, yaw_deg: float = 0.0) -> np.ndarray:
    a = np.deg2rad(yaw_deg + (rng.uniform(-max_deg, max_deg) if rng is not None else 0.0))
    b = np.deg2rad(rng.uniform(-max_deg, max_deg)) if rng is not None else 0.0
    c = np.deg2rad(rng.uniform(-max_deg, max_deg)) if rng is not None else 0.0
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    ry = np.array([[math.cos(c), 0, math.sin(c)], [0, 1, 0], [-math.sin(c), 0, math.cos(c)]])
    return rz @ rx @ ry


@dataclass
class Superellipsoid:
    """|x/rx|^p + |y/ry|^p + |z/rz|^p <= 1 in a rotated, smoothly deformed local frame."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    power: float = 2.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    deform: float = 0.0  # amplitude of the sinusoidal deformation, as a fraction of the radii
    phases: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    freqs: np.ndarray = field(default_factory=lambda: np.ones((3, 3)))

    @staticmethod
    def unit_volume(power: float) -> float:
        """Volume of the superellipsoid with unit radii (8 Gamma(1+1/p)^3 / Gamma(1+3/p))."""
        return 8.0 * math.gamma(1 + 1 / power) ** 3 / math.gamma(1 + 3 / power)

    @classmethod
    def with_volume(cls, volume_ml: float, ratios, power: float = 2.0, **kw) -> "Superellipsoid":
        ratios = np.asarray(ratios, float)
        k = (volume_ml * 1000.0 / (cls.unit_volume(power) * ratios.prod())) ** (1 / 3)
        return cls(radii=tuple(ratios * k), power=power, **kw)

    def inside(self, canvas: _Canvas, margin: float = 1.3):
        r = np.array(self.radii)
        ext = np.abs(self.rotation) @ r * margin
        sl, X, Y, Z = canvas.box(self.centre, ext)
        if X.size == 0:
            return sl, np.zeros(X.shape, bool), X, Y, Z
        P = np.stack([X - self.centre[0], Y - self.centre[1], Z - self.centre[2]], -1) @ self.rotation
        u = P / r
        if self.deform:
            d = np.zeros_like(u)
            for i in range(3):
                for j in range(3):
                    d[..., i] += np.sin(self.freqs[i, j] * u[..., j] + self.phases[i, j])
            u = u + self.deform * d / 3.0
        f = (np.abs(u) ** self.power).sum(-1)
        return sl, f <= 1.0, X, Y, Z


def _random_shape(rng, centre, radii, power=2.0, rot_deg=8.0, deform=0.12, yaw=0.0) -> Superellipsoid:
    return Superellipsoid(centre=tuple(centre), radii=tuple(radii), power=power,
                          rotation=_rotation(rng, rot_deg, yaw), deform=deform,
                          phases=rng.uniform(0, 2 * np.pi, (3, 3)), freqs=rng.uniform(1.0, 2.5, (3, 3)))


def _paint(canvas: _Canvas, shape: Superellipsoid, label: int, only: np.ndarray | None = None,
           keep: tuple[int, ...] = ()) -> None:
    sl, m, *_ = shape.inside(canvas)
    if not m.any():
        return
    view = canvas.labels[sl]
    if only is not None:
        m &= np.isin(view, only)
    if keep:
        m &= ~np.isin(view, keep)
    view[m] = label


def _tube(canvas: _Canvas, points: np.ndarray, radius: np.ndarray | float, label: int,
          only: tuple[int, ...] | None = None) -> None:
    """A tube along a polyline (points [k, 3] in mm x, y, z) of (possibly varying) radius."""
    radius = np.broadcast_to(np.asarray(radius, float), (len(points),))
    for p0, p1, r0, r1 in zip(points[:-1], points[1:], radius[:-1], radius[1:]):
        rmax = max(r0, r1)
        lo, hi = np.minimum(p0, p1) - rmax, np.maximum(p0, p1) + rmax
        sl, X, Y, Z = canvas.box((lo + hi) / 2, (hi - lo) / 2)
        if X.size == 0:
            continue
        P = np.stack([X, Y, Z], -1)
        seg = p1 - p0
        t = np.clip(((P - p0) @ seg) / max(seg @ seg, 1e-9), 0, 1)
        dist = np.linalg.norm(P - (p0 + t[..., None] * seg), axis=-1)
        m = dist <= r0 + t * (r1 - r0)
        view = canvas.labels[sl]
        if only is not None:
            m &= np.isin(view, only)
        view[m] = label


def _volume_l(rng, demo: Demographics, organ: str, size_factor: float) -> float:
    """Organ volume in litres: TotalGen Table 1 mean for the sex, scaled with body size, with the
    Table's between-patient spread (part of which the size scaling already explains)."""
    mean, sd = POPULATION[demo.sex][f"{organ}_l"]
    cv = sd / mean
    v = mean * size_factor * (1.0 + 0.8 * cv * rng.standard_normal())
    return float(np.clip(v, 0.5 * mean, 1.8 * mean))


# Painted organ volumes lose a little to neighbours painted later and to voxelisation; measured on
# 40 phantoms (see `petdiffusion phantom --population-table`), this factor restores the target.
OVERLAP_COMPENSATION = {"liver": 1.06, "heart": 1.04, "kidneys": 1.03}


def build_anatomy(demo: Demographics, grid: Grid, rng: np.random.Generator, include_head: bool = False,
                  n_lesions: int | None = None) -> Anatomy:
    """Paint the organ label map and the lesions for one patient."""
    H = demo.height_cm * 10.0  # mm
    top_u = -30.0 if include_head else FOV_TOP_FRACTION * H  # mm below the vertex
    top_z = -top_u  # z = -u (superior positive), so the vertex is at z = 0
    cv = _Canvas(grid, top_z)
    L = LABEL_ID
    male = demo.sex == "M"
    bmi = demo.bmi
    hs = H / 1770.0  # height scale
    # Lean-core scaling with build; subcutaneous fat thickness grows with BMI and is thicker in
    # women (about 4 mm at BMI 20 to ~40 mm at BMI 35; CT body-composition studies, e.g. Kvist 1988).
    lean = math.sqrt(min(max(bmi, 17.0), 30.0) / 24.0)
    fat_t = max(3.0, 4.0 + 2.2 * (bmi - 20.0)) + (6.0 if not male else 0.0)
    size_factor = (demo.weight_kg / POPULATION[demo.sex]["weight_kg"][0]) ** 0.35 * hs ** 0.5

    def uz(frac: float) -> float:  # z (mm) of a landmark at ``frac`` H below the vertex
        return -frac * H

    zs = cv.z
    u = -zs / H  # fraction of height below the vertex, per slice
    # --- body outline, per slice: (half-width, half-depth, y-centre) of the lean core, mm
    def prof(uu):
        pts_u = [0.0, 0.10, 0.12, 0.165, 0.20, 0.23, 0.33, 0.40, 0.44, 0.50, 0.54, 0.70]
        a_m = [75, 75, 62, 62, 160, 160, 150, 145, 160, 170, 175, 175]
        b_m = [95, 95, 62, 62, 95, 105, 105, 100, 100, 105, 85, 85]
        a = np.interp(uu, pts_u, a_m)
        b = np.interp(uu, pts_u, b_m)
        if not male:  # narrower shoulders, wider hips (Winter's proportions differ by sex)
            a = a * np.interp(uu, [0.15, 0.30, 0.40, 0.50], [0.9, 0.92, 1.0, 1.08])
        return a * hs * lean, b * hs * lean
    a_core, b_core = prof(u)
    abdomen = np.interp(u, [0.28, 0.36, 0.46, 0.52], [0.6, 1.4, 1.2, 0.8])  # fat deposits more here
    t_fat = fat_t * abdomen
    legs = np.clip((u - 0.50) / 0.04, 0, 1)  # 0 = one trunk, 1 = two thighs
    neck_y = np.interp(u, [0.1, 0.17, 0.2], [15, 15, 0])

    body_ph = rng.uniform(0, 2 * np.pi, 4)
    Y2, X2 = np.meshgrid(cv.y, cv.x, indexing="ij")
    for k in range(grid.slices):
        if u[k] < 0 and not include_head:
            continue
        if u[k] < 0:  # above the vertex
            continue
        ang = np.arctan2(Y2, X2)
        wob = 1.0 + 0.03 * np.sin(2 * ang + body_ph[0]) + 0.02 * np.sin(3 * ang + body_ph[1])
        def ell(a, b, cx=0.0, cy=0.0, p=2.4):
            return (np.abs((X2 - cx) / a) ** p + np.abs((Y2 - cy) / b) ** p) ** (1 / p) / wob
        if legs[k] < 1:
            r_body = ell(a_core[k] + t_fat[k], b_core[k] + t_fat[k], cy=neck_y[k])
            r_core = ell(a_core[k], b_core[k], cy=neck_y[k])
            body = r_body <= 1
            core = r_core <= 1
        else:
            body = np.zeros_like(X2, bool)
            core = np.zeros_like(X2, bool)
        if legs[k] > 0:
            ra, rb = 78 * hs * lean, 82 * hs * lean
            for side in (-1, 1):
                cx = side * (ra + 6)
                tb = ell(ra + t_fat[k], rb + t_fat[k], cx=cx, p=2.0) <= 1
                tc = ell(ra, rb, cx=cx, p=2.0) <= 1
                body |= tb
                core |= tc
        sl = cv.labels[k]
        sl[body] = L["fat"]
        sl[core] = L["muscle"]
        # skin: the outermost 2-3 mm stay "body"
        edge = body & ~_erode2d(body, 1)
        sl[edge] = L["body"]
        # trunk cavity (mediastinum / peritoneum): anterior part of the core, muscle wall ~15 mm
        if 0.19 <= u[k] <= 0.50 and legs[k] < 0.5:
            wall = 16.0 * hs
            ca, cb = a_core[k] - wall, (b_core[k] - wall) * 0.82
            cav = ell(ca, cb, cy=-0.12 * b_core[k], p=2.2) <= 1
            sl[cav & core] = L["body"]
    params = {"height_scale": hs, "lean_scale": lean, "subcutaneous_fat_mm": fat_t,
              "top_z_mm": top_z}
    # cavity geometry at a level (used to place organs)
    def cav_at(frac):
        a, b = prof(np.array([frac]))
        return float(a[0] - 16 * hs), float((b[0] - 16 * hs) * 0.82), float(b[0])

    # --- visceral fat and bowel fill the abdominal cavity below the liver
    body_mask = cv.labels == L["body"]
    zsel = (u > 0.35) & (u < 0.49)
    noise = _smooth_noise(grid.shape, rng, 3.0)
    visc_fat = np.clip(0.15 + 0.02 * (bmi - 22), 0.1, 0.55)
    thr_fat = np.quantile(noise, 1 - visc_fat)
    sel = body_mask & zsel[:, None, None]
    cv.labels[sel & (noise < thr_fat)] = L["bowel"]
    cv.labels[sel & (noise >= thr_fat)] = L["fat"]
    # thoracic cavity fat (mediastinal/epicardial) is left as "body" soft tissue

    # --- lungs
    a, b, B = cav_at(0.26)
    apex, base_r, base_l = 0.172, rng.normal(0.315, 0.01), rng.normal(0.325, 0.01)
    for side, base, lab in ((-1, base_r, "lung_right"), (1, base_l, "lung_left")):
        zc = uz((apex + base) / 2)
        rz = (base - apex) * H / 2 * 1.05
        shape = _random_shape(rng, (side * a * 0.48, 0.05 * B, zc), (a * 0.47, b * 0.95, rz),
                              power=2.6, deform=0.08)
        _paint(cv, shape, L[lab], only=np.array([L["body"], L["muscle"]]))
    # --- trachea (air), midline, from the neck into the mediastinum
    _tube(cv, np.array([[0, -0.25 * B, uz(0.11)], [0, -0.05 * B, uz(0.225)]]), 8.0 * hs, L["trachea"],
          only=(L["body"], L["muscle"], L["fat"]))
    # --- heart: myocardium shell around a blood pool; volume from TotalGen Table 1
    v_heart = _volume_l(rng, demo, "heart", size_factor) * OVERLAP_COMPENSATION["heart"]
    a, b, B = cav_at(0.27)
    hc = (rng.normal(0.22, 0.05) * a, -0.28 * B + rng.normal(0, 5), uz(rng.normal(0.272, 0.006)))
    heart = Superellipsoid.with_volume(v_heart * 1000, (1.0, 0.85, 1.05), 2.0, centre=hc,
                                       rotation=_rotation(rng, 10, yaw_deg=-30))
    heart.deform, heart.phases, heart.freqs = 0.06, rng.uniform(0, 6.3, (3, 3)), rng.uniform(1, 2, (3, 3))
    _paint(cv, heart, L["heart_myocardium"], keep=(L["trachea"],))
    wall = rng.uniform(9, 12)  # LV wall about 10 mm
    inner = Superellipsoid(centre=hc, radii=tuple(max(r - wall, 5) for r in heart.radii), power=2.0,
                           rotation=heart.rotation, deform=heart.deform, phases=heart.phases,
                           freqs=heart.freqs)
    _paint(cv, inner, L["heart_blood_pool"], only=np.array([L["heart_myocardium"]]))
    # --- aorta: ascending, arch, descending to the bifurcation, iliac arteries
    r_ao = rng.uniform(11, 14) * hs
    spine_y = lambda frac: prof(np.array([frac]))[1][0] * 0.45  # noqa: E731  vertebral body centre
    pts = np.array([
        [0.05 * a, hc[1] + 0.3 * b, uz(0.255)], [0.0, -0.18 * B, uz(0.205)],
        [25 * hs, spine_y(0.2) - 50 * hs, uz(0.195)], [22 * hs, spine_y(0.22) - 32 * hs, uz(0.22)],
        [15 * hs, spine_y(0.33) - 30 * hs, uz(0.33)], [5 * hs, spine_y(0.42) - 32 * hs, uz(0.42)]])
    _tube(cv, pts, r_ao, L["aorta"], only=(L["body"], L["lung_left"], L["lung_right"], L["fat"],
                                           L["bowel"], L["muscle"], L["heart_myocardium"]))
    for side in (-1, 1):
        _tube(cv, np.array([[5 * hs, spine_y(0.42) - 32 * hs, uz(0.42)],
                            [side * 55 * hs, spine_y(0.46) - 45 * hs, uz(0.47)]]), 0.55 * r_ao,
              L["aorta"], only=(L["body"], L["fat"], L["bowel"], L["muscle"]))
    # --- psoas muscles beside the lumbar spine
    for side in (-1, 1):
        _tube(cv, np.array([[side * 35 * hs, spine_y(0.37), uz(0.36)],
                            [side * 55 * hs, spine_y(0.44) - 20, uz(0.46)]]),
              np.array([9.0, 24.0]) * hs * lean, L["muscle"], only=(L["body"], L["fat"], L["bowel"]))
    soft = np.array([L["body"], L["fat"], L["bowel"], L["muscle"], L["lung_left"], L["lung_right"]])
    # --- stomach (left upper quadrant)
    a, b, B = cav_at(0.335)
    st = _random_shape(rng, (0.35 * a, -0.25 * B, uz(rng.normal(0.325, 0.006))),
                       np.array([45, 35, 55]) * hs * rng.uniform(0.85, 1.15), power=2.0, deform=0.15)
    _paint(cv, st, L["stomach"], only=soft)
    # --- spleen (left, posterior)
    v_spleen = float(np.clip(rng.normal(0.20, 0.06), 0.08, 0.45)) * size_factor  # 150-250 mL adult
    sp = Superellipsoid.with_volume(v_spleen * 1e3, (0.55, 1.0, 1.25), 2.2,
                                    centre=(0.62 * a, 0.40 * B, uz(rng.normal(0.335, 0.006))),
                                    rotation=_rotation(rng, 10, yaw_deg=-35))
    sp.deform, sp.phases = 0.1, rng.uniform(0, 6.3, (3, 3))
    _paint(cv, sp, L["spleen"], only=np.append(soft, L["stomach"]))
    # --- liver (right upper quadrant), volume from TotalGen Table 1
    v_liver = _volume_l(rng, demo, "liver", size_factor) * OVERLAP_COMPENSATION["liver"]
    lv = Superellipsoid.with_volume(v_liver * 1e3, (1.0, 0.78, 0.72), 2.5,
                                    centre=(-0.38 * a + rng.normal(0, 5), 0.02 * B + rng.normal(0, 5),
                                            uz(rng.normal(0.335, 0.006))),
                                    rotation=_rotation(rng, 8, yaw_deg=15))
    lv.deform, lv.phases, lv.freqs = 0.10, rng.uniform(0, 6.3, (3, 3)), rng.uniform(1, 2, (3, 3))
    _paint(cv, lv, L["liver"], only=np.append(soft, [L["stomach"], L["spleen"]]))
    # --- kidneys (posterior, beside the spine; the right one a little lower)
    v_kid = _volume_l(rng, demo, "kidneys", size_factor) * OVERLAP_COMPENSATION["kidneys"]
    a, b, B = cav_at(0.37)
    for side, lab, frac in ((-1, "kidney_right", 0.378), (1, "kidney_left", 0.368)):
        kd = Superellipsoid.with_volume(v_kid * 1e3 / 2 * rng.uniform(0.9, 1.1), (0.55, 0.45, 1.0), 2.0,
                                        centre=(side * 68 * hs, spine_y(0.37) + rng.normal(0, 4),
                                                uz(rng.normal(frac, 0.005))),
                                        rotation=_rotation(rng, 8, yaw_deg=side * 20))
        kd.deform, kd.phases = 0.05, rng.uniform(0, 6.3, (3, 3))
        _paint(cv, kd, L[lab])
    # --- bladder (volume varies with filling: 80-400 mL)
    a, b, B = cav_at(0.49)
    bl = Superellipsoid.with_volume(rng.uniform(80, 400), (1.2, 1.0, 0.85), 2.2,
                                    centre=(rng.normal(0, 5), -0.35 * B, uz(0.492)),
                                    rotation=_rotation(rng, 5))
    _paint(cv, bl, L["bladder"])
    # --- skeleton: vertebral bodies (cortical shell over marrow) with discs, posterior elements
    vert_h = 27.0 * hs  # vertebral body + disc, mm (lumbar ~ 25 mm body + ~ 8 mm disc; thoracic less)
    phase = rng.uniform(0, vert_h)
    for k in range(grid.slices):
        if not (0.12 < u[k] < 0.445):
            continue
        ab, bb = prof(np.array([u[k]]))
        cy = bb[0] * 0.45
        r_vb = np.interp(u[k], [0.12, 0.25, 0.40], [11, 15, 21]) * hs
        in_disc = ((zs[k] + phase) % vert_h) < 0.22 * vert_h
        d = np.hypot(X2, (Y2 - cy) * 1.1)
        sl = cv.labels[k]
        body_ok = np.isin(sl, soft)
        vb = (d <= r_vb) & body_ok
        if in_disc:
            sl[vb] = L["body"]
        else:
            sl[vb] = L["vertebrae"]
            sl[(d <= r_vb - 3.5) & body_ok] = L["bone_marrow"]
        # spinous process / laminae: a posterior bar
        bar = (np.abs(X2) <= 5 * hs) & (Y2 > cy + r_vb + 6) & (Y2 < cy + r_vb + 38 * hs) & body_ok
        ring = (np.abs(np.hypot(X2, Y2 - cy - r_vb - 8) - 9) < 2.5) & body_ok
        if not in_disc:
            sl[bar | ring] = L["vertebrae"]
    # ribs: a thin shell at the inner chest wall, modulated along z (rib ~ 10 mm, period ~ 25 mm)
    rib_period = 25.0 * hs
    rph = rng.uniform(0, rib_period)
    for k in range(grid.slices):
        if not (0.185 < u[k] < 0.37):
            continue
        ab, bb = prof(np.array([u[k]]))
        a0, b0 = ab[0] - 8 * hs, bb[0] - 8 * hs
        r = (np.abs(X2 / a0) ** 2.4 + np.abs(Y2 / b0) ** 2.4) ** (1 / 2.4)
        ang = np.arctan2(Y2, X2)
        # ribs slope down anteriorly: the phase depends on the angle
        ph = ((zs[k] + rph + 12 * np.sin(ang)) % rib_period) < 0.38 * rib_period
        shell = (np.abs(r - 1.0) < 5.0 / max(a0, 1)) & ph & (np.abs(X2) > 12)
        sl = cv.labels[k]
        sl[shell & np.isin(sl, [L["muscle"], L["body"], L["fat"]])] = L["ribs"]
        # sternum
        if u[k] < 0.29:
            st_m = (np.abs(X2) < 14 * hs) & (np.abs(Y2 + b0) < 6) & np.isin(sl, [L["muscle"], L["body"]])
            sl[st_m] = L["ribs"]
    # pelvis: iliac wings (thick plates), sacrum, pubic rami
    for side in (-1, 1):
        a, b, B = cav_at(0.44)
        il = _random_shape(rng, (side * 0.62 * a, 0.25 * B, uz(0.44)),
                           np.array([14, 62, 50]) * hs, power=2.0, rot_deg=4, yaw=-side * 40, deform=0.05)
        _paint(cv, il, L["pelvis"], only=soft)
        il_in = Superellipsoid(il.centre, tuple(max(r - 4, 2) for r in il.radii), 2.0, il.rotation,
                               il.deform, il.phases, il.freqs)
        _paint(cv, il_in, L["bone_marrow"], only=np.array([L["pelvis"]]))
        # acetabulum / femoral head and the femoral shaft down the thigh
        fh = (side * 88 * hs * lean ** 0.3, 0.0, uz(0.475))
        _paint(cv, Superellipsoid(fh, (24 * hs,) * 3), L["bone_femur"], only=soft)
        _paint(cv, Superellipsoid(fh, (20 * hs,) * 3), L["bone_marrow"], only=np.array([L["bone_femur"]]))
        shaft = np.array([[side * 100 * hs * lean ** 0.3, 5, uz(0.49)],
                          [side * 84 * hs * lean ** 0.3, 0, uz(0.75)]])
        _tube(cv, shaft, 14 * hs, L["bone_femur"], only=tuple(soft))
        _tube(cv, shaft, 8 * hs, L["bone_marrow"], only=(L["bone_femur"],))
        # pubic ramus: from the acetabulum to the symphysis
        _tube(cv, np.array([[side * 70 * hs, -10, uz(0.48)], [side * 12, -0.7 * B, uz(0.50)]]),
              9 * hs, L["pelvis"], only=tuple(soft))
    _paint(cv, Superellipsoid((0, prof(np.array([0.46]))[1][0] * 0.5, uz(0.455)), (38 * hs, 18 * hs, 45 * hs),
                              rotation=_rotation(None, 0)), L["pelvis"], only=soft)
    # salivary glands (submandibular, upper neck) and brain/skull when the head is in the FOV
    for side in (-1, 1):
        _paint(cv, Superellipsoid((side * 35 * hs, -20 * hs, uz(0.125)), (12, 15, 12)),
               L["salivary_glands"], only=soft)
    if include_head:
        _paint(cv, Superellipsoid((0, 0, uz(0.065)), (72 * hs, 88 * hs, 68 * hs)), L["skull"])
        _paint(cv, Superellipsoid((0, 0, uz(0.065)), (65 * hs, 81 * hs, 61 * hs)), L["brain"])
    # lesions
    lesions, necrotic, lesion_list = _place_lesions(cv, rng, H, n_lesions)
    origin = (float(cv.x[0]), float(cv.y[0]), float(cv.z[0]))
    params.update({"spleen_l": v_spleen})
    return Anatomy(demo, grid, cv.labels, lesions, lesion_list, origin, necrotic, params)


def _erode2d(m: np.ndarray, it: int) -> np.ndarray:
    from scipy.ndimage import binary_erosion
    return binary_erosion(m, iterations=it)


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, corr_vox: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``corr_vox`` voxels.

    Drawn on a coarse grid and upsampled trilinearly (fast on one core)."""
    import torch
    f = max(1.0, corr_vox)
    small = tuple(max(2, int(np.ceil(s / f)) + 1) for s in shape)
    n = torch.from_numpy(rng.standard_normal(small).astype(np.float32))
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    out = torch.nn.functional.interpolate(n[None, None], size=tuple(shape), mode=mode,
                                          align_corners=True)[0, 0].numpy()
    out = out[tuple(slice(0, s) for s in shape)]
    out -= out.mean()
    out /= out.std() + 1e-6
    return out


# Lesion sites and their share of lesions (liver, lungs, lymph-node stations, bone: issue 4).
LESION_SITES = {"liver": 0.28, "lung": 0.24, "node": 0.32, "bone": 0.16}


def _place_lesions(cv: _Canvas, rng: np.random.Generator, H: float, n: int | None):
    """0-10 lesions, 4-40 mm (log-uniform), SUV 3-20; some necrotic (>= 20 mm) or heterogeneous."""
    L = LABEL_ID
    lab = cv.labels
    out = np.zeros(lab.shape, np.uint16)
    necrotic = np.zeros(lab.shape, bool)
    n = int(rng.integers(0, 11)) if n is None else n
    u = -cv.z / H
    lesions: list[Lesion] = []
    node_stations = [  # (x fraction of half-width, y mm, u) : cervical, axillary, mediastinal, hilar,
        (0.45, -5, 0.15), (0.85, 10, 0.21), (0.0, -30, 0.235), (0.25, 0, 0.25),  # para-aortic, iliac
        (0.15, 20, 0.40), (0.35, 10, 0.455)]
    for i in range(n):
        site = rng.choice(list(LESION_SITES), p=list(LESION_SITES.values()))
        d = float(np.exp(rng.uniform(np.log(4.0), np.log(40.0))))
        if site == "liver":
            cand = np.argwhere(lab == L["liver"])
        elif site == "lung":
            cand = np.argwhere((lab == L["lung_left"]) | (lab == L["lung_right"]))
            d = min(d, 30.0)
        elif site == "bone":
            cand = np.argwhere((lab == L["bone_marrow"]) | (lab == L["vertebrae"]) | (lab == L["pelvis"]))
            d = min(d, 30.0)
        else:
            cand = None
        if cand is not None and len(cand):
            k, j, i_ = cand[rng.integers(len(cand))]
            centre = (float(cv.x[i_]), float(cv.y[j]), float(cv.z[k]))
        else:
            site = "node"
            fx, y, uu = node_stations[rng.integers(len(node_stations))]
            side = rng.choice([-1, 1])
            zc = -uu * H
            kk = int(np.argmin(np.abs(cv.z - zc)))
            row = lab[kk, len(cv.y) // 2]
            inside = np.nonzero(row > 0)[0]
            half = (cv.x[inside[-1]] - cv.x[inside[0]]) / 2 if len(inside) else 100.0
            centre = (float(side * fx * half * 0.8 + rng.normal(0, 5)), float(y + rng.normal(0, 5)),
                      float(zc + rng.normal(0, 8)))
            d = float(np.clip(d, 8.0, 30.0))
        suv = float(rng.uniform(3.0, 20.0))
        radii = np.array([d / 2] * 3) * rng.uniform(0.8, 1.2, 3)
        irregular = rng.random() < 0.3
        shape = _random_shape(rng, centre, radii, power=2.0, rot_deg=30, deform=0.25 if irregular else 0.0)
        sl, m, X, Y, Z = shape.inside(cv)
        # every lesion keeps at least its centre voxel (a 4 mm lesion on a 4 mm grid)
        kc = int(np.argmin(np.abs(cv.z - centre[2])))
        jc = int(np.argmin(np.abs(cv.y - centre[1])))
        ic = int(np.argmin(np.abs(cv.x - centre[0])))
        view = out[sl]
        m &= lab[sl] > 0
        view[m] = i + 1
        if lab[kc, jc, ic] > 0:
            out[kc, jc, ic] = i + 1
        nec = d >= 20 and rng.random() < 0.4
        if nec:
            core = Superellipsoid(shape.centre, tuple(radii * rng.uniform(0.4, 0.6)), 2.0, shape.rotation,
                                  shape.deform, shape.phases, shape.freqs)
            slc, mc, *_ = core.inside(cv)
            necrotic[slc] |= mc & (out[slc] == i + 1)
        lesions.append(Lesion(i + 1, str(site), round(d, 1), round(suv, 2),
                              tuple(round(c, 1) for c in centre), bool(nec), bool(rng.random() < 0.5)))
    # lesions painted over completely by later ones are dropped; ids stay 1..n
    counts = np.bincount(out.ravel(), minlength=n + 1)
    kept = [les for les in lesions if counts[les.id] > 0]
    remap = np.zeros(n + 1, np.uint16)
    for new_id, les in enumerate(kept, start=1):
        remap[les.id] = new_id
        les.id, les.voxels = new_id, int(counts[les.id])
    return remap[out], necrotic, kept
