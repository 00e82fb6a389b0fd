"""The covariance protocol's ``record()`` / ``from_record``, and the capabilities the application reads through ``declared``."""

import numpy as np
import pytest

from fourdvar.covariances import BlockDiagonal, Dense, Diagonal, PeriodicCorrelation
from fourdvar.covariances2d import PeriodicCorrelation2D
from fourdvar.ensemble import HybridEnsembleCovariance, ensemble_perturbations
from fourdvar.interfaces import ObservationOperatorBase, declared
from fourdvar.model import ModelBase
from fourdvar.posterior import LowRankCovariance


def _spd(n, rng):
    A = rng.standard_normal((n, n))
    return A @ A.T + n * np.eye(n)


def _covariances():
    """``(covariance, rebuild)`` for each class: ``rebuild(record)`` is its ``from_record``."""
    rng = np.random.default_rng(3)
    U, _ = np.linalg.qr(rng.standard_normal((6, 2)))
    return {
        "diagonal": (Diagonal(np.linspace(0.5, 2.0, 6)), Diagonal.from_record),
        "dense": (Dense(_spd(6, rng)), Dense.from_record),
        "periodic": (PeriodicCorrelation(6, 1.5, std=np.linspace(1.0, 2.0, 6), shape="soar"), PeriodicCorrelation.from_record),
        "periodic_2d": (PeriodicCorrelation2D(4, 3, 1.2, std=[1.0, 2.0], n_fields=2, vertical=[[1.0, 0.3], [0.3, 1.0]]),
                        PeriodicCorrelation2D.from_record),
        "block_diagonal": (BlockDiagonal([Diagonal([1.0, 2.0]), Dense(_spd(4, rng))]),
                           lambda record: BlockDiagonal.from_record(record, (Diagonal, Dense))),
        "low_rank": (LowRankCovariance(Diagonal(np.linspace(1.0, 3.0, 6)), U, np.array([0.5, 2.0])), LowRankCovariance.from_record),
        "hybrid": (HybridEnsembleCovariance(PeriodicCorrelation(6, 1.5, std=2.0), ensemble_perturbations(rng.standard_normal((4, 6))), 0.4, 2.0),
                   lambda record: HybridEnsembleCovariance.from_record(record, PeriodicCorrelation)),
    }


@pytest.mark.parametrize("name", list(_covariances()))
def test_covariance_from_its_record_applies_bit_for_bit(name):
    C, rebuild = _covariances()[name]
    record = C.record()
    assert all(isinstance(value, (np.ndarray, float, int, str)) for value in record.values())
    np.testing.assert_array_equal(record["std"], C.std)
    v = np.random.default_rng(4).standard_normal(C.size)
    np.testing.assert_array_equal(rebuild(record).apply(v), C.apply(v))
    # negative control: the record is what rebuilds it, so a changed std changes C v
    changed = {**record, **{key: 2.0 * value for key, value in record.items() if key.endswith("std")}}
    if name in ("dense", "block_diagonal"):  # the matrix, not its std, defines a dense block
        changed = {key: 2.0 * value if key.endswith("matrix") else value for key, value in record.items()}
    assert not np.allclose(rebuild(changed).apply(v), C.apply(v), rtol=1e-3)


def test_record_of_a_covariance_without_the_base_class_gives_its_std():
    class Scaled:  # C = 4 I, written without CovarianceBase
        size = 3

        def sqrt_t(self, v):
            return 2.0 * v

    np.testing.assert_array_equal(declared(Scaled(), "record")()["std"], [2.0, 2.0, 2.0])


def test_model_and_operator_capabilities_have_their_declared_defaults():
    class Plain:  # a model written without ModelBase
        n_state, n_params = 2, 0

    class Timed(ModelBase):
        n_state, n_params, dt = 2, 0, 0.05

    assert [declared(Plain(), name) for name in ("dt", "nx", "param_names", "correction", "unresolved_tendency")] == [None] * 5
    assert declared(Timed(), "dt") == 0.05 and declared(Timed(), "tendency") is None

    class Fixed:  # an operator written without ObservationOperatorBase
        n_obs = 1

    operator = Fixed()
    assert declared(operator, "at_step")(7) is operator
    base = ObservationOperatorBase()
    assert base.at_step(3) is base
