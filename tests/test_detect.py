"""The accusation statistics: exact fast scores, and p-values that hold for innocent codewords."""
from __future__ import annotations

import math
import os

import numpy as np

from watermark.codeword import expand
from watermark.detect import accusation_threshold, p_value, z_scores

RNG = np.random.default_rng(11)


def test_fast_scores_equal_the_definition_serial_and_on_every_core():
    residual = RNG.standard_t(3, size=12_605)  # heavy tails, a size that is not a multiple of 8
    seeds = [os.urandom(32) for _ in range(60_000)]
    naive = np.array([expand(s, residual.size) @ residual for s in seeds[:500]]) / np.linalg.norm(residual)
    serial = z_scores(residual, seeds, workers=1)
    parallel = z_scores(residual, seeds, workers=2)
    assert np.allclose(serial[:500], naive, atol=1e-5)
    assert np.allclose(serial, parallel, atol=1e-9)


def test_innocent_scores_stay_under_the_hoeffding_bound():
    """Codewords independent of the file: the share of z above t never exceeds exp(-t^2/2)."""
    residual = np.abs(RNG.standard_cauchy(size=12_608))  # skewed, heavy-tailed: no normality to lean on
    z = z_scores(residual, [os.urandom(32) for _ in range(20_000)], workers=1)
    for t in (1.0, 2.0, 3.0):
        assert np.mean(z >= t) <= math.exp(-t * t / 2)
    assert z.max() < math.sqrt(2 * math.log(20_000 / 1e-9))  # nobody accused at alpha 1e-9


def test_the_threshold_bounds_any_false_accusation_by_alpha():
    assert accusation_threshold(1_000_000, 1e-9) == 1e-15
    assert p_value(-3.0) == 1.0 and p_value(0.0) == 1.0
    assert math.isclose(p_value(8.0), math.exp(-32.0))
    z_needed = math.sqrt(2 * math.log(1_000_000 / 1e-9))
    assert p_value(z_needed) <= accusation_threshold(1_000_000, 1e-9) * (1 + 1e-9)


def test_an_empty_residual_scores_zero():
    assert np.all(z_scores(np.zeros(100), [b"a", b"b"], workers=1) == 0)


def test_the_anchor_watermark_reads_its_own_user_and_falls_to_a_permutation():
    """The Uchida-style baseline the robustness bench compares against behaves as the literature says."""
    from watermark.baseline import UchidaMark

    kernel = RNG.normal(0.0, 0.1, (64, 128))
    mark = UchidaMark("alice", kernel.size)
    marked = mark.embed(kernel)
    assert mark.p_value(marked) < 1e-20
    assert UchidaMark("bob", kernel.size).p_value(marked) > 1e-3
    assert mark.p_value(marked[:, RNG.permutation(128)]) > 1e-3
