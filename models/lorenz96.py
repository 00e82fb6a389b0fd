"""The Lorenz-96 model, integrated by classical RK4, with exact TL and AD.

Tendency on a periodic grid of ``n >= 4`` points::

    f_i(x, F) = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F

    TL   df_i = (dx_{i+1} - dx_{i-2}) x_{i-1} + (x_{i+1} - x_{i-2}) dx_{i-1} - dx_i + dF

    AD   ax_{i+1} += x_{i-1} af_i
         ax_{i-2} -= x_{i-1} af_i
         ax_{i-1} += (x_{i+1} - x_{i-2}) af_i
         ax_i     -= af_i
         aF       += sum_i af_i

The periodic neighbours come from a padded copy ``[x_{n-2}, x_{n-1}, x_0 .. x_{n-1}, x_0]``
(two ghost cells on the left, one on the right), so every shift is a slice; the
adjoint scatters into the padded array and folds the ghost cells back.

TL and AD are blocked: ``dx`` (and ``af``) may be a matrix ``(n, k)`` of ``k``
directions, ``dp`` then ``(n_params, k)``; the same statements run on all
columns at once (the stored ``x_{i-1}`` and ``x_{i+1} - x_{i-2}`` broadcast as columns).

An optional extra tendency, absent by default, stands for a process the plain
model lacks (a model-error experiment uses it in the truth only)::

    e_i = A sin(2 pi x_i / lam)        de_i = A (2 pi / lam) cos(2 pi x_i / lam) dx_i      (AD: the same diagonal)

One step is RK4 (:mod:`models.integrators`), whose TL/AD compose the tendency's.
That numpy path is the reference.  When numba is installed, :meth:`Lorenz96.step`
and the window (the engine's ``linearize_window`` hook, a :class:`CompiledWindow`)
run the same arithmetic in the compiled kernels of :mod:`models.lorenz96_kernels`;
``Lorenz96(..., compiled=False)`` keeps the numpy path everywhere.
With ``estimate_forcing=True`` the forcing is the model's one parameter, ``p = [F]``;
otherwise ``n_params == 0`` and ``F`` is the constructor's ``forcing``.
"""

from __future__ import annotations

import numpy as np

import functools
import importlib
import importlib.util

from fourdvar.model import as_vector
from fourdvar.window import Window

from .integrators import IntegratedModel, RungeKutta

#: whether the compiled kernels can be used (numba installed); they are imported on first use
KERNELS_AVAILABLE = importlib.util.find_spec("numba") is not None


@functools.cache
def kernels():
    """The compiled kernels, :mod:`models.lorenz96_kernels` (imported, and numba with it, on the first call)."""
    return importlib.import_module(".lorenz96_kernels", __package__)


def periodic_pad(x: np.ndarray, left: int = 2, right: int = 1) -> np.ndarray:
    """``[x_{n-left} .. x_{n-1}, x_0 .. x_{n-1}, x_0 .. x_{right-1}]``; by default
    ``[x_{n-2}, x_{n-1}, x_0, ..., x_{n-1}, x_0]``, so ``padded[i + left] = x_i``.

    Along the first axis: ``x`` may be a matrix ``(n, k)`` of ``k`` columns."""
    n = x.shape[0]
    padded = np.empty((n + left + right,) + x.shape[1:])
    padded[left : left + n] = x
    padded[:left] = x[n - left :]
    padded[left + n :] = x[:right]
    return padded


def fold_padded(a_padded: np.ndarray, left: int = 2, right: int = 1) -> np.ndarray:
    """Adjoint of :func:`periodic_pad`: add the ghost cells' adjoints back to their sources."""
    n = a_padded.shape[0] - left - right
    ax = a_padded[left : left + n].copy()
    ax[n - left :] += a_padded[:left]
    ax[:right] += a_padded[left + n :]
    return ax


class Lorenz96Tendency:
    """``f(x, F)`` and its linearisation; ``F`` is read from ``p`` or fixed."""

    def __init__(self, forcing: float, estimate_forcing: bool, extra_amplitude: float = 0.0, extra_wavelength: float = 10.0):
        self.forcing = forcing
        self.estimate_forcing = estimate_forcing
        self.extra_amplitude = extra_amplitude
        self.extra_wavenumber = 2 * np.pi / extra_wavelength

    def forcing_of(self, p: np.ndarray) -> float:
        return p[0] if self.estimate_forcing else self.forcing

    def evaluate(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        xp = periodic_pad(x)
        f = (xp[3:] - xp[:-3]) * xp[1:-2] - x + self.forcing_of(p)
        if self.extra_amplitude:
            f += self.extra_amplitude * np.sin(self.extra_wavenumber * x)
        return f

    def linearize(self, x: np.ndarray, p: np.ndarray) -> "Lorenz96TendencyLinearization":
        return Lorenz96TendencyLinearization(self, x, p)


def as_columns(stored: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``stored`` (one value per grid point) shaped to broadcast against ``like``:
    itself for a vector ``like``, a column ``(n, 1)`` for a block ``(n, k)``."""
    return stored if like.ndim == 1 else stored[:, None]


def forcing_adjoint(af: np.ndarray, estimate_forcing: bool) -> np.ndarray:
    """``aF = sum_i af_i``: shape ``(1,)`` (``(1, k)`` for a block), or empty without an estimated forcing."""
    if not estimate_forcing:
        return np.empty((0,) + af.shape[1:])
    return af.sum(axis=0, keepdims=True)


class Lorenz96TendencyLinearization:
    """The Lorenz-96 tendency at ``(x, p)``: its value, TL and AD (the module docstring has the statements)."""

    def __init__(self, tendency: Lorenz96Tendency, x: np.ndarray, p: np.ndarray):
        self.estimate_forcing = tendency.estimate_forcing
        xp = periodic_pad(x)
        self.x_im1 = xp[1:-2]  # x_{i-1}
        self.gradient = xp[3:] - xp[:-3]  # x_{i+1} - x_{i-2}
        self.output = self.gradient * self.x_im1 - x + tendency.forcing_of(p)
        self.extra_slope = None  # de_i/dx_i of the optional extra tendency
        if tendency.extra_amplitude:
            k = tendency.extra_wavenumber
            self.output += tendency.extra_amplitude * np.sin(k * x)
            self.extra_slope = tendency.extra_amplitude * k * np.cos(k * x)

    def tl(self, dx: np.ndarray, dp: np.ndarray) -> np.ndarray:
        x_im1, gradient = as_columns(self.x_im1, dx), as_columns(self.gradient, dx)
        dxp = periodic_pad(dx)
        df = (dxp[3:] - dxp[:-3]) * x_im1 + gradient * dxp[1:-2] - dx
        if self.extra_slope is not None:
            df += as_columns(self.extra_slope, dx) * dx
        if self.estimate_forcing:
            df += dp[0]
        return df

    def ad(self, af: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x_im1, gradient = as_columns(self.x_im1, af), as_columns(self.gradient, af)
        axp = np.zeros((af.shape[0] + 3,) + af.shape[1:])
        g = x_im1 * af
        axp[3:] += g  # ax_{i+1}
        axp[:-3] -= g  # ax_{i-2}
        axp[1:-2] += gradient * af  # ax_{i-1}
        ax = fold_padded(axp)
        ax -= af  # ax_i
        if self.extra_slope is not None:
            ax += as_columns(self.extra_slope, af) * af
        return ax, forcing_adjoint(af, self.estimate_forcing)


class Lorenz96(IntegratedModel):
    """``Lorenz96(n_state=40, forcing=8.0, dt=0.05, estimate_forcing=False)``: one RK4 step of length ``dt``.

    ``dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F`` on a periodic grid; with
    ``estimate_forcing`` the forcing is the parameter vector, ``p = [F]``.

    Parameters
    ----------
    n_state : int, default 40
        Grid points, at least 4.
    forcing : float, default 8.0
        ``F`` (the value used when it is not estimated).
    dt : float, default 0.05
        The time step.
    estimate_forcing : bool, default False
        ``p = [F]`` (``n_params = 1``) instead of no parameters.
    extra_amplitude, extra_wavelength : float, default 0.0 and 10.0
        The extra tendency ``A sin(2 pi x_i / lam)`` of the module docstring.
    compiled : bool, default True
        Use the compiled kernels when numba is installed (the same numbers as numpy).

    Examples
    --------
    >>> model = Lorenz96(8, estimate_forcing=True)
    >>> model.n_state, model.n_params
    (8, 1)
    >>> x = np.full(8, 8.0)                              # the fixed point x_i = F
    >>> bool(np.allclose(model.step(x, np.array([8.0])), x))
    True
    """

    blocked_linearization = True  # TL/AD take (n, k) blocks of directions

    def __init__(
        self,
        n_state: int = 40,
        forcing: float = 8.0,
        dt: float = 0.05,
        estimate_forcing: bool = False,
        extra_amplitude: float = 0.0,
        extra_wavelength: float = 10.0,
        compiled: bool = True,
    ):
        if int(n_state) != n_state or n_state < 4:
            raise ValueError(f"Lorenz-96 needs n_state >= 4 (an integer), got {n_state}")
        self.n_state = int(n_state)
        self.forcing = float(forcing)
        self.dt = float(dt)
        self.estimate_forcing = bool(estimate_forcing)
        self.n_params = 1 if self.estimate_forcing else 0
        if not extra_wavelength > 0:
            raise ValueError(f"extra_wavelength must be positive, got {extra_wavelength}")
        self.extra_amplitude = float(extra_amplitude)
        self.extra_wavelength = float(extra_wavelength)
        self.tendency = Lorenz96Tendency(self.forcing, self.estimate_forcing, self.extra_amplitude, self.extra_wavelength)
        self.integrator = RungeKutta("rk4", self.dt)
        self.compiled = bool(compiled) and KERNELS_AVAILABLE

    def step(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        if not self.compiled:
            return super().step(x, p)
        x, p = self._inputs(x, p)
        tendency = self.tendency
        return kernels().step(x, tendency.forcing_of(p), self.dt, tendency.extra_amplitude, tendency.extra_wavenumber)

    window_forcing = True  # the compiled window takes the forcing of weak constraint

    @property
    def linearize_window(self):
        """The engine's window hook with the compiled kernels: ``linearize_window(x0, p, n_steps, forcing=None)``
        gives the window run and linearised by them (a :class:`CompiledWindow`).  Without them it is
        ``None``: the engine chains the numpy step linearisations (:class:`fourdvar.window.WindowLinearization`)."""
        return self._compiled_window if self.compiled else None

    def _compiled_window(self, x0: np.ndarray, p: np.ndarray, n_steps: int, forcing: np.ndarray | None = None) -> "CompiledWindow":
        x0, p = as_vector(x0, self.n_state, "state x0"), as_vector(p, self.n_params, "parameters p")
        k, tendency = kernels(), self.tendency
        lin_args = (self.dt, tendency.extra_amplitude, tendency.extra_wavenumber)
        return CompiledWindow((k.forecast_window, k.tl_window, k.ad_window), (tendency.forcing_of(p),) + lin_args, lin_args,
                              x0, self.n_params, int(n_steps), forcing)

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        """``[forcing]`` when the forcing is estimated, else empty."""
        return np.full(self.n_params, self.forcing)

    def __repr__(self) -> str:
        extra = f", extra_amplitude={self.extra_amplitude}, extra_wavelength={self.extra_wavelength}" if self.extra_amplitude else ""
        return (
            f"Lorenz96(n_state={self.n_state}, forcing={self.forcing}, dt={self.dt}, "
            f"estimate_forcing={self.estimate_forcing}{extra})"
        )


class CompiledWindow(Window):
    """A window run by compiled RK4 kernels: the engine's window contract (:mod:`fourdvar.window`).

    The NL sweep stores the trajectory and every step's RK4 stage states; ``tl`` and
    ``ad`` are the compiled sweeps, blocked (``k`` directions as columns) as well as
    on one vector.  ``kernels`` is ``(forecast, tl, ad)`` of :mod:`models.lorenz96_kernels`
    (called as ``forecast(x0, *nl_args, forcing, states, stages)``, ``tl(stages, *lin_args, dx0, dF, K, de, dx)``
    and ``ad(stages, *lin_args, forcings, forced, ae, ax, aF)``; the weak constraint's ``forcing``, ``de``
    and ``ae`` are ``(K, ...)`` arrays, or ``(0, ...)`` for none).  The only parameter a compiled
    model may have is its forcing ``F``, so ``dp`` and ``ap`` have one row or none.
    """

    blocked = True

    def __init__(self, kernels, nl_args: tuple, lin_args: tuple, x0: np.ndarray, n_params: int, n_steps: int, forcing: np.ndarray | None = None):
        if n_steps < 0:
            raise ValueError(f"the window must have at least 0 steps, got {n_steps}")
        self.forecast_kernel, self.tl_kernel, self.ad_kernel = kernels
        self.lin_args = lin_args
        self.n_state, self.n_params, self.n_steps = x0.size, n_params, n_steps
        self.states = np.empty((n_steps + 1, x0.size))
        self.stages = np.empty((n_steps, 4, x0.size))
        forcing = np.zeros((0, x0.size)) if forcing is None else np.ascontiguousarray(forcing, dtype=float)
        self.forecast_kernel(x0, *nl_args, forcing, self.states, self.stages)

    def _forcing_increments(self, dp: np.ndarray, m: int) -> np.ndarray:
        """``dF`` of each direction, zero when the forcing is not estimated."""
        return np.ascontiguousarray(dp[0], dtype=float).reshape(m) if self.n_params else np.zeros(m)

    def tl(self, dx0: np.ndarray, dp: np.ndarray, last_step: int | None = None, de: np.ndarray | None = None) -> list[np.ndarray]:
        """``[dx_0, .., dx_k]``, ``k = last_step`` (default ``K``); ``dx0`` ``(n,)`` or a block ``(n, m)``, ``de`` ``(K, n[, m])``."""
        K = self.n_steps if last_step is None else min(last_step, self.n_steps)
        rows = np.ascontiguousarray(np.atleast_2d(dx0.T))  # (m, n): one direction per row
        dx = np.empty((K + 1,) + rows.shape)
        de_rows = np.zeros((0,) + rows.shape) if de is None else np.ascontiguousarray(de.transpose(0, 2, 1) if dx0.ndim == 2 else de[:, None, :])
        self.tl_kernel(self.stages, *self.lin_args, rows, self._forcing_increments(dp, rows.shape[0]), K, de_rows, dx)
        return list(dx.transpose(0, 2, 1)) if dx0.ndim == 2 else list(dx[:, 0])

    def ad(self, forcings, ae: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ax_0, ap)`` for forcings ``{k: f_k}``, each ``(n,)`` or a block ``(n, m)``; ``ae_k`` into ``ae`` ``(K, n[, m])``."""
        K = max(forcings, default=0)
        block = np.shape(next(iter(forcings.values())))[1:] if forcings else ()
        m = block[0] if block else 1
        forcing_rows = np.zeros((K + 1, m, self.n_state))
        forced = np.zeros(K + 1, dtype=np.bool_)
        for k, f in forcings.items():
            forcing_rows[k] = f.T if block else f
            forced[k] = True
        ax, aF = np.empty((m, self.n_state)), np.empty(m)
        direct = ae is not None and not block and ae.flags.c_contiguous  # the kernel writes into ae itself
        ae_rows = ae.reshape(self.n_steps, 1, self.n_state) if direct else np.empty((0 if ae is None else self.n_steps, m, self.n_state))
        ae_rows[...] = 0.0
        self.ad_kernel(self.stages, *self.lin_args, forcing_rows, forced, ae_rows, ax, aF)
        if ae is not None and not direct:
            ae[...] = ae_rows.transpose(0, 2, 1) if block else ae_rows[:, 0]
        ap = aF.reshape((1,) + block) if self.n_params else np.zeros((0,) + block)
        return (ax.T.copy() if block else ax[0]), ap
