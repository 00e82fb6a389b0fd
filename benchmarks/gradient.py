"""Cost of one inner-loop gradient of 4D-Var relative to one nonlinear forecast.

    /work/venv/bin/python benchmarks/gradient.py            # full run (a few minutes)
    /work/venv/bin/python benchmarks/gradient.py --quick    # smoke test
    /work/venv/bin/python benchmarks/gradient.py --only mlp --windows 50

For each model and window length ``L`` (10 and 50 steps) we build the
incremental cost of a twin experiment, identity observations at every step
``0 .. L``, the control both the initial state and the parameters::

    jq = IncrementalCost(FourDVarCost(model, slots, xb, B, pb, P), x0, p, control="both")

which runs the nonlinear model once and stores the window's linearisation (not
counted), and time, in the same run, batch against batch:

    forecast    fourdvar.window.forecast(model, x0, p, L)      the nonlinear run
    gradient    jq.value_and_gradient(u)                       TL forward + AD backward

Each batch times ``N`` calls, ``N`` sized so that a batch takes about 0.1 s (at
least one call); the two kinds of batches alternate, so a slow patch of the
machine hits both, and the table shows the median per-call time and the ratio
gradient / forecast.  The gradient includes everything ``value_and_gradient``
does: the control transform, ``H_k``, ``R_k^-1`` and the background terms.

Targets: the gradient at most 3x the forecast for the networks, 4x for Lorenz-96.

The dense MLP is timed twice: with its ``linearize_window`` hook (the weight
terms of all steps as one matrix product per layer, PERFORMANCE.md item 1) and
without it (the engine's per-step :class:`fourdvar.window.WindowLinearization`,
forced by hiding the hook), to show what the batching buys.

Where the dense MLP stands (measured on the 2-core box, one thread; the
breakdown is of one gradient, in units of one forecast over the same window):

* The TL and the AD each read every weight matrix once per step, as the
  forecast does (the sweeps are sequential: ``dx_k`` needs ``dx_{k-1}``, and the
  AD's forcings need every ``dx_k``): 2x, whatever the batching.
* The weight terms, one GEMM per layer in the TL (``dW_i A_{i-1}``) and one in
  the AD (``AZ_i A_{i-1}^T``): ~0.2-0.4x.  Done step by step instead, as rank-1
  products over a fresh weight-sized ``ap`` each step, they cost 4-10x.
* ``IncrementalCost``'s own work on parameter-sized vectors (``P^1/2 w``, the
  background term, ``P^T/2 ap``, concatenations): fixed per call, so it weighs
  ~1x at ``L = 10`` (n = 400; ~3x at n = 2000, where each 64 MB temporary is a
  fresh mapping the kernel must fault in) and ~0.1-0.6x at ``L = 50``.

So the 3x target is met at ``L = 50`` for n = 400, is borderline (2.9-3.6x
between runs) for n = 2000, and is out of reach at ``L = 10`` until the cost
function's parameter-sized temporaries are fused or preallocated.

If JAX is importable (it is never a dependency), the same incremental cost is
also written in ``jax.numpy`` and its ``jax.jit(jax.grad(Jq))`` timed against
``jax.jit`` of the forecast, the linearisation stored beforehand by
``jax.linearize`` just as ours is; the gradient is checked against ours
(``jax err``, max relative difference).
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
from dataclasses import dataclass  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

from fourdvar.cost import FourDVarCost, IncrementalCost  # noqa: E402
from fourdvar.covariances import Diagonal  # noqa: E402
from fourdvar.interfaces import ObservationSlot  # noqa: E402
from fourdvar.window import PerStepModel, forecast  # noqa: E402
from models import MLP, LocalMLP, Lorenz96  # noqa: E402
from observations import Identity  # noqa: E402

NETWORK_TARGET = 3.0
LORENZ96_TARGET = 4.0
WINDOWS = (10, 50)


@dataclass
class Case:
    label: str
    size: int
    make: Callable[[], Any]  # -> model
    target: float
    hook: bool = True  # False: hide the model's linearize_window (per-step window)


def cases() -> list[Case]:
    out = []
    for n in (40, 400, 4000):
        out.append(Case("lorenz96 (rk4, F estimated)", n, lambda n=n: Lorenz96(n_state=n, estimate_forcing=True), LORENZ96_TARGET))
    for n in (400, 2000):
        def make(n=n):
            return MLP([n, n, n], ["tanh", "identity"], residual=True)

        out.append(Case(f"mlp residual [{n},{n},{n}]", n, make, NETWORK_TARGET, hook=True))
        out.append(Case(f"mlp residual [{n},{n},{n}] per-step", n, make, NETWORK_TARGET, hook=False))
    for hidden in (32, 64):
        for integrator in ("euler", "rk4"):
            for n in (400, 4000):
                def make(n=n, hidden=hidden, integrator=integrator):
                    return LocalMLP(n_state=n, hidden=[hidden], half_width=2, integrator=integrator, init_output_scale=1.0)

                out.append(Case(f"local_mlp [5,{hidden},1] {integrator}", n, make, NETWORK_TARGET))
    return out


def initial_point(model, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(x0, p)``: a point on the attractor for Lorenz-96, a moderate state and weights for a network."""
    if isinstance(model, Lorenz96):
        x = model.forecast(8.0 + rng.standard_normal(model.n_state), np.array([8.0]), 200)[-1]
        return x, np.array([8.0])
    if isinstance(model, MLP):  # init_params starts a residual MLP at zero output: take random weights
        return rng.standard_normal(model.n_state), 0.5 * rng.standard_normal(model.n_params) / np.sqrt(model.n_state)
    return 3.0 * rng.standard_normal(model.n_state) + 2.0, model.init_params(rng)


@dataclass
class Problem:
    model: Any
    x0: np.ndarray
    p: np.ndarray
    n_steps: int
    cost: FourDVarCost
    jq: IncrementalCost
    u: np.ndarray


def build_problem(model, n_steps: int, hook: bool = True, seed: int = 0) -> Problem:
    """A twin experiment: identity observations of a truth at every step, control state and parameters.

    ``hook=False`` gives the cost the model without its ``linearize_window``.
    """
    rng = np.random.default_rng(seed)
    x_true, p_true = initial_point(model, rng)
    truth = forecast(model, x_true, p_true, n_steps, context="truth")
    operator = Identity(n_state=model.n_state)
    R = Diagonal(0.5, size=model.n_state)
    slots = [ObservationSlot(k, truth[k] + R.sample(rng), operator, R) for k in range(n_steps + 1)]
    B = Diagonal(1.0, size=model.n_state)
    P = Diagonal(0.1 * (np.abs(p_true) + 0.01))
    xb, pb = x_true + 0.1 * B.sample(rng), p_true + 0.1 * P.sample(rng)
    cost = FourDVarCost(model if hook else PerStepModel(model), slots, xb, B=B, pb=pb, P=P, n_steps=n_steps)
    jq = IncrementalCost(cost, xb, pb, control="both")  # the linearisation: built here, not timed
    u = 0.1 * rng.standard_normal(jq.size)
    return Problem(model, xb, pb, n_steps, cost, jq, u)


# --- timing ----------------------------------------------------------------------------


def measure(problem: Problem, n_batches: int, batch_seconds: float) -> tuple[float, float]:
    """``(forecast seconds, gradient seconds)``."""
    model, x0, p, L, jq, u = problem.model, problem.x0, problem.p, problem.n_steps, problem.jq, problem.u

    def run_forecast():
        return forecast(model, x0, p, L)

    def run_gradient():
        return jq.value_and_gradient(u)

    return timing.time_pair(run_forecast, run_gradient, n_batches, batch_seconds)


# --- the optional JAX comparison ------------------------------------------------------------


def import_jax():
    """``(jax, jax.numpy)`` in float64, or ``None`` when JAX is not installed."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    return jax, jnp


def jax_step(model, jnp) -> Callable:
    """``step(x, p)`` of ``model`` in ``jax.numpy``: the same arithmetic and parameter layout."""
    from models.integrators import TABLEAUX

    def network(a, p, net):
        # a: (n_0, m); each W_i (n_i, n_{i-1} + 1) row-major in p, bias last column
        for (start, stop), shape, f in zip(zip(net.offsets[:-1], net.offsets[1:]), net.shapes, net.activations):
            W = p[int(start) : int(stop)].reshape(shape)
            z = W[:, :-1] @ a + W[:, -1:]
            a = {"identity": lambda z: z, "tanh": jnp.tanh, "relu": lambda z: jnp.maximum(z, 0.0),
                 "sigmoid": lambda z: 1.0 / (1.0 + jnp.exp(-z)), "softplus": lambda z: jnp.logaddexp(z, 0.0)}[f.name](z)
        return a

    def runge_kutta(tendency, scheme, dt):
        A, b = TABLEAUX[scheme]

        def stage_input(x, A_i, k):
            return x + dt * sum((A_ij * k_j for A_ij, k_j in zip(A_i, k) if A_ij), jnp.zeros_like(x))

        def step(x, p):
            k = []
            for A_i in A:
                k.append(tendency(stage_input(x, A_i, k), p))
            return stage_input(x, b, k)

        return step

    if isinstance(model, Lorenz96):
        def l96(x, p):
            F = p[0] if model.estimate_forcing else model.forcing
            return (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + F

        return runge_kutta(l96, "rk4", model.dt)
    if isinstance(model, MLP):
        def mlp(x, p):
            a_L = network(x[:, None], p, model.network)[:, 0]
            return x + a_L if model.residual else a_L

        return mlp
    if isinstance(model, LocalMLP):
        indices = jnp.asarray(model.stencil.indices)

        def local(x, p):
            return network(x[indices], p, model.network)[0]

        return runge_kutta(local, model.integrator.scheme, model.dt)
    raise TypeError(f"no JAX version of {type(model).__name__}")


def measure_jax(problem: Problem, jax, jnp, n_batches: int, batch_seconds: float) -> tuple[float, float, float]:
    """``(forecast s, gradient s, max relative difference to our gradient)`` in JAX.

    ``Jq(u)`` as in :class:`fourdvar.cost.IncrementalCost` (transform on, diagonal
    ``B``, ``P``, ``R``, identity ``H`` at every step), its TL taken from
    ``jax.linearize`` of the trajectory at ``(x0^i, p^i)`` computed once.
    """
    jq, L = problem.jq, problem.n_steps
    step = jax_step(problem.model, jnp)

    def trajectory(x0, p):
        def body(x, _):
            x_next = step(x, p)
            return x_next, x_next

        _, xs = jax.lax.scan(body, x0, None, length=L)
        return jnp.concatenate([x0[None, :], xs])

    x0, p = jnp.asarray(problem.x0), jnp.asarray(problem.p)
    _, trajectory_tl = jax.linearize(trajectory, x0, p)  # a jax.tree_util.Partial: a pytree argument
    d = jnp.stack([d_k for _, _, d_k in jq.observations])  # innovations, one row per step 0 .. L
    R_std = jnp.stack([jnp.asarray(slot.covariance.std * np.ones(slot.operator.n_obs)) for slot, _, _ in jq.observations])
    B_std, P_std = jnp.asarray(jq.cost.B.std * np.ones(jq.n_x)), jnp.asarray(jq.cost.P.std * np.ones(jq.n_p))
    v_b, w_b, n_x = jnp.asarray(jq.v_b), jnp.asarray(jq.w_b), jq.n_x

    def Jq(u, tl):
        v, w = u[:n_x], u[n_x:]
        dx = tl(B_std * v, P_std * w)  # dx0 = B^1/2 v, dp = P^1/2 w -> dx_0 .. dx_L
        Jo = 0.5 * jnp.sum(((dx - d) / R_std) ** 2)
        return 0.5 * jnp.sum((v_b + v) ** 2) + 0.5 * jnp.sum((w_b + w) ** 2) + Jo

    forecast_jit = jax.jit(trajectory)
    gradient_jit = jax.jit(jax.grad(Jq))
    u = jnp.asarray(problem.u)
    ours = jq.value_and_gradient(problem.u)[1]
    theirs = np.asarray(gradient_jit(u, trajectory_tl))
    error = float(np.max(np.abs(theirs - ours)) / np.max(np.abs(ours)))

    def run_forecast():
        return forecast_jit(x0, p).block_until_ready()

    def run_gradient():
        return gradient_jit(u, trajectory_tl).block_until_ready()

    run_forecast(), run_gradient()  # compile
    t_forecast, t_gradient = timing.time_pair(run_forecast, run_gradient, n_batches, batch_seconds)
    return t_forecast, t_gradient, error


# --- the table --------------------------------------------------------------------------------


def header(jax_version: str | None) -> str:
    return f"{timing.machine_header()}\njax: {jax_version or 'not installed (comparison skipped)'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few short batches, small windows: a smoke test, not a measurement")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc thresholds alone")
    parser.add_argument("--only", default="", metavar="TEXT", help="run only the cases whose label contains TEXT")
    parser.add_argument("--windows", type=int, nargs="+", default=None, metavar="L", help=f"window lengths (default {' '.join(map(str, WINDOWS))})")
    parser.add_argument("--no-jax", action="store_true", help="skip the JAX comparison even if JAX is installed")
    args = parser.parse_args(argv)
    n_batches, batch_seconds = (3, 0.01) if args.quick else (7, 0.1)
    windows = args.windows or ((2, 5) if args.quick else WINDOWS)
    jax_modules = None if args.no_jax else import_jax()
    selected = [case for case in cases() if args.only in case.label]
    if args.quick:  # one size per model kind, the smallest
        smallest: dict[str, Case] = {}
        for case in selected:
            key = case.label.split(" ")[0] + (" per-step" if not case.hook else "")
            if key not in smallest or case.size < smallest[key].size:
                smallest[key] = case
        selected = list(smallest.values())

    print(header(jax_modules[0].__version__ if jax_modules else None))
    print("malloc: default" if args.default_malloc else timing.fix_malloc_thresholds())
    print(f"median of {n_batches} interleaved batches of ~{batch_seconds} s each; IncrementalCost built (and linearised) beforehand, not counted")
    print("identity observations at every step, control state + parameters; ratio = gradient / forecast")
    print()
    columns = f"{'model':<38} {'n':>5} {'L':>3} {'forecast ms':>12} {'gradient ms':>12} {'ratio':>6} {'target':>6}  {'met':<7}"
    if jax_modules:
        columns += f" {'jax fwd ms':>10} {'jax grad ms':>11} {'jax ratio':>9} {'jax err':>8}"
    print(columns)
    print("-" * len(columns))
    all_met = True
    for case in selected:
        for L in windows:
            model = case.make()
            problem = build_problem(model, L, hook=case.hook)
            t_forecast, t_gradient = measure(problem, n_batches, batch_seconds)
            ratio = t_gradient / t_forecast
            met = ratio <= case.target
            all_met &= met
            line = (f"{case.label:<38} {case.size:>5} {L:>3} {t_forecast * 1e3:>12.3f} {t_gradient * 1e3:>12.3f} "
                    f"{ratio:>6.2f} {case.target:>5.0f}x  {'met' if met else 'NOT met':<7}")
            if jax_modules and case.hook:
                try:
                    jf, jg, err = measure_jax(problem, *jax_modules, n_batches, batch_seconds)
                    line += f" {jf * 1e3:>10.3f} {jg * 1e3:>11.3f} {jg / jf:>9.2f} {err:>8.1e}"
                except Exception as exc:  # the comparison is optional: report, don't stop
                    line += f" jax failed: {type(exc).__name__}: {exc}"
            print(line, flush=True)
            del problem
    print()
    print("all targets met" if all_met else "some targets NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
