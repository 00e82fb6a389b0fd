"""The QG model against JAX's jit of the same step built on pyqg-jax, at nx = 64 in float64.

    pip install -e ".[bench]"                   # JAX and pyqg-jax
    taskset -c 1 python benchmarks/qg.py        # a few minutes; writes its section of RESULTS.md
    taskset -c 1 python benchmarks/qg.py --quick   # smoke test (short batches, nothing recorded)

Both sides step the same way: classical RK4 of the grid-space tendency over
``dt``, then pyqg's spectral filter once.  The JAX step is built on pyqg-jax's
``get_updates`` (``irfftn`` of its ``dqhdt`` at each stage, ``postprocess_state``'s
filter at the end) and ``jax.jit``-compiled.  Rows, each the median of
interleaved batches (``timing.time_pair``) on one pinned core:

1. ``step``: ``QG.step`` vs ``jax.jit(step)``.  Target <= 0.7x.
2. the step's adjoint: ``QG.step_ad`` (linearise, then the AD) vs
   ``jax.jit(lambda q, a: jax.vjp(step, q)[1](a))``, both with their forward run.
   Target <= 1.0x.  Also (no target) the AD alone at a stored linearisation
   against JAX's ``vjp`` function kept from ``jax.vjp`` and applied under jit.
3. gradient of the 4D-Var cost over a 24-step window, the control the initial
   state, the upper layer's streamfunction observed at 300 random points every
   6 steps (steps 0, 6, .., 24; bilinear interpolation on the periodic grid,
   written here for both sides), diagonal ``B`` and ``R``::

       J(x0) = 1/2 |x0 - xb|^2_B^-1 + 1/2 sum_k |y_k - P psi(x_k)|^2_R^-1

   ``FourDVarCost.gradient`` (the window linearised, then the AD sweep) vs
   ``jax.jit(jax.grad(J))`` (``lax.scan`` over the steps).  Target <= 1.5x.

Each row also gives the largest difference between the two sides' results,
relative to the largest value.  A last table shows why the model's FFTs are
scipy's (``workers=1``): ``rfft2`` then ``irfft2`` of the state's two layers and
of the four velocity or flux fields, scipy against numpy.  JAX must be pinned by ``taskset``: its thread
flags do not keep it on one core.
"""

from __future__ import annotations

import importlib.util
import os

# The shared timing module, loaded by path; loading it takes this folder off sys.path
# and pins BLAS to one thread (see benchmarks/timing.py), so it comes first.
_spec = importlib.util.spec_from_file_location("benchmark_timing", os.path.join(os.path.dirname(os.path.abspath(__file__)), "timing.py"))
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)
import argparse  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

from fourdvar.cost import FourDVarCost  # noqa: E402
from fourdvar.covariances import Diagonal  # noqa: E402
from fourdvar.interfaces import ObservationSlot  # noqa: E402
from models import QG  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results import record  # noqa: E402

sys.path.pop(0)

NX = 64
WINDOW, EVERY, N_POINTS = 24, 6, 300
TARGETS = {"step": 0.7, "step adjoint": 1.0, "gradient": 1.5}


# --- problem --------------------------------------------------------------------------------


def spun_up_state(model: QG, rng: np.random.Generator, steps: int = 100) -> np.ndarray:
    """A red-spectrum PV field (rms 1e-5 s^-1) run ``steps`` steps forward."""
    fft = model.spectrum
    white = fft.rfft2(rng.standard_normal((2, model.ny, model.nx)))
    q = fft.irfft2(white / (1.0 + model.kappa2 * (4 * model.dx) ** 2))
    x = 1e-5 * q.reshape(-1) / q.std()
    for _ in range(steps):
        x = model.step(x, np.empty(0))
    return x


def bilinear(model: QG, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(corners, weights)`` ``(n, 4)`` of ``n`` random points on the periodic grid (first point at ``(dx/2, dy/2)``)."""
    s = rng.uniform(0, model.L, n) / model.dx - 0.5
    t = rng.uniform(0, model.W, n) / model.dy - 0.5
    i0, j0 = np.floor(s).astype(int), np.floor(t).astype(int)
    a, b = s - i0, t - j0
    i0, j0 = i0 % model.nx, j0 % model.ny
    i1, j1 = (i0 + 1) % model.nx, (j0 + 1) % model.ny
    corners = np.stack([j0 * model.nx + i0, j0 * model.nx + i1, j1 * model.nx + i0, j1 * model.nx + i1], axis=1)
    return corners, np.stack([(1 - a) * (1 - b), a * (1 - b), (1 - a) * b, a * b], axis=1)


class UpperStreamfunctionAtPoints:
    """``y = P psi_1(x)``, the upper layer's streamfunction interpolated; linear, so TL = itself."""

    def __init__(self, model: QG, corners: np.ndarray, weights: np.ndarray):
        self.model, self.corners, self.weights = model, corners, weights
        self.n_obs = corners.shape[0]
        self.output = None

    def apply(self, x):
        return np.sum(self.weights * self.model.streamfunction(x)[0].reshape(-1)[self.corners], axis=1)

    def adjoint(self, ay):
        apsi = np.zeros((2, self.model.ny * self.model.nx))
        apsi[0] = np.bincount(self.corners.reshape(-1), (self.weights * ay[:, None]).reshape(-1), minlength=apsi.shape[1])
        return self.model.streamfunction_ad(apsi.reshape(-1))

    def apply_tl(self, x, dx):
        return self.apply(dx)

    def apply_ad(self, x, ay):
        return self.adjoint(ay)

    def linearize(self, x):
        return _Linear(self, self.apply(x))


class _Linear:
    def __init__(self, operator, output):
        self.output, self.tl, self.ad = output, operator.apply, operator.adjoint


def build_cost(model: QG, rng: np.random.Generator, window: int = WINDOW, every: int = EVERY, n_points: int = N_POINTS):
    """``(cost, xb, (corners, weights), y, B std, R std, observed steps)`` of a twin experiment."""
    truth = model.forecast(spun_up_state(model, rng), np.empty(0), window)
    corners, weights = bilinear(model, rng, n_points)
    operator = UpperStreamfunctionAtPoints(model, corners, weights)
    steps = list(range(0, window + 1, every))
    clean = np.stack([operator.apply(truth[k]) for k in steps])
    sigma_o, sigma_b = 0.1 * clean.std(), 0.3 * truth[0].std()
    y = clean + sigma_o * rng.standard_normal(clean.shape)
    xb = truth[0] + sigma_b * rng.standard_normal(model.n_state)
    slots = [ObservationSlot(k, y[i], operator, Diagonal(sigma_o, size=n_points)) for i, k in enumerate(steps)]
    cost = FourDVarCost(model, slots, xb, B=Diagonal(sigma_b, size=model.n_state))
    return cost, xb, (corners, weights), y, sigma_b, sigma_o, steps


# --- JAX ------------------------------------------------------------------------------------


def jax_side(model: QG):
    """``(jax, jnp, step, streamfunction)`` built on pyqg-jax's model of the same parameters."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from pyqg_jax.qg_model import QGModel
    from pyqg_jax.state import Precision

    pyqg = QGModel(nx=model.nx, ny=model.ny, L=model.L, W=model.W, rek=model.rek, filterfac=model.filterfac, beta=model.beta,
                   rd=model.rd, delta=model.delta, H1=model.H1, U1=model.U1, U2=model.U2, precision=Precision.DOUBLE)
    template = pyqg.create_initial_state(jax.random.key(0))
    shape, dt = (model.ny, model.nx), model.dt

    def tendency(q):
        return jnp.fft.irfftn(pyqg.get_updates(template.update(q=q)).qh, axes=(-2, -1), s=shape)

    def step(q):
        k1 = tendency(q)
        k2 = tendency(q + dt / 2 * k1)
        k3 = tendency(q + dt / 2 * k2)
        k4 = tendency(q + dt * k3)
        stepped = template.update(q=q + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
        return pyqg.postprocess_state(stepped).q

    def streamfunction(q):
        return pyqg.get_full_state(template.update(q=q)).p

    return jax, jnp, step, streamfunction


def jax_cost_gradient(jax, jnp, step, streamfunction, xb, interpolation, y, sigma_b, sigma_o, steps, shape):
    """``jax.jit(jax.grad(J))`` of the module docstring's cost."""
    corners, weights = (jnp.asarray(a) for a in interpolation)
    xb, y = jnp.asarray(xb), jnp.asarray(y)

    def J(x0):
        def body(q, _):
            q_next = step(q)
            return q_next, q_next

        q0 = x0.reshape(shape)
        _, qs = jax.lax.scan(body, q0, None, length=steps[-1])
        states = jnp.concatenate([q0[None], qs])[jnp.asarray(steps)]
        psi_upper = jax.vmap(streamfunction)(states)[:, 0].reshape(len(steps), -1)
        model_y = jnp.sum(weights * psi_upper[:, corners], axis=-1)
        return 0.5 * jnp.sum(((x0 - xb) / sigma_b) ** 2) + 0.5 * jnp.sum(((y - model_y) / sigma_o) ** 2)

    return jax.jit(jax.grad(J))


# --- the table ------------------------------------------------------------------------------


def relative(ours, theirs) -> float:
    ours, theirs = np.asarray(ours).reshape(-1), np.asarray(theirs).reshape(-1)
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def measure(n_batches: int, batch_seconds: float) -> list[tuple[str, float, float, float, float | None]]:
    """Rows ``(label, ours s, JAX s, relative difference, target)``."""
    rng = np.random.default_rng(0)
    model = QG(nx=NX)
    p = np.empty(0)
    shape = (2, model.ny, model.nx)
    jax, jnp, step, streamfunction = jax_side(model)
    x = spun_up_state(model, rng)
    ax = rng.standard_normal(model.n_state)
    q, aq = jnp.asarray(x.reshape(shape)), jnp.asarray(ax.reshape(shape))
    rows = []

    step_jit = jax.jit(step)
    difference = relative(model.step(x, p), step_jit(q))
    rows.append(("step", *timing.time_pair(lambda: model.step(x, p), lambda: step_jit(q).block_until_ready(), n_batches, batch_seconds),
                 difference, TARGETS["step"]))

    vjp_jit = jax.jit(lambda q, a: jax.vjp(step, q)[1](a)[0])
    difference = relative(model.step_ad(x, p, ax)[0], vjp_jit(q, aq))
    rows.append(("step adjoint (with its forward)", *timing.time_pair(lambda: model.step_ad(x, p, ax),
                                                                       lambda: vjp_jit(q, aq).block_until_ready(), n_batches, batch_seconds),
                 difference, TARGETS["step adjoint"]))

    lin = model.linearize(x, p)
    _, vjp_function = jax.vjp(step, q)
    stored_jit = jax.jit(lambda f, a: f(a)[0])
    difference = relative(lin.ad(ax)[0], stored_jit(vjp_function, aq))
    rows.append(("step adjoint, stored linearisation", *timing.time_pair(lambda: lin.ad(ax), lambda: stored_jit(vjp_function, aq).block_until_ready(),
                                                                          n_batches, batch_seconds), difference, None))

    cost, xb, interpolation, y, sigma_b, sigma_o, steps = build_cost(model, rng)
    gradient_jit = jax_cost_gradient(jax, jnp, step, streamfunction, xb, interpolation, y, sigma_b, sigma_o, steps, shape)
    x0 = jnp.asarray(xb)
    difference = relative(cost.gradient(xb, p)[1], gradient_jit(x0))
    rows.append((f"gradient of J, {WINDOW} steps", *timing.time_pair(lambda: cost.gradient(xb, p),
                                                                    lambda: gradient_jit(x0).block_until_ready(), n_batches, batch_seconds),
                 difference, TARGETS["gradient"]))
    return rows


def fft_rows(n_batches: int, batch_seconds: float) -> list[tuple[str, float, float]]:
    """``(label, scipy s, numpy s)`` for ``irfft2(rfft2(a))`` of ``a`` ``(2, 64, 64)`` and ``(2, 2, 64, 64)``."""
    import scipy.fft

    rows = []
    for shape in ((2, NX, NX), (2, 2, NX, NX)):
        a = np.random.default_rng(1).standard_normal(shape)
        rows.append((f"rfft2 + irfft2 of {shape}", *timing.time_pair(
            lambda: scipy.fft.irfft2(scipy.fft.rfft2(a, workers=1), s=shape[-2:], workers=1),
            lambda: np.fft.irfft2(np.fft.rfft2(a), s=shape[-2:]), n_batches, batch_seconds)))
    return rows


def fft_table(rows) -> str:
    header = f"{'real FFTs, float64':<36} {'scipy us':>11} {'numpy us':>9} {'ratio':>6}"
    return "\n".join([header, "-" * len(header)] + [f"{label:<36} {s * 1e6:>11.1f} {n * 1e6:>9.1f} {s / n:>6.2f}" for label, s, n in rows])


def table(rows) -> str:
    header = f"{'QG nx=64, float64':<36} {'fourdvar ms':>11} {'jax ms':>9} {'ratio':>6} {'target':>7} {'met':>4}  {'max rel. diff':>13}"
    lines = [header, "-" * len(header)]
    for label, ours, theirs, difference, target in rows:
        ratio = ours / theirs
        met = "-" if target is None else ("yes" if ratio <= target else "NO")
        target_text = "-" if target is None else f"<={target}x"
        lines.append(f"{label:<36} {ours * 1e3:>11.3f} {theirs * 1e3:>9.3f} {ratio:>6.2f} {target_text:>7} {met:>4}  {difference:>13.1e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few short batches: a smoke test, not a measurement (nothing recorded)")
    args = parser.parse_args(argv)
    n_batches, batch_seconds = (3, 0.02) if args.quick else (15, 0.3)
    import jax

    header = [timing.machine_header(), timing.fix_malloc_thresholds(),
              f"jax {jax.__version__}; cpu affinity {sorted(os.sched_getaffinity(0))}; "
              f"medians of {n_batches} interleaved batches of ~{batch_seconds} s"]
    print("\n".join(header), flush=True)
    text = table(measure(n_batches, batch_seconds)) + "\n\n" + fft_table(fft_rows(n_batches, batch_seconds))
    print(text)
    if not args.quick:
        path = record("QG model against pyqg-jax (JAX jit)", "\n".join(header) + "\n\n```\n" + text + "\n```",
                      command="taskset -c 1 python benchmarks/qg.py")
        print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
