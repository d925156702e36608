"""Ray-driven 2D parallel-beam projector as a torch sparse system matrix (PHYSICS.md §4).

No projector package is installable here (parallelproj is conda-only), so the system matrix is built
with Joseph's ray-driven method (Joseph, "An improved algorithm for reprojecting rays through pixel
images", IEEE TMI 1:192, 1982): each ray steps one row (or column) at a time along its major
direction and interpolates linearly between the two nearest pixels of that row; the weight is the
path length through the row, so ``A @ mu`` is a line integral (mu in 1/cm, lengths in cm).

Images are handled as ``[n_pixels, n_slices]`` dense matrices (pixel index ``row * n + col``), so one
sparse product projects every slice of a volume at once (2.5D simulation). Sinograms are
``[n_angles * n_bins, n_slices]`` with the angle as the slow index.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProjectorGeometry:
    """A square image of ``n`` x ``n`` pixels of ``pixel_mm``; ``n`` detector bins of the same width.

    ``n_angles`` views over 180 degrees; ``n_subsets`` ordered subsets (interleaved angles) for OSEM.
    """

    n: int = 128
    pixel_mm: float = 4.0
    n_angles: int = 128
    n_subsets: int = 16

    @property
    def n_pixels(self) -> int:
        return self.n * self.n

    @property
    def n_rays(self) -> int:
        return self.n_angles * self.n


def _joseph_entries(geom: ProjectorGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COO entries (ray, pixel, length in cm) of the Joseph system matrix, pixels inside the FOV circle."""
    n, d = geom.n, geom.pixel_mm
    c = (n - 1) / 2.0
    coord = (np.arange(n) - c) * d  # pixel centres and detector bin centres, mm
    angles = np.pi * np.arange(geom.n_angles) / geom.n_angles
    rows, cols, vals = [], [], []
    # pixels whose centre lies outside the inscribed circle are outside the scanner FOV
    yy, xx = np.meshgrid(coord, coord, indexing="ij")
    in_fov = (xx ** 2 + yy ** 2) <= (n * d / 2.0) ** 2
    steps = coord  # the row (or column) centres a ray steps through
    for a, th in enumerate(angles):
        ct, st = np.cos(th), np.sin(th)
        s = coord[:, None]  # bins x steps
        if abs(ct) >= abs(st):
            # ray direction (-sin, cos) is mostly along y: step over rows y_j, interpolate in x
            t = (steps[None, :] - s * st) / ct
            pos = s * ct - t * st
            major = np.broadcast_to(np.arange(n)[None, :], pos.shape)
            length = d / abs(ct)
            along_x = True
        else:
            t = (s * ct - steps[None, :]) / st
            pos = s * st + t * ct
            major = np.broadcast_to(np.arange(n)[None, :], pos.shape)
            length = d / abs(st)
            along_x = False
        f = pos / d + c
        i0 = np.floor(f).astype(np.int64)
        w1 = f - i0
        ray = np.broadcast_to((a * n + np.arange(n))[:, None], pos.shape)
        for idx, w in ((i0, 1.0 - w1), (i0 + 1, w1)):
            ok = (idx >= 0) & (idx < n) & (w > 1e-6)
            r, m, i, ww = ray[ok], major[ok], idx[ok], w[ok]
            pix = m * n + i if along_x else i * n + m
            keep = in_fov.ravel()[pix]
            rows.append(r[keep])
            cols.append(pix[keep])
            vals.append((ww[keep] * length / 10.0).astype(np.float32))  # mm -> cm
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    crow = np.zeros(shape[0] + 1, dtype=np.int64)
    np.add.at(crow, rows + 1, 1)
    crow = np.cumsum(crow)
    with warnings.catch_warnings():  # torch flags CSR support as beta; the adjoint test covers us
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(cols.astype(np.int64)),
                                       torch.from_numpy(vals), size=shape, check_invariants=False)


class Projector:
    """Forward (``A x``) and adjoint (``A^T y``) projections, whole or per OSEM subset.

    Subset ``s`` holds the angles ``s, s + S, s + 2S, ...`` (S = ``n_subsets``); its sinogram rows are
    ``[n_angles / S * n_bins]`` in that angle order.
    """

    def __init__(self, geom: ProjectorGeometry):
        if geom.n_angles % geom.n_subsets:
            raise ValueError("n_angles must be a multiple of n_subsets")
        self.geom = geom
        rows, cols, vals = _joseph_entries(geom)
        n, S = geom.n, geom.n_subsets
        self.A = _csr(rows, cols, vals, (geom.n_rays, geom.n_pixels))
        self.AT = _csr(cols, rows, vals, (geom.n_pixels, geom.n_rays))
        angle = rows // n
        self.sub_A, self.sub_AT = [], []
        per = geom.n_angles // S
        for s in range(S):
            m = (angle % S) == s
            local = (angle[m] // S) * n + rows[m] % n
            self.sub_A.append(_csr(local, cols[m], vals[m], (per * n, geom.n_pixels)))
            self.sub_AT.append(_csr(cols[m], local, vals[m], (geom.n_pixels, per * n)))
        self.nnz = int(vals.size)
        log.debug("Joseph projector %s: %d non-zeros", geom, self.nnz)

    def subset_rows(self, s: int) -> np.ndarray:
        """Indices into the full sinogram of the rows of subset ``s`` (in subset order)."""
        n, S = self.geom.n, self.geom.n_subsets
        angles = np.arange(s, self.geom.n_angles, S)
        return (angles[:, None] * n + np.arange(n)[None, :]).ravel()

    def forward(self, x: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        A = self.A if subset is None else self.sub_A[subset]
        return torch.sparse.mm(A, x) if x.dim() == 2 else torch.sparse.mm(A, x[:, None])[:, 0]

    def adjoint(self, y: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        AT = self.AT if subset is None else self.sub_AT[subset]
        return torch.sparse.mm(AT, y) if y.dim() == 2 else torch.sparse.mm(AT, y[:, None])[:, 0]


_CACHE: dict[ProjectorGeometry, Projector] = {}


def get_projector(geom: ProjectorGeometry) -> Projector:
    """A cached projector (building the matrix takes about a second at 128^2 x 128 angles)."""
    if geom not in _CACHE:
        _CACHE[geom] = Projector(geom)
    return _CACHE[geom]


def volume_to_columns(vol: np.ndarray) -> torch.Tensor:
    """[z, y, x] numpy volume -> [y*x, z] float32 tensor (one column per slice)."""
    z = vol.shape[0]
    return torch.from_numpy(np.ascontiguousarray(vol.reshape(z, -1).T, dtype=np.float32))


def columns_to_volume(cols: torch.Tensor, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`volume_to_columns`."""
    return np.ascontiguousarray(cols.numpy().T.reshape(shape))
