"""Tests of fourdvar.covariances: each covariance against a dense matrix built
here, independently of the code under test, plus the adjoint (dot-product),
inverse and square-root identities, sampling statistics, validation errors and
negative controls showing the checks catch a wrong square root or inverse."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.linalg

from fourdvar import checks
from fourdvar.covariances import BlockDiagonal, Dense, Diagonal, PeriodicCorrelation
from fourdvar.interfaces import Covariance

EPS = np.finfo(float).eps
FLOOR = 1e-10  # PeriodicCorrelation's default relative eigenvalue floor


# --- independent references -----------------------------------------------------


def rho(shape: str, d: np.ndarray, L: float) -> np.ndarray:
    """The correlation functions, written out from their definitions."""
    if shape == "gaussian":
        return np.exp(-(d**2) / (2 * L**2))
    if shape == "soar":
        return (1 + d / L) * np.exp(-d / L)
    raise AssertionError(shape)


def periodic_reference(n: int, L: float, std, shape: str) -> tuple[np.ndarray, np.ndarray]:
    """``(exact, clipped)``: ``S Cor S`` with ``Cor[i, j] = rho(periodic distance)``,
    and the same with ``Cor``'s eigenvalues (from ``eigh``, not an FFT) clipped at
    ``FLOOR * max``."""
    i = np.arange(n)
    gap = np.abs(i[:, None] - i[None, :])
    cor = rho(shape, np.minimum(gap, n - gap).astype(float), L)
    w, Q = np.linalg.eigh(cor)
    cor_clipped = (Q * np.maximum(w, FLOOR * w.max())) @ Q.T
    s = np.broadcast_to(np.asarray(std, dtype=float), (n,))
    return s[:, None] * cor * s[None, :], s[:, None] * cor_clipped * s[None, :]


def dense_of(cov) -> np.ndarray:
    """The matrix of ``cov.apply``, column by column."""
    return np.column_stack([cov.apply(e) for e in np.eye(cov.size)]) if cov.size else np.zeros((0, 0))


def std_profile(n: int, amplitude: float = 0.5) -> np.ndarray:
    """A smoothly varying standard deviation, between 1 - amplitude and 1 + amplitude."""
    return 1.0 + amplitude * np.sin(2 * np.pi * np.arange(n) / n)


def random_spd(n: int, seed: int) -> np.ndarray:
    G = np.random.default_rng(seed).standard_normal((n, n))
    return G @ G.T / n + 0.1 * np.eye(n)


def relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- the cases: (covariance, dense reference) --------------------------------------

# Periodic cases whose clipping is inactive (the exact circulant is well enough
# conditioned that C^-1 C v == v holds to 1e-10): gaussian up to L = 1.5 and
# SOAR up to L = 5 grid points, even and odd sizes, flat and varying std.
PERIODIC_WELL_CONDITIONED = [
    ("gaussian", 16, 0.5, 1.0),
    ("gaussian", 31, 1.0, "profile"),
    ("gaussian", 40, 1.5, 2.5),
    ("soar", 17, 1.0, "profile"),
    ("soar", 40, 3.0, 0.7),
    ("soar", 101, 5.0, "profile"),
]
# Cases where clipping acts: round-off-negative eigenvalues of a long gaussian,
# and genuinely negative ones of a correlation wrapped on a short circle.
PERIODIC_CLIPPED = [
    ("gaussian", 8, 2.0, 1.0),
    ("gaussian", 40, 5.0, "profile"),
    ("gaussian", 101, 10.0, 3.0),
    ("soar", 40, 10.0, "profile"),
    ("soar", 63, 8.0, 1.0),
]


def make_periodic(shape, n, L, std):
    std = std_profile(n) if std == "profile" else std
    cov = PeriodicCorrelation(n, L, std=std, shape=shape)
    return cov, *periodic_reference(n, L, std, shape)


def _block_case():
    rng = np.random.default_rng(7)
    p_cov, _, p_ref = make_periodic("soar", 20, 2.0, "profile")
    d_ref = random_spd(6, seed=3)
    std4 = rng.uniform(0.2, 2.0, 4)
    blocks = [p_cov, Dense(d_ref), Diagonal(np.empty(0)), Diagonal(std4)]
    return BlockDiagonal(blocks), scipy.linalg.block_diag(p_ref, d_ref, np.zeros((0, 0)), np.diag(std4**2))


def _dense_case():
    A = random_spd(12, seed=1)
    s = np.random.default_rng(2).uniform(0.5, 3.0, 12)
    return Dense(s[:, None] * A * s[None, :]), s[:, None] * A * s[None, :]


CASES = {
    "diagonal-scalar": lambda: (Diagonal(1.7, size=7), 1.7**2 * np.eye(7)),
    "diagonal-array": lambda: (
        Diagonal(s := np.random.default_rng(0).uniform(0.3, 3.0, 9)), np.diag(s**2)
    ),
    "diagonal-identity": lambda: (Diagonal.identity(5), np.eye(5)),
    "dense-spd": lambda: (Dense(A := random_spd(10, seed=0)), A),
    "dense-scaled": _dense_case,
    **{
        f"periodic-{shape}-n{n}-L{L}-std{std}": (
            lambda shape=shape, n=n, L=L, std=std: make_periodic(shape, n, L, std)[:2]  # exact: clipping is inactive (tested below)
        )
        for shape, n, L, std in PERIODIC_WELL_CONDITIONED
    },
    "block-with-size-0": _block_case,
    "block-state-no-params": lambda: (
        BlockDiagonal([Diagonal(0.5, size=5), Diagonal(1.0, size=0)]), 0.25 * np.eye(5)
    ),
}


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request):
    return CASES[request.param]()


# --- identities and the dense reference ------------------------------------------------


def test_is_a_covariance_with_the_reference_size_and_std(case):
    cov, ref = case
    assert isinstance(cov, Covariance)
    assert cov.size == ref.shape[0]
    assert cov.std.shape == (cov.size,)
    np.testing.assert_allclose(cov.std**2, np.diag(ref), rtol=1e-14, atol=0)


def test_sqrt_and_sqrt_t_pass_the_dot_product_test(case):
    cov, _ = case
    rng = np.random.default_rng(11)
    for _ in range(3):
        result = checks.covariance_sqrt_adjoint_test(cov, rng)
        assert result.passed, str(result)
        assert result.value < 1e-12


def test_solve_inverts_apply_and_sqrt_sqrt_t_is_apply(case):
    cov, _ = case
    result = checks.covariance_inverse_test(cov, np.random.default_rng(12), tolerance=1e-10)
    assert result.passed, str(result)


def test_apply_equals_the_dense_reference(case):
    cov, ref = case
    if cov.size == 0:
        return
    assert relative(dense_of(cov), ref) < 1e-12
    v = np.random.default_rng(13).standard_normal(cov.size)
    assert relative(cov.apply(v), ref @ v) < 1e-12
    assert relative(cov.solve(v), np.linalg.solve(ref, v)) < 1e-10
    S = np.column_stack([cov.sqrt(e) for e in np.eye(cov.size)])
    ST = np.column_stack([cov.sqrt_t(e) for e in np.eye(cov.size)])
    assert np.max(np.abs(ST - S.T)) < 1e-13 * np.max(np.abs(S))  # sqrt_t is sqrt's transpose
    assert relative(S @ S.T, ref) < 1e-12


@pytest.mark.parametrize("shape, n, L, std", PERIODIC_WELL_CONDITIONED)
def test_periodic_reference_has_std_squared_on_the_diagonal_and_clipping_is_inactive(shape, n, L, std):
    cov, exact, clipped = make_periodic(shape, n, L, std)
    np.testing.assert_allclose(np.diag(exact), cov.std**2, rtol=1e-15, atol=0)
    np.testing.assert_allclose(np.diag(dense_of(cov)), cov.std**2, rtol=1e-12, atol=0)
    assert cov.n_clipped == 0 and cov.clipping == 0.0
    assert np.linalg.eigvalsh(exact).min() > 0
    assert relative(clipped, exact) < 1e-13  # the eigh round trip changes nothing else


@pytest.mark.parametrize("shape, n, L, std", PERIODIC_CLIPPED)
def test_clipped_periodic_matches_the_clipped_reference_and_is_near_the_exact_circulant(shape, n, L, std):
    cov, exact, clipped = make_periodic(shape, n, L, std)
    assert cov.n_clipped > 0
    C = dense_of(cov)
    assert relative(C, clipped) < 1e-12
    np.testing.assert_allclose(np.diag(exact), cov.std**2, rtol=1e-15, atol=0)
    # Clipping moves Cor by cov.clipping in the 2-norm, hence C by at most clipping * max(std)^2.
    bound = cov.clipping * np.max(cov.std) ** 2
    assert np.linalg.norm(C - exact, 2) <= bound * (1 + 1e-8) + 1e-14
    assert np.max(np.abs(np.diag(C) - cov.std**2)) <= bound * (1 + 1e-8) + 1e-14
    assert cov.condition_number == pytest.approx(1 / FLOOR, rel=1e-6)


@pytest.mark.parametrize("shape, n, L, std", PERIODIC_CLIPPED)
def test_clipped_periodic_identities_hold_to_the_accuracy_its_conditioning_allows(shape, n, L, std):
    cov, _, clipped = make_periodic(shape, n, L, std)
    rng = np.random.default_rng(21)
    assert checks.covariance_sqrt_adjoint_test(cov, rng).value < 1e-12
    v = rng.standard_normal(n)
    assert relative(cov.sqrt(cov.sqrt_t(v)), cov.apply(v)) < 1e-12
    # Forward error of C^-1 C v is bounded by ~ eps * cond(C) (cond ~ 1e10 here);
    # the backward error of solve (residual relative to |C| |x|) is at round-off.
    cond = np.linalg.cond(clipped)
    assert cond > 1e9
    result = checks.covariance_inverse_test(cov, rng, tolerance=10 * EPS * cond)
    assert result.passed, str(result)
    x = cov.solve(v)
    assert np.linalg.norm(cov.apply(x) - v) / (np.linalg.norm(clipped, 2) * np.linalg.norm(x)) < 1e-13


def test_periodic_applies_by_fft_at_a_size_where_the_matrix_would_not_fit():
    n, L = 400_000, 12.0  # a dense matrix would need 1.3 TB
    cov = PeriodicCorrelation(n, L, std=2.0, shape="soar")
    # C 1 = std^2 * (row sum of Cor) * 1: every row of a circulant has the same sum.
    i = np.arange(n)
    row_sum = rho("soar", np.minimum(i, n - i).astype(float), L).sum()
    np.testing.assert_allclose(cov.apply(np.ones(n)), 4.0 * row_sum, rtol=1e-12)
    # solve(apply(v)) == v to ~eps * cond (cond ~ 2e7 for SOAR with L = 12).
    np.testing.assert_allclose(cov.solve(cov.apply(np.ones(n))), 1.0, rtol=10 * EPS * cov.condition_number)


def test_dense_square_root_is_the_lower_cholesky_factor():
    A = random_spd(8, seed=4)
    cov = Dense(A)
    L = np.column_stack([cov.sqrt(e) for e in np.eye(8)])
    np.testing.assert_array_equal(L, np.tril(L))
    assert np.all(np.diag(L) > 0)
    assert relative(L @ L.T, A) < 1e-14


def test_block_diagonal_exposes_blocks_and_slices_and_acts_blockwise():
    cov, _ = _block_case()
    assert [b.size for b in cov.blocks] == [20, 6, 0, 4]
    assert cov.slices == (slice(0, 20), slice(20, 26), slice(26, 26), slice(26, 30))
    assert cov.size == 30
    v = np.random.default_rng(5).standard_normal(30)
    for method in ("apply", "solve", "sqrt", "sqrt_t"):
        expected = np.concatenate([getattr(b, method)(v[s]) for b, s in zip(cov.blocks, cov.slices)])
        np.testing.assert_array_equal(getattr(cov, method)(v), expected)


def test_a_size_zero_covariance_works():
    for cov in (Diagonal(np.empty(0)), Diagonal(3.0, size=0), BlockDiagonal([Diagonal(1.0, size=0)])):
        assert cov.size == 0
        for method in ("apply", "solve", "sqrt", "sqrt_t"):
            assert getattr(cov, method)(np.empty(0)).shape == (0,)
        assert cov.sample(np.random.default_rng(0)).shape == (0,)


# --- sampling -------------------------------------------------------------------------------

SAMPLE_CASES = {
    "diagonal": lambda: Diagonal(np.linspace(0.5, 2.0, 6)),
    "dense": lambda: Dense(random_spd(6, seed=9)),
    "periodic-gaussian": lambda: PeriodicCorrelation(10, 1.5, std=std_profile(10), shape="gaussian"),
    "periodic-soar": lambda: PeriodicCorrelation(9, 1.0, std=2.0, shape="soar"),
    "block": lambda: BlockDiagonal(
        [PeriodicCorrelation(7, 1.0), Diagonal(1.0, size=0), Diagonal(np.array([0.3, 1.0, 3.0]))]
    ),
}
N_SAMPLES = 20_000


def _max_z_score(samples: np.ndarray, C: np.ndarray) -> float:
    """Largest |C_hat_ij - C_ij| in units of its standard error.

    For zero-mean Gaussian samples the estimate ``C_hat = X^T X / N`` has
    ``var(C_hat_ij) = (C_ii C_jj + C_ij^2) / N``.
    """
    C_hat = samples.T @ samples / len(samples)
    se = np.sqrt((np.outer(np.diag(C), np.diag(C)) + C**2) / len(samples))
    return float(np.max(np.abs(C_hat - C) / se))


@pytest.mark.parametrize("name", list(SAMPLE_CASES))
def test_sample_covariance_matches_apply_within_sampling_error(name):
    cov = SAMPLE_CASES[name]()
    rng = np.random.default_rng(2024)
    samples = np.array([cov.sample(rng) for _ in range(N_SAMPLES)])
    C = dense_of(cov)
    # At most ~55 distinct entries: 5 standard errors is a tail probability of
    # ~6e-7 each, so a correct sampler passes and (see below) a 10 % error in std fails.
    assert _max_z_score(samples, C) < 5.0
    mean_z = np.abs(samples.mean(axis=0)) / np.sqrt(np.diag(C) / N_SAMPLES)
    assert mean_z.max() < 5.0
    # Negative control: against a covariance with std 10 % too large the same
    # samples are far outside the tolerance, so the test has power.
    assert _max_z_score(samples, dense_of(cov.with_std(1.1 * cov.std))) > 10.0


@pytest.mark.parametrize("name", list(SAMPLE_CASES))
def test_same_seed_gives_the_same_sample(name):
    cov = SAMPLE_CASES[name]()
    a = cov.sample(np.random.default_rng(42))
    b = cov.sample(np.random.default_rng(42))
    c = cov.sample(np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# --- with_std ----------------------------------------------------------------------------------


def test_with_std_sets_the_new_std_and_keeps_the_correlation(case):
    cov, _ = case
    rng = np.random.default_rng(31)
    for new_std in (rng.uniform(0.2, 4.0, cov.size), 2.5):
        new = cov.with_std(new_std)
        assert type(new) is type(cov) and new.size == cov.size
        np.testing.assert_allclose(new.std, np.broadcast_to(new_std, (cov.size,)), rtol=1e-15)
        if cov.size:
            old_C, new_C = dense_of(cov), dense_of(new)
            old_cor = old_C / np.outer(cov.std, cov.std)
            new_cor = new_C / np.outer(new.std, new.std)
            assert relative(new_cor, old_cor) < 1e-12
        assert checks.covariance_sqrt_adjoint_test(new, rng).passed


def test_with_std_does_not_change_the_original():
    cov = PeriodicCorrelation(12, 1.0, std=std_profile(12))
    before = dense_of(cov)
    cov.with_std(3.0)
    np.testing.assert_array_equal(dense_of(cov), before)


def test_with_std_on_a_block_diagonal_splits_the_profile_by_block():
    cov, _ = _block_case()
    new_std = np.arange(1.0, 31.0)
    new = cov.with_std(new_std)
    for block, s in zip(new.blocks, new.slices):
        np.testing.assert_allclose(block.std, new_std[s], rtol=1e-15)


# --- errors -------------------------------------------------------------------------------------

ERRORS = [
    (lambda: Dense([[1.0, 2.0], [2.0, 1.0]]), "not positive-definite"),
    (lambda: Dense([[2.0, 1.0], [0.0, 2.0]]), "not symmetric"),
    (lambda: Dense(np.eye(3)[:2]), r"must be square, got shape \(2, 3\)"),
    (lambda: Dense([[1.0, np.nan], [np.nan, 1.0]]), "finite"),
    (lambda: Diagonal(np.array([1.0, -0.5, 2.0])), "std must be positive"),
    (lambda: Diagonal(np.array([1.0, 0.0])), "std must be positive"),
    (lambda: Diagonal(np.array([1.0, np.inf])), "std must be finite"),
    (lambda: Diagonal(np.array([1.0, np.nan])), "std must be finite"),
    (lambda: Diagonal(-1.0, size=3), "std must be positive"),
    (lambda: Diagonal(1.0), "size is required"),
    (lambda: Diagonal(np.ones(3), size=4), r"std: expected a scalar or shape \(4,\), got shape \(3,\)"),
    (lambda: PeriodicCorrelation(10, 0.0), "length_scale"),
    (lambda: PeriodicCorrelation(10, -2.0), "length_scale"),
    (lambda: PeriodicCorrelation(10, np.nan), "length_scale"),
    (lambda: PeriodicCorrelation(10, 1.0, std=-1.0), "std must be positive"),
    (lambda: PeriodicCorrelation(10, 1.0, std=np.ones(9)), r"std: expected a scalar or shape \(10,\), got shape \(9,\)"),
    (lambda: PeriodicCorrelation(0, 1.0), "size must be >= 1"),
    (lambda: PeriodicCorrelation(10, 1.0, shape="exponential"), "unknown correlation shape 'exponential'"),
    (lambda: PeriodicCorrelation(10, 1.0).with_std(0.0), "std must be positive"),
    (lambda: BlockDiagonal([]), "at least one"),
    (lambda: BlockDiagonal([Diagonal(1.0, size=2)]).with_std(np.ones(3)), r"std: expected .*\(2,\), got shape \(3,\)"),
]


@pytest.mark.parametrize("make, message", ERRORS, ids=[m for _, m in ERRORS])
def test_bad_arguments_raise_value_error_naming_the_problem(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("method", ["apply", "solve", "sqrt", "sqrt_t"])
def test_wrong_vector_shape_raises_naming_expected_and_got(case, method):
    cov, _ = case
    n = cov.size
    for bad in (np.ones(n + 1), np.ones((n, 1)), np.float64(1.0)):
        message = re.escape(f"expected a vector of shape ({n},), got shape {np.shape(bad)}")
        with pytest.raises(ValueError, match=message):
            getattr(cov, method)(bad)


# --- negative controls: the checks catch wrong code ---------------------------------------------


class DenseWithWrongSqrtT(Dense):
    """``sqrt_t`` returns ``L v`` instead of ``L^T v``."""

    def sqrt_t(self, v):
        return self.sqrt(v)


class PeriodicWithWrongSqrtT(PeriodicCorrelation):
    """``sqrt_t`` applies ``S G`` (= ``C^1/2``) instead of ``G S``."""

    def sqrt_t(self, v):
        return self.sqrt(v)


class PeriodicWithWrongSolve(PeriodicCorrelation):
    """``solve`` forgets one ``S^-1``."""

    def solve(self, v):
        return self._circulant(self._inv_lam, v / self.std)


@pytest.mark.parametrize(
    "cov",
    [DenseWithWrongSqrtT(random_spd(10, seed=5)), PeriodicWithWrongSqrtT(24, 2.0, std=std_profile(24), shape="soar")],
    ids=["dense-cholesky", "periodic-varying-std"],
)
def test_a_wrong_sqrt_t_fails_the_dot_product_test(cov):
    result = checks.covariance_sqrt_adjoint_test(cov, np.random.default_rng(3))
    assert not result.passed
    assert result.value > 1e-3


def test_a_wrong_solve_fails_the_inverse_test():
    cov = PeriodicWithWrongSolve(24, 2.0, std=std_profile(24), shape="soar")
    result = checks.covariance_inverse_test(cov, np.random.default_rng(4))
    assert not result.passed
    assert result.value > 1e-2
