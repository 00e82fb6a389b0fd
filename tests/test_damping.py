"""The bottom drag the QG model lacks, as a correction term: its tendency, TL and AD."""

from __future__ import annotations

import numpy as np
import pytest

from fourdvar import checks
from fourdvar.registry import build_model
from models import QG, BottomDrag


def test_bottom_drag_is_the_qg_drag_term_and_a_truth_with_it_is_qg_with_the_summed_drag():
    rng = np.random.default_rng(31)
    q = 1e-5 * rng.standard_normal(2 * 12 * 12)
    drag = BottomDrag(rate=4e-7, nx=12, L=4e5)
    difference = QG(nx=12, L=4e5, rek=1e-7 + 4e-7).tendency(q, np.empty(0)) - QG(nx=12, L=4e5, rek=1e-7).tendency(q, np.empty(0))
    np.testing.assert_allclose(drag.tendency.evaluate(q, np.empty(0)), difference, rtol=0, atol=1e-12 * np.abs(difference).max())
    assert np.abs(difference[144:]).max() > 0 and np.all(drag.tendency.evaluate(q, np.empty(0))[:144] == 0)
    truth = build_model({"type": "tendency_hybrid", "physics": {"type": "qg", "nx": 12, "L": 4e5, "rek": 1e-7},
                         "correction": {"type": "bottom_drag", "rate": 4e-7, "nx": 12, "L": 4e5}})
    np.testing.assert_allclose(truth.step(q, np.empty(0)), QG(nx=12, L=4e5, rek=5e-7).step(q, np.empty(0)), rtol=0, atol=1e-14 * np.abs(q).max())
    np.testing.assert_array_equal(truth.unresolved_tendency(q), drag.tendency.evaluate(q, np.empty(0)))


def test_bottom_drag_adjoint_and_blocked_directions():
    rng = np.random.default_rng(32)
    drag = BottomDrag(rate=-3e-7, nx=12, ny=8, L=4e5, W=3e5)
    q = rng.standard_normal(drag.n_state)
    lin = drag.tendency.linearize(q, np.empty(0))
    dq, af = rng.standard_normal((drag.n_state, 3)), rng.standard_normal((drag.n_state, 3))
    tl, (aq, ap) = lin.tl(dq, np.zeros((0, 3))), lin.ad(af)
    np.testing.assert_allclose(np.sum(tl * af, axis=0), np.sum(dq * aq, axis=0), rtol=1e-12)
    assert ap.shape == (0, 3)
    np.testing.assert_array_equal(tl[:, 1], lin.tl(dq[:, 1], np.empty(0)))
    np.testing.assert_array_equal(aq[:, 2], lin.ad(af[:, 2])[0])
    wrong = lin.tendency.apply(lin.tendency.operator, af)  # negative control: the operator itself is not its adjoint
    assert not np.allclose(np.sum(tl * af, axis=0), np.sum(dq * wrong, axis=0), rtol=1e-3)
    results = checks.check_model(drag, q, np.empty(0), rng, n_steps=2, directions=2)
    assert all(r.passed for r in results), "\n".join(str(r) for r in results if not r.passed)


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), "fast", True, None])
def test_bottom_drag_refuses_a_rate_that_is_not_a_finite_number(rate):
    with pytest.raises(ValueError, match="rate must be a finite drag rate"):
        BottomDrag(rate=rate, nx=8)
