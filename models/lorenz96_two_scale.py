"""The two-scale Lorenz-96 system (Lorenz 1996), integrated by classical RK4, with exact TL and AD.

``K >= 4`` slow variables ``X_k`` on one periodic ring, and ``J >= 1`` fast variables
per slow one, ``Y_j`` for ``j = 0 .. JK-1``, on a second periodic ring of ``JK``
points; ``Y_{j,k} = Y[k J + j]`` is the ``j``-th fast variable of sector ``k`` and
``k(j) = j // J`` the sector of fast variable ``j``.  With ``h`` the coupling, ``c``
the time scale, ``b`` the space scale and ``s = h c / b``::

    NL   fX_k = (X_{k+1} - X_{k-2}) X_{k-1} - X_k + F - s Ysum_k          Ysum_k = sum_{j<J} Y_{j,k}
         fY_j = -c b Y_{j+1} (Y_{j+2} - Y_{j-1}) - c Y_j + s X_{k(j)}

    TL   dfX_k = (dX_{k+1} - dX_{k-2}) X_{k-1} + (X_{k+1} - X_{k-2}) dX_{k-1} - dX_k + dF - s dYsum_k
         dfY_j = -c b [dY_{j+1} (Y_{j+2} - Y_{j-1}) + Y_{j+1} (dY_{j+2} - dY_{j-1})] - c dY_j + s dX_{k(j)}

    AD   (fY first, then fX: the TL statements in reverse order; every adjoint starts at zero)
         aX_k       += s sum_{j<J} afY_{j,k}                 (adjoint of the repeat X -> X_{k(j)})
         aY_{j+2}   -= c b Y_{j+1} afY_j
         aY_{j-1}   += c b Y_{j+1} afY_j
         aY_{j+1}   -= c b (Y_{j+2} - Y_{j-1}) afY_j
         aY_j       -= c afY_j
         aYsum_k     = -s afX_k
         aY_{j,k}   += aYsum_k                               (adjoint of the block sum: a repeat)
         aF         += sum_k afX_k
         aX_{k+1}   += X_{k-1} afX_k
         aX_{k-2}   -= X_{k-1} afX_k
         aX_{k-1}   += (X_{k+1} - X_{k-2}) afX_k
         aX_k       -= afX_k

Periodic neighbours come from padded copies (:func:`models.lorenz96.periodic_pad`):
the slow ring needs offsets ``-2, -1, +1`` (two ghost cells left, one right), the
fast ring ``-1, +1, +2`` (one left, two right); every shift is then a slice, and the
adjoint scatters into the padded array and folds the ghost cells back
(:func:`models.lorenz96.fold_padded`).  The block sum is ``Y.reshape(K, J).sum(axis=1)``;
its adjoint, and the map ``X -> X_{k(j)}``, are ``np.repeat(., J)``.

TL and AD are blocked: ``dx`` (and ``af``) may be a matrix ``(n_state, k)`` of
``k`` directions, ``dp`` then ``(n_params, k)``; every statement acts on the first
axis and broadcasts the stored trajectory values as columns.

The state vector is ``x = [X_0 .. X_{K-1}, Y_0 .. Y_{JK-1}]``, ``n_state = K + J K``:
the slow variables first, so ``x[:K]`` (a config's ``state_slice: [0, K]``) picks ``X``.
With ``estimate_forcing=True`` the forcing is the model's one parameter, ``p = [F]``;
otherwise ``n_params == 0`` and ``F`` is the constructor's ``forcing``.

One step is RK4 (:mod:`models.integrators`), whose TL/AD compose the tendency's.
That numpy path is the reference.  When numba is installed, :meth:`Lorenz96TwoScale.step`
and the window (the engine's ``linearize_window`` hook) run the same arithmetic in the
compiled kernels of :mod:`models.lorenz96_kernels` (the trajectory bit for bit);
``compiled=False`` keeps the numpy path everywhere.
The fast scale is ``c`` times faster than the slow one, so the step must be short:
``dt = 0.005`` is the usual choice for ``c = 10``.
"""

from __future__ import annotations

import numpy as np

from fourdvar.model import as_vector

from .integrators import IntegratedModel, RungeKutta
from .lorenz96 import KERNELS_AVAILABLE, CompiledWindow, as_columns, fold_padded, forcing_adjoint, kernels, periodic_pad

# Ghost cells (left, right) of the two rings: X needs k-2, k-1, k+1; Y needs j-1, j+1, j+2.
SLOW_PAD = (2, 1)
FAST_PAD = (1, 2)


def block_sum(Y: np.ndarray, K: int, J: int) -> np.ndarray:
    """``Ysum_k = sum_{j<J} Y_{j,k}`` along the first axis of ``Y`` (``(J K,)`` or ``(J K, m)``)."""
    return Y.reshape((K, J) + Y.shape[1:]).sum(axis=1)


class Lorenz96TwoScaleTendency:
    """``f(x, F) = [fX; fY]`` and its linearisation; ``F`` is read from ``p`` or fixed."""

    def __init__(self, n_slow: int, n_fast_per_slow: int, forcing: float, estimate_forcing: bool,
                 coupling: float, time_scale: float, space_scale: float):
        self.n_slow = n_slow
        self.n_fast_per_slow = n_fast_per_slow
        self.forcing = forcing
        self.estimate_forcing = estimate_forcing
        self.time_scale = time_scale  # c
        self.advection_scale = time_scale * space_scale  # c b
        self.coupling_coefficient = coupling * time_scale / space_scale  # s = h c / b

    def forcing_of(self, p: np.ndarray) -> float:
        return p[0] if self.estimate_forcing else self.forcing

    def block_sum(self, Y: np.ndarray) -> np.ndarray:
        """``Ysum_k = sum_{j<J} Y_{j,k}``, shape ``(K,)`` (``(K, m)`` for a block of ``m`` columns)."""
        return block_sum(Y, self.n_slow, self.n_fast_per_slow)

    def evaluate(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        K, J, s, c, cb = self.n_slow, self.n_fast_per_slow, self.coupling_coefficient, self.time_scale, self.advection_scale
        X, Y = x[:K], x[K:]
        Xp = periodic_pad(X, *SLOW_PAD)  # Xp[k + 2] = X_k
        Yp = periodic_pad(Y, *FAST_PAD)  # Yp[j + 1] = Y_j
        f = np.empty_like(x)
        f[:K] = (Xp[3:] - Xp[:-3]) * Xp[1:-2] - X + self.forcing_of(p) - s * self.block_sum(Y)
        f[K:] = -cb * Yp[2:-1] * (Yp[3:] - Yp[:-3]) - c * Y + s * np.repeat(X, J)
        return f

    def linearize(self, x: np.ndarray, p: np.ndarray) -> "Lorenz96TwoScaleTendencyLinearization":
        return Lorenz96TwoScaleTendencyLinearization(self, x, p)


class Lorenz96TwoScaleTendencyLinearization:
    """The two-scale tendency at ``(x, p)``: its value, TL and AD (the module docstring has the statements)."""

    def __init__(self, tendency: Lorenz96TwoScaleTendency, x: np.ndarray, p: np.ndarray):
        self.n_slow = K = tendency.n_slow
        self.n_fast_per_slow = J = tendency.n_fast_per_slow
        self.estimate_forcing = tendency.estimate_forcing
        self.coupling_coefficient = s = tendency.coupling_coefficient
        self.time_scale = c = tendency.time_scale
        self.advection_scale = cb = tendency.advection_scale
        X, Y = x[:K], x[K:]
        Xp = periodic_pad(X, *SLOW_PAD)
        Yp = periodic_pad(Y, *FAST_PAD)
        self.X_km1 = Xp[1:-2]  # X_{k-1}
        self.X_gradient = Xp[3:] - Xp[:-3]  # X_{k+1} - X_{k-2}
        self.Y_jp1 = Yp[2:-1]  # Y_{j+1}
        self.Y_gradient = Yp[3:] - Yp[:-3]  # Y_{j+2} - Y_{j-1}
        self.output = np.empty_like(x)
        self.output[:K] = self.X_gradient * self.X_km1 - X + tendency.forcing_of(p) - s * tendency.block_sum(Y)
        self.output[K:] = -cb * self.Y_jp1 * self.Y_gradient - c * Y + s * np.repeat(X, J)

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        K, J, s, c, cb = self.n_slow, self.n_fast_per_slow, self.coupling_coefficient, self.time_scale, self.advection_scale
        X_km1, X_gradient = as_columns(self.X_km1, dx), as_columns(self.X_gradient, dx)
        Y_jp1, Y_gradient = as_columns(self.Y_jp1, dx), as_columns(self.Y_gradient, dx)
        dX, dY = dx[:K], dx[K:]
        dXp = periodic_pad(dX, *SLOW_PAD)
        dYp = periodic_pad(dY, *FAST_PAD)
        dYsum = block_sum(dY, K, J)
        df = np.empty_like(dx)
        dfX, dfY = df[:K], df[K:]
        dfX[:] = (dXp[3:] - dXp[:-3]) * X_km1 + X_gradient * dXp[1:-2] - dX - s * dYsum
        if self.estimate_forcing:
            dfX += dp[0]
        dfY[:] = -cb * (dYp[2:-1] * Y_gradient + Y_jp1 * (dYp[3:] - dYp[:-3])) - c * dY + s * np.repeat(dX, J, axis=0)
        return df

    def ad(self, af: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        K, J, s, c, cb = self.n_slow, self.n_fast_per_slow, self.coupling_coefficient, self.time_scale, self.advection_scale
        X_km1, X_gradient = as_columns(self.X_km1, af), as_columns(self.X_gradient, af)
        Y_jp1, Y_gradient = as_columns(self.Y_jp1, af), as_columns(self.Y_gradient, af)
        afX, afY = af[:K], af[K:]
        ax = np.empty_like(af)
        # fY_j = -c b Y_{j+1} (Y_{j+2} - Y_{j-1}) - c Y_j + s X_{k(j)}
        aX = s * block_sum(afY, K, J)  # adjoint of np.repeat(dX, J)
        aYp = np.zeros((afY.shape[0] + sum(FAST_PAD),) + af.shape[1:])
        g = -cb * Y_jp1 * afY
        aYp[3:] += g  # aY_{j+2}
        aYp[:-3] -= g  # aY_{j-1}
        aYp[2:-1] -= cb * Y_gradient * afY  # aY_{j+1}
        aY = fold_padded(aYp, *FAST_PAD)
        aY -= c * afY  # aY_j
        # fX_k = (X_{k+1} - X_{k-2}) X_{k-1} - X_k + F - s Ysum_k
        aYsum = -s * afX
        aY += np.repeat(aYsum, J, axis=0)  # adjoint of the block sum
        ap = forcing_adjoint(afX, self.estimate_forcing)
        aXp = np.zeros((K + sum(SLOW_PAD),) + af.shape[1:])
        g = X_km1 * afX
        aXp[3:] += g  # aX_{k+1}
        aXp[:-3] -= g  # aX_{k-2}
        aXp[1:-2] += X_gradient * afX  # aX_{k-1}
        aX += fold_padded(aXp, *SLOW_PAD)
        aX -= afX  # aX_k
        ax[:K], ax[K:] = aX, aY
        return ax, ap


def _positive_integer(value, minimum: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"Lorenz-96 two-scale needs {name} >= {minimum} (an integer), got {value!r}")
    return int(value)


def _positive(value, name: str) -> float:
    value = float(value)
    if not value > 0 or not np.isfinite(value):
        raise ValueError(f"Lorenz-96 two-scale needs {name} > 0 (finite), got {value!r}")
    return value


class Lorenz96TwoScale(IntegratedModel):
    """``Lorenz96TwoScale(n_slow=40, n_fast_per_slow=10, forcing=10.0, coupling=1.0, time_scale=10.0,
    space_scale=10.0, dt=0.005, estimate_forcing=False)``: one RK4 step of length ``dt``.

    ``coupling`` is ``h``, ``time_scale`` is ``c`` and ``space_scale`` is ``b`` of the
    module docstring.  The state is ``[X (n_slow); Y (n_fast_per_slow * n_slow)]``.
    """

    blocked_linearization = True  # TL/AD take (n, k) blocks of directions
    window_forcing = True  # the compiled window takes the forcing of weak constraint

    def __init__(
        self,
        n_slow: int = 40,
        n_fast_per_slow: int = 10,
        forcing: float = 10.0,
        coupling: float = 1.0,
        time_scale: float = 10.0,
        space_scale: float = 10.0,
        dt: float = 0.005,
        estimate_forcing: bool = False,
        compiled: bool = True,
    ):
        self.n_slow = _positive_integer(n_slow, 4, "n_slow")
        self.n_fast_per_slow = _positive_integer(n_fast_per_slow, 1, "n_fast_per_slow")
        self.n_fast = self.n_slow * self.n_fast_per_slow
        self.n_state = self.n_slow + self.n_fast
        self.forcing = float(forcing)
        self.coupling = float(coupling)
        self.time_scale = _positive(time_scale, "time_scale")
        self.space_scale = _positive(space_scale, "space_scale")
        self.dt = _positive(dt, "dt")
        self.estimate_forcing = bool(estimate_forcing)
        self.n_params = 1 if self.estimate_forcing else 0
        self.tendency = Lorenz96TwoScaleTendency(
            self.n_slow, self.n_fast_per_slow, self.forcing, self.estimate_forcing,
            self.coupling, self.time_scale, self.space_scale,
        )
        self.integrator = RungeKutta("rk4", self.dt)
        self.compiled = bool(compiled) and KERNELS_AVAILABLE

    def _kernel_arguments(self, p: np.ndarray) -> tuple:
        """``(K, J, (F, s, c, c b), dt)`` for the compiled kernels."""
        t = self.tendency
        coefficients = np.array([t.forcing_of(p), t.coupling_coefficient, t.time_scale, t.advection_scale])
        return self.n_slow, self.n_fast_per_slow, coefficients, self.dt

    def step(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        if not self.compiled:
            return super().step(x, p)
        x, p = self._inputs(x, p)
        states = np.empty((2, self.n_state))
        kernels().two_scale_forecast_window(x, *self._kernel_arguments(p), np.zeros((0, self.n_state)), states, np.empty((1, 4, self.n_state)))
        return states[1]

    @property
    def linearize_window(self):
        """The engine's window hook with the compiled kernels (a :class:`models.lorenz96.CompiledWindow`);
        without them ``None``: the engine chains the numpy steps."""
        return self._compiled_window if self.compiled else None

    def _compiled_window(self, x0: np.ndarray, p: np.ndarray, n_steps: int, forcing: np.ndarray | None = None) -> CompiledWindow:
        x0, p = as_vector(x0, self.n_state, "state x0"), as_vector(p, self.n_params, "parameters p")
        k, arguments = kernels(), self._kernel_arguments(p)
        return CompiledWindow((k.two_scale_forecast_window, k.two_scale_tl_window, k.two_scale_ad_window), arguments, arguments,
                              x0, self.n_params, int(n_steps), forcing)

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        """``[forcing]`` when the forcing is estimated, else empty."""
        return np.full(self.n_params, self.forcing)

    def unresolved_tendency(self, x: np.ndarray) -> np.ndarray:
        """The fast variables' effect on the slow ones, ``-(h c / b) sum_{j<J} Y_{j,k}``, shape ``(n_slow,)``.

        This is what a one-scale Lorenz-96 model of ``X`` lacks: the full slow tendency
        ``dX_k/dt`` minus the one-scale tendency ``(X_{k+1} - X_{k-2}) X_{k-1} - X_k + F``.
        Evaluated along a truth run it is the target for a correction fitted offline.
        """
        x = as_vector(x, self.n_state, "state x")
        return -self.tendency.coupling_coefficient * self.tendency.block_sum(x[self.n_slow :])

    def __repr__(self) -> str:
        return (
            f"Lorenz96TwoScale(n_slow={self.n_slow}, n_fast_per_slow={self.n_fast_per_slow}, forcing={self.forcing}, "
            f"coupling={self.coupling}, time_scale={self.time_scale}, space_scale={self.space_scale}, dt={self.dt}, "
            f"estimate_forcing={self.estimate_forcing})"
        )
