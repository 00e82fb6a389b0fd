"""Offline fit of a learned tendency to known target tendencies.

Given states ``x_s`` and target tendencies ``u_s`` (``s = 1 .. N``), find the
parameters ``p`` of a tendency ``f(x, p)`` minimising::

    L(p) = 1/(2N) sum_s |f(x_s, p) - u_s|^2        grad L = 1/N sum_s f_p(x_s)^T (f(x_s, p) - u_s)

with scipy's L-BFGS-B, the gradient from the tendency's own adjoint.  It minimises
``L(p) / L_0``, ``L_0 = 1/(2N) sum_s |u_s|^2`` the loss of a zero tendency, so that
L-BFGS-B's tolerances act alike in any units (a tendency of 1e-12 per second is
fitted as one of order 1).  The
tendency is any object with ``linearize(x, p)`` returning ``output`` and
``ad(af) -> (ax, ap)`` (the tendencies of :mod:`models` qualify).  Used to build
the "best offline correction" reference of a model-error experiment.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize

__all__ = ["fit_tendency"]


def fit_tendency(tendency, states: np.ndarray, targets: np.ndarray, p0: np.ndarray, max_iterations: int = 500) -> tuple[np.ndarray, float]:
    """``(p, L(p))`` after at most ``max_iterations`` L-BFGS iterations from ``p0``.

    Fits the parameters of a tendency to target tendencies, the loss of the module
    docstring, with its gradient from the tendency's adjoint (backpropagation).

    Parameters
    ----------
    tendency : object
        With ``linearize(x, p)`` returning ``output`` (``f(x, p)``) and ``ad(af) -> (ax, ap)``.
    states, targets : numpy.ndarray, shape (m, n)
        The samples ``x_s`` and the tendencies ``u_s`` to fit.
    p0 : numpy.ndarray
        The first guess of the parameters.
    max_iterations : int, default 500
        The L-BFGS iterations at most.

    Returns
    -------
    p : numpy.ndarray
        The fitted parameters.
    loss : float
        ``L(p)``.

    Examples
    --------
    A linear tendency ``f(x, p) = p x`` fitted to ``u = 2 x``:

    >>> from types import SimpleNamespace
    >>> linear = SimpleNamespace(linearize=lambda x, p: SimpleNamespace(
    ...     output=p[0] * x, ad=lambda af: (p[0] * af, np.array([af @ x]))))
    >>> states = np.random.default_rng(0).standard_normal((20, 3))
    >>> p, loss = fit_tendency(linear, states, 2 * states, p0=np.zeros(1))
    >>> bool(abs(p[0] - 2) < 1e-6), bool(loss < 1e-10)
    (True, True)
    """
    n_samples = len(states)
    zero_loss = 0.5 * float(np.sum(np.square(targets))) / n_samples or 1.0

    def loss_and_gradient(p):
        loss, gradient = 0.0, np.zeros_like(p)
        for x, u in zip(states, targets):
            lin = tendency.linearize(x, p)
            residual = (lin.output - u) / n_samples
            loss += 0.5 * n_samples * float(residual @ residual)
            gradient += lin.ad(residual)[1]
        return loss / zero_loss, gradient / zero_loss

    result = scipy.optimize.minimize(loss_and_gradient, p0, jac=True, method="L-BFGS-B", options={"maxiter": max_iterations})
    return result.x, float(result.fun) * zero_loss
