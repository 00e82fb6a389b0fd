"""How close to the machine: fourdvar against JAX's jit, a compiled loop, and itself one direction at a time.

    taskset -c 1 python benchmarks/machine.py            # full run (a few minutes)
    taskset -c 1 python benchmarks/machine.py --quick    # smoke test
    taskset -c 1 python benchmarks/machine.py --cpu-time # times in the process's CPU seconds (a loaded machine)
    pip install -e ".[bench]"                            # JAX, for the first table

One run prints, each figure the median of interleaved batches (``timing.time_pair``:
a slow patch of a shared machine hits both sides of a ratio):

1. **Gradient over a 50-step window vs JAX jit.**  ``IncrementalCost.value_and_gradient``
   (identity observations at every step, control state + parameters, built
   beforehand as in ``benchmarks/gradient.py``) against ``jax.jit(jax.grad(Jq))`` of the
   same cost with the trajectory linearised by ``jax.linearize`` beforehand.
   Targets: Lorenz-96 <= 2x JAX at n = 40 and faster at 400 and 4000; LocalMLP
   <= 2x at n = 40; the dense residual MLPs faster.
   Then the **nonlinear gradient**, what each outer loop pays: ``FourDVarCost.gradient``
   (the window linearised, then one adjoint sweep) against ``jax.jit(jax.grad(J))`` of
   the nonlinear cost (the trajectory a ``lax.scan`` of the same step).  Targets:
   LocalMLP n = 40 <= 2x, residual MLP 400 <= 1x.
2. **One Lorenz-96 RK4 step at n = 4000** (F = 8): ``Lorenz96.step`` (compiled
   kernel), the numpy reference path (``compiled=False``), and a C loop compiled
   here with ``gcc -O3`` (if gcc is there).  Target: within 2x of the C loop.
3. **The Hessian matrix of ``configs/l96_surrogate.yaml``'s window** (LocalMLP
   n = 40, 32 tanh units, RK4; 20 steps; identity observations every step; control
   state + weights, 265 values): ``hessian_matrix()`` (blocked sweeps) against one
   ``hessian_vector`` per unit vector through the per-step chain (what it did
   before).  Target: >= 5x.
4. **Compile time** of the Lorenz-96 kernels, first call in a fresh process with
   an empty numba cache, and again with the cache filled.
5. **LocalMLP linearisation vs its forward step** (``[5,32,1]``, RK4, n = 40 and
   4000): time ratio (target <= 1.5x) and the memory a linearisation keeps
   (``tracemalloc``) against the activations its TL/AD need, the layer inputs
   ``a_{i-1}`` (bias rows included) and the output of each RK4 stage.  Then each
   network's window linearisation (``linearize_window``, 50 steps) against its
   forecast over the same steps (target <= 1.5x).

The full run writes its output to its section of ``benchmarks/RESULTS.md``.

JAX must be pinned to one core by ``taskset``; its thread flags do not keep it there.
"""

from __future__ import annotations

import importlib.util
import os

# The shared timing module, loaded by path; loading it takes this folder off sys.path
# and pins BLAS to one thread (see benchmarks/timing.py), so it comes first.
_spec = importlib.util.spec_from_file_location("benchmark_timing", os.path.join(os.path.dirname(os.path.abspath(__file__)), "timing.py"))
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)
_spec = importlib.util.spec_from_file_location("benchmark_gradient", os.path.join(os.path.dirname(os.path.abspath(__file__)), "gradient.py"))
gradient_benchmark = importlib.util.module_from_spec(_spec)
import sys  # noqa: E402

sys.modules[_spec.name] = gradient_benchmark  # its dataclasses look their module up there
_spec.loader.exec_module(gradient_benchmark)
import argparse  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import io  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from fourdvar.cost import FourDVarCost, IncrementalCost  # noqa: E402
from fourdvar.covariances import Diagonal  # noqa: E402
from fourdvar.interfaces import ObservationSlot  # noqa: E402
from fourdvar.window import PerStepModel, forecast, linearize_window  # noqa: E402
from models import MLP, LocalMLP, Lorenz96  # noqa: E402
from models.lorenz96 import KERNELS_AVAILABLE  # noqa: E402
from observations import Identity  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results import record  # noqa: E402

sys.path.pop(0)

WINDOW = 50
#: the clock of every timing (``--cpu-time``: the process's CPU time)
CLOCK = [time.perf_counter]


def time_pair(first, second, n_batches: int, batch_seconds: float) -> tuple[float, float]:
    """:func:`timing.time_pair` on the clock chosen on the command line."""
    return timing.time_pair(first, second, n_batches, batch_seconds, clock=CLOCK[0])


# --- 1. gradient against JAX -------------------------------------------------------------------


def gradient_cases():
    """``(label, n, make model, target of fourdvar / JAX, what the target says)``."""
    out = []
    for n, target in ((40, 2.0), (400, 1.0), (4000, 1.0)):
        out.append(("lorenz96 (rk4, F estimated)", n, lambda n=n: Lorenz96(n_state=n, estimate_forcing=True), target))
    for n, target in ((40, 2.0), (4000, None)):
        out.append(("local_mlp [5,32,1] rk4", n, lambda n=n: LocalMLP(n_state=n, hidden=[32], integrator="rk4", init_output_scale=1.0), target))
    for n in (400, 2000):
        out.append((f"mlp residual [{n},{n},{n}]", n, lambda n=n: MLP([n, n, n], ["tanh", "identity"], residual=True), 1.0))
    return out


def gradient_table(jax_modules, n_batches, batch_seconds, window, only):
    print(f"1. gradient of Jq over a {window}-step window: fourdvar vs jax.jit(jax.grad(Jq)), ms per call")
    columns = f"{'model':<30} {'n':>5} {'fourdvar':>9} {'jax':>9} {'ratio':>6} {'target':>7}  met"
    print(columns)
    print("-" * len(columns))
    for label, n, make, target in gradient_cases():
        if only not in label:
            continue
        problem = gradient_benchmark.build_problem(make(), window)
        jq, u = problem.jq, problem.u
        if jax_modules is None:
            t_ours = time_pair(lambda: jq.value_and_gradient(u), lambda: None, n_batches, batch_seconds)[0]
            print(f"{label:<30} {n:>5} {t_ours * 1e3:>9.3f} {'-':>9}", flush=True)
            continue
        t_ours, t_jax, error = measure_against_jax(problem, jax_modules, n_batches, batch_seconds)
        print_ratio(f"{label:<30}", n, t_ours, t_jax, target, error)
    print()


def print_ratio(label: str, n: int, t_ours: float, t_jax: float, target: float | None, error: float) -> None:
    """One row of a table against JAX: times in ms, their ratio, the target and whether it is met."""
    ratio = t_ours / t_jax
    verdict = "-" if target is None else ("yes" if ratio <= target else "NO")
    target_text = "-" if target is None else (f"<={target:.0f}x" if target > 1 else "faster")
    print(f"{label} {n:>5} {t_ours * 1e3:>9.3f} {t_jax * 1e3:>9.3f} {ratio:>6.2f} {target_text:>7}  {verdict}"
          f"   (gradients agree to {error:.0e})", flush=True)


def measure_against_jax(problem, jax_modules, n_batches, batch_seconds):
    """``(our gradient s, JAX gradient s, max relative difference)``, batches interleaved."""
    jax, jnp = jax_modules
    jq, L = problem.jq, problem.n_steps
    step = gradient_benchmark.jax_step(problem.model, jnp)

    def trajectory(x0, p):
        def body(x, _):
            x_next = step(x, p)
            return x_next, x_next

        _, xs = jax.lax.scan(body, x0, None, length=L)
        return jnp.concatenate([x0[None, :], xs])

    _, trajectory_tl = jax.linearize(trajectory, jnp.asarray(problem.x0), jnp.asarray(problem.p))
    d = jnp.stack([d_k for _, _, d_k in jq.observations])
    R_std = jnp.stack([jnp.asarray(slot.covariance.std * np.ones(slot.operator.n_obs)) for slot, _, _ in jq.observations])
    B_std, P_std = jnp.asarray(jq.cost.B.std * np.ones(jq.n_x)), jnp.asarray(jq.cost.P.std * np.ones(jq.n_p))
    v_b, w_b, n_x = jnp.asarray(jq.v_b), jnp.asarray(jq.w_b), jq.n_x

    def Jq(u, tl):
        v, w = u[:n_x], u[n_x:]
        dx = tl(B_std * v, P_std * w)
        return 0.5 * jnp.sum((v_b + v) ** 2) + 0.5 * jnp.sum((w_b + w) ** 2) + 0.5 * jnp.sum(((dx - d) / R_std) ** 2)

    gradient_jit = jax.jit(jax.grad(Jq))
    u_jax = jnp.asarray(problem.u)
    ours = jq.value_and_gradient(problem.u)[1]
    theirs = np.asarray(gradient_jit(u_jax, trajectory_tl).block_until_ready())
    error = float(np.max(np.abs(theirs - ours)) / np.max(np.abs(ours)))
    t_ours, t_jax = time_pair(lambda: jq.value_and_gradient(problem.u),
                                     lambda: gradient_jit(u_jax, trajectory_tl).block_until_ready(), n_batches, batch_seconds)
    return t_ours, t_jax, error


def nonlinear_gradient_cases():
    """``(label, n, make model, target of fourdvar / JAX, model's own window)`` for the nonlinear gradient;
    without its own window a model is linearised step by step (:class:`fourdvar.window.PerStepModel`)."""
    def local_mlp():
        return LocalMLP(n_state=40, hidden=[32], integrator="rk4", init_output_scale=1.0)

    def mlp():
        return MLP([400, 400, 400], ["tanh", "identity"], residual=True)

    return [
        ("lorenz96 (rk4, F estimated)", 40, lambda: Lorenz96(n_state=40, estimate_forcing=True), None, True),
        ("local_mlp [5,32,1] rk4", 40, local_mlp, 2.0, True),
        ("local_mlp [5,32,1] rk4 per-step", 40, local_mlp, None, False),
        ("mlp residual [400,400,400]", 400, mlp, 1.0, True),
        ("mlp residual [400,400,400] per-step", 400, mlp, None, False),
    ]


def nonlinear_gradient_table(jax_modules, n_batches, batch_seconds, window, only):
    print(f"1b. nonlinear gradient of J over a {window}-step window (linearise + adjoint, what each outer loop pays):")
    print("    FourDVarCost.gradient vs jax.jit(jax.grad(J)), ms per call")
    columns = f"{'model':<36} {'n':>5} {'fourdvar':>9} {'jax':>9} {'ratio':>6} {'target':>7}  met"
    print(columns)
    print("-" * len(columns))
    for label, n, make, target, hook in nonlinear_gradient_cases():
        if only not in label:
            continue
        problem = gradient_benchmark.build_problem(make(), window, hook=hook)
        cost, x0, p = problem.cost, problem.x0, problem.p
        if jax_modules is None:
            t_ours = time_pair(lambda: cost.gradient(x0, p), lambda: None, n_batches, batch_seconds)[0]
            print(f"{label:<36} {n:>5} {t_ours * 1e3:>9.3f} {'-':>9}", flush=True)
            continue
        gradient_jit, arguments = jax_nonlinear_gradient(problem, *jax_modules)
        ours = np.concatenate(cost.gradient(x0, p)[1:])
        theirs = np.concatenate([np.asarray(g) for g in gradient_jit(*arguments)])
        error = float(np.max(np.abs(theirs - ours)) / np.max(np.abs(ours)))
        t_ours, t_jax = time_pair(lambda: cost.gradient(x0, p),
                                         lambda: [g.block_until_ready() for g in gradient_jit(*arguments)], n_batches, batch_seconds)
        print_ratio(f"{label:<36}", n, t_ours, t_jax, target, error)
    print()


def jax_nonlinear_gradient(problem, jax, jnp):
    """``(jax.jit(jax.grad(J)), (x0, p))``: ``J`` the nonlinear cost of ``problem`` (diagonal ``B``, ``P``, ``R``,
    identity observations at every step) over the trajectory of ``gradient_benchmark.jax_step``."""
    cost, L = problem.cost, problem.n_steps
    step = gradient_benchmark.jax_step(problem.model, jnp)
    y = jnp.stack([jnp.asarray(slot.values) for slot in cost.slots])
    R_std = jnp.stack([jnp.asarray(slot.covariance.std * np.ones(slot.operator.n_obs)) for slot in cost.slots])
    xb, pb = jnp.asarray(cost.xb), jnp.asarray(cost.pb)
    B_std, P_std = jnp.asarray(cost.B.std * np.ones(cost.xb.size)), jnp.asarray(cost.P.std * np.ones(cost.pb.size))

    def J(x0, p):
        def body(x, _):
            x_next = step(x, p)
            return x_next, x_next

        _, xs = jax.lax.scan(body, x0, None, length=L)
        x = jnp.concatenate([x0[None, :], xs])
        return 0.5 * jnp.sum(((x0 - xb) / B_std) ** 2) + 0.5 * jnp.sum(((p - pb) / P_std) ** 2) + 0.5 * jnp.sum(((x - y) / R_std) ** 2)

    return jax.jit(jax.grad(J, argnums=(0, 1))), (jnp.asarray(problem.x0), jnp.asarray(problem.p))


# --- 2. one Lorenz-96 step against a compiled loop ------------------------------------------------

C_LORENZ96 = r"""
/* One RK4 step of dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F on a periodic grid. */
static void tendency(const double *x, double F, double *f, int n) {
    for (int i = 0; i < n; i++) {
        int ip1 = i + 1 == n ? 0 : i + 1, im1 = i == 0 ? n - 1 : i - 1, im2 = i < 2 ? i + n - 2 : i - 2;
        f[i] = (x[ip1] - x[im2]) * x[im1] - x[i] + F;
    }
}
void rk4_step(const double *x, double F, double dt, int n, double *out, double *work) {
    double *k1 = work, *k2 = work + n, *k3 = work + 2 * n, *k4 = work + 3 * n, *X = work + 4 * n;
    tendency(x, F, k1, n);
    for (int i = 0; i < n; i++) X[i] = x[i] + 0.5 * dt * k1[i];
    tendency(X, F, k2, n);
    for (int i = 0; i < n; i++) X[i] = x[i] + 0.5 * dt * k2[i];
    tendency(X, F, k3, n);
    for (int i = 0; i < n; i++) X[i] = x[i] + dt * k3[i];
    tendency(X, F, k4, n);
    for (int i = 0; i < n; i++) out[i] = x[i] + dt / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
}
"""


def compile_c_reference(directory: str):
    """``rk4_step`` of :data:`C_LORENZ96` compiled with ``gcc -O3 -march=native``, or ``None`` without gcc."""
    source, library = os.path.join(directory, "l96.c"), os.path.join(directory, "l96.so")
    with open(source, "w") as handle:
        handle.write(C_LORENZ96)
    try:
        subprocess.run(["gcc", "-O3", "-march=native", "-shared", "-fPIC", "-o", library, source], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    function = ctypes.CDLL(library).rk4_step
    pointer = np.ctypeslib.ndpointer(dtype=np.float64, flags="C_CONTIGUOUS")
    function.argtypes = [pointer, ctypes.c_double, ctypes.c_double, ctypes.c_int, pointer, pointer]
    function.restype = None
    return function


def step_table(n_batches, batch_seconds, n=4000):
    print(f"2. one Lorenz-96 RK4 step at n = {n}, us per call")
    model, numpy_model = Lorenz96(n_state=n), Lorenz96(n_state=n, compiled=False)
    x = numpy_model.forecast(8.0 + np.random.default_rng(0).standard_normal(n), np.empty(0), 100)[-1]
    p = np.empty(0)
    with tempfile.TemporaryDirectory() as directory:
        c_step = compile_c_reference(directory)
        if c_step is None:
            print("   gcc not found: no compiled reference")
        else:
            out, work = np.empty(n), np.empty(5 * n)
            c_step(x, 8.0, model.dt, n, out, work)
            agreement = np.max(np.abs(out - model.step(x, p))) / np.max(np.abs(out))
            t_ours, t_c = time_pair(lambda: model.step(x, p), lambda: c_step(x, 8.0, model.dt, n, out, work), n_batches, batch_seconds)
            print(f"   fourdvar (compiled kernel) {t_ours * 1e6:8.1f}   gcc -O3 loop {t_c * 1e6:8.1f}   ratio {t_ours / t_c:5.2f}"
                  f"   target <=2x  {'yes' if t_ours / t_c <= 2 else 'NO'}   (steps agree to {agreement:.0e})")
        t_ours, t_numpy = time_pair(lambda: model.step(x, p), lambda: numpy_model.step(x, p), n_batches, batch_seconds)
        print(f"   fourdvar (compiled kernel) {t_ours * 1e6:8.1f}   numpy path   {t_numpy * 1e6:8.1f}   ratio {t_ours / t_numpy:5.2f}")
    print()


# --- 3. the Hessian matrix, blocked against one direction at a time ---------------------------------


def surrogate_window_cost(per_step: bool = False) -> IncrementalCost:
    """The incremental cost of one window of ``configs/l96_surrogate.yaml``: its model, window and covariances.

    ``per_step=True``: the window linearised as it was before blocks and stored step
    Jacobians, the per-step chain swept once per direction.
    """
    rng = np.random.default_rng(1)
    model = LocalMLP(n_state=40, half_width=2, hidden=[32], activation="tanh", dt=0.05, integrator="rk4",
                     state_offset=2.0, state_scale=4.0, init_output_scale=1.0)
    truth_model = Lorenz96(n_state=40)
    x_true = truth_model.forecast(8.0 + rng.standard_normal(40), np.empty(0), 1000)[-1]
    truth = truth_model.forecast(x_true, np.empty(0), 20)
    operator, R = Identity(n_state=40), Diagonal(1.0, size=40)
    slots = [ObservationSlot(k, truth[k] + R.sample(rng), operator, R) for k in range(21)]
    p = 0.3 * model.init_params(rng)
    cost = FourDVarCost(PerStepModel(model) if per_step else model, slots, x_true + rng.standard_normal(40),
                        B=Diagonal(1.0, size=40), pb=p, P=Diagonal(0.5, size=model.n_params), n_steps=20)
    jq = IncrementalCost(cost, cost.xb, p, control="both")
    if per_step:
        jq.window.DENSE_STEP_SIZE = 0
    return jq


def hessian_table(n_batches):
    print("3. Hessian matrix of configs/l96_surrogate.yaml's window (265 x 265), ms per matrix")
    print("   one by one: hessian_vector per unit vector through the per-step chain (as before blocks);")
    print("   blocked: hessian_matrix(), over the per-step chain, and over the stored step Jacobians (what a run does)")
    blocked, per_step, chain_blocked = surrogate_window_cost(), surrogate_window_cost(per_step=True), surrogate_window_cost(per_step=True)

    def one_by_one():
        return np.column_stack([per_step.hessian_vector(e) for e in np.eye(per_step.size)])

    A, A_ref = blocked.hessian_matrix(), one_by_one()
    agreement = np.max(np.abs(A - 0.5 * (A_ref + A_ref.T))) / np.max(np.abs(A))
    for label, jq in (("blocked, per-step chain", chain_blocked), ("blocked, step Jacobians", blocked)):
        t_blocked, t_one = time_pair(jq.hessian_matrix, one_by_one, n_batches, batch_seconds=0.0)
        print(f"   {label:<24} {t_blocked * 1e3:8.1f}   one by one {t_one * 1e3:8.1f}   speed-up {t_one / t_blocked:5.1f}x"
              f"   target >=5x  {'yes' if t_one / t_blocked >= 5 else 'NO'}")
    print(f"   (blocked and one-by-one matrices agree to {agreement:.0e}; the step Jacobians are in use: {blocked.window.dense})")
    print()


# --- 4. compile time -------------------------------------------------------------------------------

COMPILE_PROBE = """
import time
t0, c0 = time.perf_counter(), time.process_time()
import numpy as np
from models import Lorenz96
model = Lorenz96(40, estimate_forcing=True)
x, p = 8.0 + np.sin(np.arange(40.0)), np.array([8.0])
model.step(x, p)
window = model.linearize_window(x, p, 5)
window.tl(x, p)
window.ad({5: x})
window.tl(np.ones((40, 2)), np.ones((1, 2)))
window.ad({5: np.ones((40, 2))})
print(f"{time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s cpu")
"""


def compile_table():
    print("4. Lorenz-96 kernels: first use in a fresh process (import fourdvar and numba, compile or load the one-scale step and window NL/TL/AD)")
    if not KERNELS_AVAILABLE:
        print("   numba not installed: the numpy path runs, nothing to compile")
        return
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        times = [subprocess.run([sys.executable, "-c", COMPILE_PROBE], env=env, capture_output=True, text=True, check=True).stdout.strip()
                 for _ in range(2)]
    print(f"   empty cache (compiles): {times[0]}    cache filled (loads): {times[1]}")
    print()


# --- 5. LocalMLP linearisation against its forward run ----------------------------------------------


def linearisation_table(n_batches, batch_seconds):
    import tracemalloc

    print("5. LocalMLP [5,32,1] rk4: linearize() against step(), and the memory a linearisation keeps")
    for n in (40, 4000):
        model = LocalMLP(n_state=n, hidden=[32], integrator="rk4", init_output_scale=1.0)
        rng = np.random.default_rng(0)
        x, p = 3.0 * rng.standard_normal(n) + 2.0, model.init_params(rng)
        t_step, t_linearize = time_pair(lambda: model.step(x, p), lambda: model.linearize(x, p), n_batches, batch_seconds)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        lin = model.linearize(x, p)
        kept = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        activations = sum(sum(a.nbytes for a in stage.net.a_prev) + stage.net.output.nbytes for stage in lin.stages)
        ratio = t_linearize / t_step
        print(f"   n = {n:>4}: step {t_step * 1e3:8.3f} ms  linearize {t_linearize * 1e3:8.3f} ms  ratio {ratio:5.2f}"
              f"  target <=1.5x  {'yes' if ratio <= 1.5 else 'NO'}   kept {kept / 1e6:7.3f} MB, activations {activations / 1e6:7.3f} MB")
    print(f"   each network's window linearisation ({WINDOW} steps, fourdvar.window.linearize_window: the model's own window,")
    print("   or the per-step chain where it has none) against its forecast, ms")
    for label, make in (("local_mlp [5,32,1] rk4 n = 40", lambda: LocalMLP(n_state=40, hidden=[32], integrator="rk4", init_output_scale=1.0)),
                        ("local_mlp [5,32,1] rk4 n = 4000", lambda: LocalMLP(n_state=4000, hidden=[32], integrator="rk4", init_output_scale=1.0)),
                        ("mlp residual [400,400,400]", lambda: MLP([400, 400, 400], ["tanh", "identity"], residual=True))):
        model = make()
        x0, p = gradient_benchmark.initial_point(model, np.random.default_rng(0))
        t_forecast, t_window = time_pair(lambda: forecast(model, x0, p, WINDOW), lambda: linearize_window(model, x0, p, WINDOW),
                                                n_batches, batch_seconds)
        ratio = t_window / t_forecast
        print(f"   {label:<32} forecast {t_forecast * 1e3:8.3f}  window {t_window * 1e3:8.3f}  ratio {ratio:5.2f}"
              f"  target <=1.5x  {'yes' if ratio <= 1.5 else 'NO'}")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few short batches, short window: a smoke test, not a measurement")
    parser.add_argument("--only", default="", metavar="TEXT", help="gradient table: only the models whose label contains TEXT")
    parser.add_argument("--no-jax", action="store_true", help="skip JAX even if it is installed")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by the process's CPU seconds: on a loaded machine a pinned process is not charged for the time others hold its core")
    args = parser.parse_args(argv)
    CLOCK[0] = time.process_time if args.cpu_time else time.perf_counter
    n_batches, batch_seconds = (3, 0.01) if args.quick else (7, 0.2)
    jax_modules = None if args.no_jax else gradient_benchmark.import_jax()
    output = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, output)):
        run_tables(args, jax_modules, n_batches, batch_seconds)
    if not (args.quick or args.only):
        record("How close to the machine", f"```\n{output.getvalue()}```",
               command="taskset -c 1 python benchmarks/machine.py" + (" --cpu-time" if args.cpu_time else ""))
    return 0


class _Tee(io.TextIOBase):
    """Writes to several streams: the terminal and the text recorded in RESULTS.md."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def run_tables(args, jax_modules, n_batches, batch_seconds) -> None:
    print(timing.machine_header())
    print(f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(timing.fix_malloc_thresholds())
    print(f"jax: {jax_modules[0].__version__ if jax_modules else 'not installed (pip install -e .[bench])'}; "
          f"numba kernels: {'yes' if KERNELS_AVAILABLE else 'no (numpy path)'}; "
          f"cpu affinity: {sorted(os.sched_getaffinity(0))}")
    print(f"medians of {n_batches} interleaved batches of ~{batch_seconds} s each, "
          f"{'CPU seconds of this process (--cpu-time)' if CLOCK[0] is time.process_time else 'wall clock'}")
    print()
    gradient_table(jax_modules, n_batches, batch_seconds, 5 if args.quick else WINDOW, args.only)
    nonlinear_gradient_table(jax_modules, n_batches, batch_seconds, 5 if args.quick else WINDOW, args.only)
    if args.only:
        return
    step_table(n_batches, batch_seconds)
    hessian_table(3 if args.quick else 5)
    compile_table()
    linearisation_table(n_batches, batch_seconds)
    print(f"load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    raise SystemExit(main())
