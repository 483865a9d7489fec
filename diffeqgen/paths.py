"""Gaussian probability paths, schedules and parametrisations.

Time convention: t = 0 is noise, t = 1 is data; x_t = alpha(t) x1 + sigma(t) eps. Paths by name
(``get_path``): "linear", "cosine", "polynomial", "ve", "vp", "subvp", "ve_t". The classic
diffusion time of VE/VP/sub-VP/ve_t is s = 1 - t.

A network predicting a velocity, a score, a denoiser E[x1 | x_t] or a noise E[eps | x_t] is
converted exactly to any other kind by ``convert`` / ``as_vector_field`` / ``as_score``; so is a
noise-conditional score network ``model(sigma, x, args)`` (NCSM / DSM, kind "noise_conditional").

A new path needs only alpha(t) and sigma(t): ``custom_path(alpha, sigma)``, or a subclass of
``GaussianPath`` overriding ``alpha`` and ``sigma`` (derivatives by autodiff unless given). Each
path knows its reference at t = 0, ``path.prior(event_shape)`` = N(0, sigma(0)^2 I), which
``diffeqgen.cnf.log_prob`` uses by default for a field built by
``as_vector_field(model, path, kind)``.
``DDPMSchedule`` is the discrete schedule, with step k at model time t_k = 1 - k / T.
"""

from ._custom_paths import CustomPath, custom_path
from ._ddpm import DDPMSchedule
from ._gaussian_paths import (
    PATH_NAMES,
    CosinePath,
    GaussianPath,
    IsotropicGaussian,
    LinearPath,
    PolynomialPath,
    SubVPPath,
    VEPath,
    VETPath,
    VPPath,
    get_path,
)
from ._parametrisations import KINDS, MODEL_KINDS, as_score, as_vector_field, convert

__all__ = [
    "GaussianPath",
    "LinearPath",
    "CosinePath",
    "PolynomialPath",
    "VEPath",
    "VPPath",
    "SubVPPath",
    "VETPath",
    "CustomPath",
    "custom_path",
    "IsotropicGaussian",
    "PATH_NAMES",
    "get_path",
    "KINDS",
    "MODEL_KINDS",
    "convert",
    "as_vector_field",
    "as_score",
    "DDPMSchedule",
]
