"""HU -> linear attenuation coefficient at 511 keV against PHYSICS.md §3 (Carney 2006 bilinear,
Abella 2012 trilinear)."""
from __future__ import annotations

import numpy as np
import pytest

from PETDiffusionLib.physics.attenuation import (ABELLA_A2, CARNEY_BILINEAR, attenuation_map,
                                                 hu_to_mu)


@pytest.mark.parametrize("tissue, hu, mu", [
    ("water", 0, 0.0960), ("lung", -850, 0.0144), ("liver", 55, 0.1009), ("bone", 700, 0.1338)])
def test_carney_check_values_at_120_kvp(tissue, hu, mu):
    # PHYSICS.md §3 "Check values at 120 kVp"
    assert float(hu_to_mu(np.array([hu]), 120, "carney")[0]) == pytest.approx(mu, abs=5e-5)


@pytest.mark.parametrize("kvp", sorted(CARNEY_BILINEAR))
def test_carney_every_kvp_water_is_0096_air_is_0_and_the_two_lines_meet(kvp):
    a, b, bp = CARNEY_BILINEAR[kvp]
    mu = hu_to_mu(np.array([-1000.0, 0.0, bp, bp + 1e-3]), kvp, "carney")
    assert mu[0] == pytest.approx(0.0, abs=1e-7)
    assert mu[1] == pytest.approx(0.096, abs=1e-6)  # Carney 2006: water at 511 keV
    assert mu[2] == pytest.approx(9.6e-5 * (bp + 1000), abs=1e-6)
    # Table 1 coefficients make the bilinear map continuous at the breakpoint (to table rounding)
    assert mu[3] == pytest.approx(a * (bp + 1000) + b, abs=1e-6)
    assert abs(mu[3] - mu[2]) < 6e-4


@pytest.mark.parametrize("kvp", sorted(ABELLA_A2))
def test_abella_trilinear_pieces(kvp):
    a2 = ABELLA_A2[kvp]
    mu = hu_to_mu(np.array([-1000.0, -500.0, 0.0, 500.0, 1000.0]), kvp, "abella")
    # PHYSICS.md §3: HU < 0: 0.093 + 9.3e-5·HU; 0..1000: 0.093 + a2·HU
    assert mu[0] == pytest.approx(0.0, abs=1e-7)
    assert mu[1] == pytest.approx(0.093 - 9.3e-5 * 500, abs=1e-7)
    assert mu[2] == pytest.approx(0.093, abs=1e-7)
    assert mu[3] == pytest.approx(0.093 + a2 * 500, abs=1e-7)
    assert mu[4] == pytest.approx(0.093 + a2 * 1000, abs=1e-7)


def test_abella_above_1000_hu_at_120_kvp():
    # (a3, b3) = (0.589e-5, 0.134) at 120 kVp: 2000 HU -> 0.14578 /cm
    assert float(hu_to_mu(np.array([2000.0]), 120, "abella")[0]) == pytest.approx(0.14578, abs=1e-6)


def test_mu_is_never_negative_and_cpdm_map_is_exp_minus_mu():
    hu = np.array([-3024.0, -1000.0, 0.0, 3000.0])
    mu = hu_to_mu(hu, 120, "abella")
    assert (mu >= 0).all()
    assert np.allclose(attenuation_map(hu, 120, "abella"), np.exp(-mu))
    assert float(attenuation_map(np.array([0.0]), 120, "abella")[0]) == pytest.approx(np.exp(-0.093))
