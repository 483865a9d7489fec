"""Gaussian probability paths, schedules and parametrisations.

Time convention: t = 0 is noise, t = 1 is data; x_t = alpha(t) x1 + sigma(t) eps. Paths by name
(``get_path``): "linear", "cosine", "polynomial", "ve", "vp", "subvp", "ve_t". The classic
diffusion time of VE/VP/sub-VP/ve_t is s = 1 - t.

A network predicting a velocity, a score, a denoiser E[x1 | x_t] or a noise E[eps | x_t] is
converted exactly to any other kind by ``convert`` / ``as_vector_field`` / ``as_score``.
``DDPMSchedule`` is the discrete schedule, with step k at model time t_k = 1 - k / T.
"""

from ._ddpm import DDPMSchedule
from ._gaussian_paths import (
    PATH_NAMES,
    CosinePath,
    GaussianPath,
    LinearPath,
    PolynomialPath,
    SubVPPath,
    VEPath,
    VETPath,
    VPPath,
    get_path,
)
from ._parametrisations import KINDS, as_score, as_vector_field, convert

__all__ = [
    "GaussianPath",
    "LinearPath",
    "CosinePath",
    "PolynomialPath",
    "VEPath",
    "VPPath",
    "SubVPPath",
    "VETPath",
    "PATH_NAMES",
    "get_path",
    "KINDS",
    "convert",
    "as_vector_field",
    "as_score",
    "DDPMSchedule",
]
