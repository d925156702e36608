"""CT Hounsfield units -> linear attenuation coefficient at 511 keV (1/cm), and CPDM's map exp(-mu).

Sources (PHYSICS.md §3):
- Bilinear: Carney, Townsend, Rappoport, Bendriem, "Method for transforming CT images for
  attenuation correction in PET/CT imaging", Med Phys 33:976 (2006), Table 1 (a, b, breakpoint per kVp).
- Trilinear: Abella et al., "Accuracy of CT-based attenuation correction in PET/CT bone imaging",
  Phys Med Biol 57:2477 (2012), the variant CPDM cites.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

# Carney 2006 Table 1: kVp -> (a [1/cm per HU], b [1/cm], breakpoint [HU]).
CARNEY_BILINEAR: dict[int, tuple[float, float, float]] = {
    80: (3.64e-5, 0.0626, 50.0),
    100: (4.43e-5, 0.0544, 52.0),
    110: (4.92e-5, 0.0488, 43.0),
    120: (5.10e-5, 0.0471, 47.0),
    130: (5.51e-5, 0.0424, 37.0),
    140: (5.64e-5, 0.0408, 30.0),
}
# Water at 511 keV: 0.096 /cm, i.e. 9.6e-5 per HU above air (Carney 2006, eq. 1, HU <= breakpoint).
MU_WATER_511 = 0.096
CARNEY_SOFT_SLOPE = 9.6e-5

# Abella 2012: HU < 0: 0.093 + 9.3e-5 HU; 0..1000 HU: 0.093 + a2 HU; > 1000 HU: a3 HU + b3.
ABELLA_A2: dict[int, float] = {80: 3.28e-5, 100: 4.00e-5, 120: 4.71e-5, 140: 5.59e-5}
ABELLA_A3B3: dict[int, tuple[float, float]] = {
    80: (0.41e-5, 0.122), 100: (0.50e-5, 0.128), 120: (0.589e-5, 0.134), 140: (0.698e-5, 0.142)}

DEFAULT_KVP = 120  # the most common clinical PET/CT setting; used (with a warning) when kVp is unknown


def _nearest_kvp(kvp: float, table: dict) -> int:
    nearest = min(table, key=lambda k: abs(k - kvp))
    if abs(nearest - kvp) > 5:
        log.warning("kVp %.0f is not tabulated; using the coefficients for %d kVp", kvp, nearest)
    return nearest


def hu_to_mu(hu: np.ndarray, kvp: float = DEFAULT_KVP, method: str = "carney") -> np.ndarray:
    """Linear attenuation coefficient at 511 keV in 1/cm from CT numbers in HU; clipped at 0."""
    hu = np.asarray(hu, dtype=np.float32)
    if method == "carney":
        a, b, bp = CARNEY_BILINEAR[_nearest_kvp(kvp, CARNEY_BILINEAR)]
        mu = np.where(hu <= bp, CARNEY_SOFT_SLOPE * (hu + 1000.0), a * (hu + 1000.0) + b)
    elif method == "abella":
        k = _nearest_kvp(kvp, ABELLA_A2)
        a3, b3 = ABELLA_A3B3[k]
        mu = np.where(hu < 0, 0.093 + 9.3e-5 * hu,
                      np.where(hu <= 1000, 0.093 + ABELLA_A2[k] * hu, a3 * hu + b3))
    else:
        raise ValueError(f"unknown HU->mu method {method!r} (carney or abella)")
    return np.clip(mu, 0.0, None).astype(np.float32)


def attenuation_map(hu: np.ndarray, kvp: float = DEFAULT_KVP, method: str = "abella") -> np.ndarray:
    """CPDM's condition map M_mu = exp(-mu) per pixel (mu in 1/cm, i.e. per 1 cm path; CPDM §3.2)."""
    return np.exp(-hu_to_mu(hu, kvp, method)).astype(np.float32)


BODY_HU = -500.0
"""CT number that separates the body from the air around it: mid-way between air (-1000 HU) and
the lightest soft tissue, fat (-50..-100 HU), PHYSICS.md §5. Lungs (-850..-910 HU) fall below it;
a body mask that must include them fills the enclosed holes (methods.cpdm.intensities.body_mask)."""
