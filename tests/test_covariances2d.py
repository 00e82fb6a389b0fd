"""The 2-D periodic correlation covariance: adjoint, factorisation, inverse, variances, columns."""

import numpy as np
import pytest

from fourdvar import checks
from fourdvar.covariances import PeriodicCorrelation
from fourdvar.covariances2d import PeriodicCorrelation2D
from fourdvar.posterior import variance

VERTICAL = [[1.0, 0.6], [0.6, 1.0]]


def covariance(shape="gaussian", **options):
    settings = dict(nx=16, ny=12, length_scale=1.5, std=[2.0, 0.5], shape=shape, n_fields=2, vertical=VERTICAL)
    return PeriodicCorrelation2D(**{**settings, **options})


def relative(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("shape", ["gaussian", "soar"])
def test_sqrt_t_is_the_adjoint_of_sqrt(shape):
    C = covariance(shape)
    result = checks.covariance_sqrt_adjoint_test(C, np.random.default_rng(1))
    assert result.passed and result.value < 1e-12


def test_a_wrong_sqrt_t_fails_the_adjoint_test():
    C = covariance()
    C.sqrt_t = lambda v: PeriodicCorrelation2D.sqrt_t(C, v[::-1].copy())  # planted error
    assert checks.covariance_sqrt_adjoint_test(C, np.random.default_rng(1)).value > 1e-3


@pytest.mark.parametrize("shape", ["gaussian", "soar"])
def test_apply_is_sqrt_times_sqrt_t_and_solve_inverts_it(shape):
    C = covariance(shape, min_eigenvalue=1e-6)
    v = np.random.default_rng(2).standard_normal(C.size)
    assert relative(C.sqrt(C.sqrt_t(v)), C.apply(v)) < 1e-13
    assert relative(C.solve(C.apply(v)), v) < 1e-8
    assert relative(C.apply(C.solve(v)), v) < 1e-8


def test_the_matrix_is_symmetric_with_the_stated_variances_and_vertical_correlation():
    C = covariance()
    M = C.apply_columns(np.eye(C.size))
    assert np.abs(M - M.T).max() < 1e-14 * np.abs(M).max()
    np.testing.assert_allclose(np.diag(M), C.variance(), rtol=1e-13)
    np.testing.assert_allclose(variance(C), C.variance(), rtol=0)  # the posterior's helper uses it
    n = C.size // 2
    std = np.sqrt(np.diag(M))
    np.testing.assert_allclose(M[0, n] / (std[0] * std[n]), 0.6, rtol=1e-12)  # same point, other layer
    assert abs(C.correlation_diagonal - 1) <= C.clipping + 1e-15  # the clipping bounds how far diag(Cor) is from 1


def test_one_field_one_row_is_the_outer_product_of_two_1d_gaussians():
    """A Gaussian is separable: on one row (ny = 1) the 2-D correlation is the 1-D one."""
    C2 = PeriodicCorrelation2D(20, 1, 2.0, std=1.3)
    C1 = PeriodicCorrelation(20, 2.0, std=1.3)
    v = np.random.default_rng(3).standard_normal(20)
    assert relative(C2.apply(v), C1.apply(v)) < 1e-14


def test_columns_equal_single_vectors_and_samples_have_the_right_variance():
    C = covariance("soar")
    W = np.random.default_rng(4).standard_normal((C.size, 3))
    for method in ("apply", "solve", "sqrt", "sqrt_t"):
        batch = getattr(C, f"{method}_columns")(W)
        single = np.column_stack([getattr(C, method)(w) for w in W.T])
        assert relative(batch, single) < 1e-14, method
    draws = C.sample(np.random.default_rng(5), n=4000)
    np.testing.assert_allclose(draws.var(axis=1).mean() / C.variance().mean(), 1.0, atol=0.03)


def test_with_std_keeps_the_correlation():
    C = covariance()
    D = C.with_std(3.0)
    np.testing.assert_allclose(D.variance(), 9.0 * C.correlation_diagonal)
    v = np.random.default_rng(6).standard_normal(C.size)
    assert relative(D.apply(v) / 9.0, C.with_std(1.0).apply(v)) < 1e-14


@pytest.mark.parametrize("options, message", [
    ({"std": [1.0, 2.0, 3.0]}, "one per field"),
    ({"vertical": [[1.0, 0.5]]}, "(2, 2)"),
    ({"vertical": [[1.0, 1.5], [1.5, 1.0]]}, "positive-definite"),
    ({"vertical": [[2.0, 0.0], [0.0, 1.0]]}, "ones on its diagonal"),
    ({"length_scale": -1.0}, "length_scale"),
    ({"shape": "cubic"}, "unknown correlation shape"),
])
def test_bad_arguments_are_refused_in_one_line(options, message):
    with pytest.raises(ValueError, match=None) as error:
        covariance(**options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_vector_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"shape \(384,\)"):
        covariance().sqrt(np.zeros(383))
