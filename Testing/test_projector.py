"""The ray-driven sparse projector (issue 4): adjoint, line integrals, subsets."""
from __future__ import annotations

import numpy as np
import torch

from PETDiffusionLib.physics.projector import Projector, ProjectorGeometry


def _projector(n=32, pixel_mm=4.0, angles=32, subsets=4) -> Projector:
    return Projector(ProjectorGeometry(n, pixel_mm, angles, subsets))


def test_adjoint_inner_products_agree_to_1e4():
    """<A x, y> = <x, A^T y> for random x, y, for the whole matrix and for every OSEM subset."""
    P = _projector()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(P.geom.n_pixels, 3, generator=g, dtype=torch.float32)
    y = torch.rand(P.geom.n_rays, 3, generator=g, dtype=torch.float32)
    lhs = float((P.forward(x).double() * y.double()).sum())
    rhs = float((x.double() * P.adjoint(y).double()).sum())
    assert abs(lhs - rhs) / abs(lhs) < 1e-4
    for s in range(P.geom.n_subsets):
        ys = y[torch.from_numpy(P.subset_rows(s))]
        lhs = float((P.forward(x, s).double() * ys.double()).sum())
        rhs = float((x.double() * P.adjoint(ys, s).double()).sum())
        assert abs(lhs - rhs) / abs(lhs) < 1e-4


def test_central_ray_through_a_uniform_disc_is_its_diameter_times_mu():
    """A disc of radius 40 mm and mu 0.1/cm: every central ray integrates to 8 cm x 0.1/cm = 0.8."""
    P = _projector(n=64, pixel_mm=2.0, angles=16, subsets=4)
    c = (np.arange(64) - 31.5) * 2.0
    yy, xx = np.meshgrid(c, c, indexing="ij")
    disc = ((xx ** 2 + yy ** 2) <= 40.0 ** 2).astype(np.float32) * 0.1
    sino = P.forward(torch.from_numpy(disc.ravel())).reshape(16, 64).numpy()
    central = sino[:, 31:33].mean(1)  # the two bins either side of the centre
    np.testing.assert_allclose(central, 0.8, rtol=0.03)
    # the subsets together hold every ray exactly once
    rows = np.concatenate([P.subset_rows(s) for s in range(4)])
    assert sorted(rows.tolist()) == list(range(P.geom.n_rays))
