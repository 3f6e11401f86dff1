"""Random draws of regimen anchors and truncated-normal masses, against scipy.

Found by mutation testing (tests/README.md): the uniform distribution of a regimen anchor
(e.g. the end of surgery) was never drawn by any test, and the far-tail branch of the
truncated-normal mass used by the population checks was never reached. References are
the inverse CDFs of scipy.stats applied to the very uniforms the generator produced.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from pkpd.errors import RegimenError
from pkpd.inputs.population import _mass
from pkpd.inputs.regimen import _read_anchor

N = 2000


def _uniforms(seed):
    return np.random.default_rng(seed).random(N)


def test_uniform_anchor_draws_scale_the_generator_uniforms_to_the_range():
    a = _read_anchor(
        "eos", {"distribution": "uniform", "range": ["2 h", "6 h"], "source": "x"}, None
    )
    assert a.default == 4.0  # the centre, for a single patient
    x = a.sample(np.random.default_rng(5), N)
    np.testing.assert_allclose(x, 2.0 + 4.0 * _uniforms(5), rtol=1e-15)


def test_normal_anchor_draws_are_the_truncated_inverse_cdf():
    d = {"distribution": "normal", "mean": "3 h", "sd": "1 h", "range": ["2 h", "7 h"]}
    a = _read_anchor("eos", d | {"source": "x"}, None)
    x = a.sample(np.random.default_rng(6), N)
    lo, hi = stats.norm.cdf([-1.0, 4.0])
    np.testing.assert_allclose(x, 3.0 + stats.norm.ppf(lo + _uniforms(6) * (hi - lo)), rtol=1e-12)
    assert x.min() >= 2.0 and x.max() <= 7.0


def test_lognormal_anchor_draws_are_the_truncated_inverse_cdf():
    d = {"distribution": "lognormal", "median": "4 h", "gsd": 1.5, "range": ["1 h", "8 h"]}
    a = _read_anchor("eos", d | {"source": "x"}, None)
    x = a.sample(np.random.default_rng(7), N)
    ref = stats.lognorm(s=np.log(1.5), scale=4.0)
    lo, hi = ref.cdf(1.0), ref.cdf(8.0)
    np.testing.assert_allclose(x, ref.ppf(lo + _uniforms(7) * (hi - lo)), rtol=1e-10)


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"distribution": "uniform"}, r"`anchors\.eos\.range`: a uniform distribution needs"),
        ({"distribution": "gamma", "range": ["1 h", "2 h"]}, r"'gamma'; expected fixed, normal"),
    ],
)
def test_anchor_distribution_errors(d, match):
    with pytest.raises(RegimenError, match=match):
        _read_anchor("eos", d | {"source": "x"}, "r.toml")


@pytest.mark.parametrize(("a", "b"), [(9.0, 10.0), (-10.0, -9.0), (-1.0, 2.0), (6.0, np.inf)])
def test_truncated_normal_mass_is_accurate_in_either_tail(a, b):
    """P(a < Z < b), also where ``cdf(b) - cdf(a)`` would cancel to 0 (far tails); the
    reference is the integral of the density (scipy.integrate.quad)."""
    want, err = integrate.quad(stats.norm.pdf, a, b, epsabs=0.0, epsrel=1e-12)
    assert want > 0 and err < 1e-10 * want
    assert _mass(a, b) == pytest.approx(want, rel=1e-9, abs=0.0)
