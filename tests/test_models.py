"""The consistency suite on every model: adjoint (dot-product), Taylor and linearize tests.

Each test runs the reusable checks of :mod:`fourdvar.checks` and asserts their
verdict; the negative controls at the end show the same checks fail on a
deliberately wrong TL or AD.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from fourdvar import checks
from fourdvar.registry import build_model
from models import MLP, Hybrid, LocalMLP, Lorenz96
from models.activations import ACTIVATIONS
from models.network import Network

SEEDS = [0, 1, 2]


def lorenz96_state(n, rng, spinup=200):
    """A state on (or near) the Lorenz-96 attractor."""
    model = Lorenz96(n_state=n)
    x = 8.0 + rng.standard_normal(n)
    for _ in range(spinup):
        x = model.step(x, np.empty(0))
    return x


def assert_all_pass(results):
    failed = [str(r) for r in results if not r.passed]
    assert not failed, "\n".join(failed)


def run_suite(model, x, p, seed, n_steps=10):
    rng = np.random.default_rng(seed)
    results = checks.check_model(model, x, p, rng, n_steps=n_steps)
    assert_all_pass(results)
    return results


# --- Lorenz-96 ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [4, 5, 40, 1000])
@pytest.mark.parametrize("estimate_forcing", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_lorenz96_passes_adjoint_taylor_and_linearize_checks(n, estimate_forcing, seed):
    rng = np.random.default_rng(seed)
    model = Lorenz96(n_state=n, forcing=8.0, estimate_forcing=estimate_forcing)
    x = lorenz96_state(n, rng, spinup=50)
    p = model.init_params(rng)
    assert p.shape == ((1,) if estimate_forcing else (0,))
    results = run_suite(model, x, p, seed)
    assert results[0].value < 1e-12 and results[1].value < 1e-12


def independent_lorenz96_rk4(x, forcing, dt):
    """RK4 of dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F written with np.roll."""

    def f(x):
        return (np.roll(x, -1) - np.roll(x, 2)) * np.roll(x, 1) - x + forcing

    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


@pytest.mark.parametrize("n", [4, 40, 1000])
def test_lorenz96_step_matches_independent_rk4(n):
    rng = np.random.default_rng(3)
    x = lorenz96_state(n, rng, spinup=20)
    for estimate_forcing, forcing, p in [(False, 8.0, np.empty(0)), (True, 3.0, np.array([6.5]))]:
        model = Lorenz96(n_state=n, forcing=forcing, dt=0.05, estimate_forcing=estimate_forcing)
        F = p[0] if estimate_forcing else forcing
        reference = independent_lorenz96_rk4(x, F, 0.05)
        assert np.max(np.abs(model.step(x, p) - reference)) / np.max(np.abs(reference)) < 1e-13


@pytest.mark.parametrize("seed", SEEDS)
def test_lorenz96_with_extra_tendency_passes_checks_and_matches_independent_rk4(seed):
    rng = np.random.default_rng(seed)
    model = Lorenz96(n_state=40, estimate_forcing=True, extra_amplitude=1.5, extra_wavelength=7.0)
    x = lorenz96_state(40, rng, spinup=30)
    run_suite(model, x, np.array([8.0]), seed)
    reference_model = Lorenz96(n_state=40)

    def rk4_with_extra(x, dt=0.05):
        def f(x):
            return (np.roll(x, -1) - np.roll(x, 2)) * np.roll(x, 1) - x + 8.0 + 1.5 * np.sin(2 * np.pi * x / 7.0)

        k1 = f(x)
        k2 = f(x + 0.5 * dt * k1)
        k3 = f(x + 0.5 * dt * k2)
        k4 = f(x + dt * k3)
        return x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    reference = rk4_with_extra(x)
    assert np.max(np.abs(model.step(x, np.array([8.0])) - reference)) / np.max(np.abs(reference)) < 1e-13
    assert np.max(np.abs(reference_model.step(x, np.empty(0)) - reference)) > 1e-3  # the term matters


def test_lorenz96_forcing_adjoint_is_sum_over_window():
    """With p = [F], <M_p dF, ay> = dF * ap: check against a finite difference in F."""
    model = Lorenz96(n_state=40, estimate_forcing=True)
    rng = np.random.default_rng(4)
    x = lorenz96_state(40, rng)
    p = np.array([8.0])
    ay = rng.standard_normal(40)
    _, ap = model.step_ad(x, p, ay)
    h = 1e-5
    fd = (model.step(x, p + h) - model.step(x, p - h)) @ ay / (2 * h)
    assert abs(ap[0] - fd) / abs(fd) < 1e-8


def test_lorenz96_rejects_too_small_grid():
    with pytest.raises(ValueError, match="n_state >= 4"):
        Lorenz96(n_state=3)


# --- MLP ------------------------------------------------------------------------------


MLP_ARCHITECTURES = [
    [8, 16, 8],  # 1 hidden layer
    [8, 16, 12, 8],  # 2
    [10, 20, 20, 20, 10],  # 3
    [6, 12, 10, 8, 12, 6],  # 4
]


@pytest.mark.parametrize("layer_sizes", MLP_ARCHITECTURES, ids=lambda s: f"{len(s) - 2}hidden")
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_mlp_passes_adjoint_taylor_and_linearize_checks(layer_sizes, activation, residual, seed):
    rng = np.random.default_rng(seed)
    n_layers = len(layer_sizes) - 1
    model = MLP(layer_sizes, [activation] * (n_layers - 1) + ["identity"], residual=residual)
    p = 0.5 * rng.standard_normal(model.n_params)
    x = rng.standard_normal(model.n_state)
    run_suite(model, x, p, seed, n_steps=4)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_output_activation_can_be_nonlinear(activation):
    rng = np.random.default_rng(5)
    model = MLP([5, 7, 5], ["tanh", activation])
    p = 0.5 * rng.standard_normal(model.n_params)
    model.network.weights(p)[-1][:, -1] = 2.0  # output biases keep a relu output unit active
    run_suite(model, rng.standard_normal(5), p, 5, n_steps=3)


def test_mlp_parameter_layout_is_row_major_with_bias_last():
    """p = [vec(W_1); vec(W_2)], W_i of shape (n_i, n_{i-1}+1), bias in the last column."""
    model = MLP([3, 4, 3], ["tanh", "identity"])
    assert model.n_params == 4 * 4 + 3 * 5
    p = np.arange(model.n_params, dtype=float)
    W1, W2 = model.network.weights(p)
    assert W1.shape == (4, 4) and W2.shape == (3, 5)
    assert W1[1, 0] == 4.0 and W1[0, -1] == 3.0  # row-major; bias b_1[0] = p[3]
    assert np.shares_memory(W1, p)  # views, not copies
    x = np.array([0.1, -0.2, 0.3])
    p = 0.1 * np.sin(p)  # moderate weights, same layout
    W1, W2 = model.network.weights(p)
    expected = W2 @ np.append(np.tanh(W1 @ np.append(x, 1.0)), 1.0)
    np.testing.assert_allclose(model.step(x, p), expected, rtol=1e-14, atol=0)


def test_mlp_residual_adds_the_input():
    rng = np.random.default_rng(6)
    plain = MLP([6, 9, 6], ["tanh", "identity"])
    residual = MLP([6, 9, 6], ["tanh", "identity"], residual=True)
    x, p = rng.standard_normal(6), rng.standard_normal(plain.n_params)
    np.testing.assert_allclose(residual.step(x, p), x + plain.step(x, p), rtol=0, atol=1e-15)
    assert np.all(residual.step(x, residual.init_params(rng)) == x)  # starts at zero output


def test_mlp_rejects_inconsistent_configuration():
    with pytest.raises(ValueError, match="one name per layer"):
        MLP([4, 8, 4], ["tanh"])
    with pytest.raises(ValueError, match="unknown activation 'tahn'"):
        MLP([4, 8, 4], ["tahn", "identity"])
    with pytest.raises(ValueError, match="start and end with the state size"):
        MLP([4, 8, 5], ["tanh", "identity"])
    model = MLP([4, 8, 4], ["tanh", "identity"])
    with pytest.raises(ValueError, match=r"state x must have shape \(4,\), got \(5,\)"):
        model.step(np.zeros(5), np.zeros(model.n_params))
    with pytest.raises(ValueError, match="parameters p must have shape"):
        model.step(np.zeros(4), np.zeros(3))


# --- the adjoint is backpropagation ----------------------------------------------------------


def regression_problem(seed=7, n_in=3, n_samples=200):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n_in, n_samples))
    Y = np.sin(1.5 * X[0:1]) + 0.5 * X[1:2] * X[2:3]  # a smooth target, shape (1, m)
    return X, Y


def regression_loss_and_gradient(network, p, X, Y):
    """L(p) = 1/2m sum (NN(X) - Y)^2; gradient by the adjoint with aa_L = (NN(X) - Y)/m."""
    lin = network.linearize(X, p)
    residual = lin.output - Y
    m = X.shape[1]
    _, gradient = lin.ad(residual / m)
    return 0.5 * np.sum(residual**2) / m, gradient


def test_mlp_adjoint_is_backpropagation_gradient_matches_finite_differences():
    from models.network import Network

    X, Y = regression_problem()
    network = Network([3, 16, 16, 1], ["tanh", "sigmoid", "identity"])
    rng = np.random.default_rng(8)
    p = network.init_params(rng)
    loss, gradient = regression_loss_and_gradient(network, p, X, Y)
    h = rng.standard_normal(p.size)
    h /= np.linalg.norm(h)
    eps = 1e-5
    loss_plus, _ = regression_loss_and_gradient(network, p + eps * h, X, Y)
    loss_minus, _ = regression_loss_and_gradient(network, p - eps * h, X, Y)
    fd = (loss_plus - loss_minus) / (2 * eps)
    assert abs(gradient @ h - fd) / abs(fd) < 1e-7
    # and coordinate-wise on a few weights of every layer
    for index in rng.choice(p.size, size=12, replace=False):
        e = np.zeros(p.size)
        e[index] = eps
        fd_i = (regression_loss_and_gradient(network, p + e, X, Y)[0] - regression_loss_and_gradient(network, p - e, X, Y)[0]) / (2 * eps)
        assert abs(gradient[index] - fd_i) <= 1e-7 * max(abs(fd_i), np.linalg.norm(gradient) * 1e-3)


def test_gradient_descent_driven_by_the_adjoint_fits_a_regression():
    from models.network import Network

    X, Y = regression_problem()
    network = Network([3, 16, 1], ["tanh", "identity"])
    p = network.init_params(np.random.default_rng(9))
    initial_loss, _ = regression_loss_and_gradient(network, p, X, Y)
    for _ in range(300):  # plain gradient descent, fixed step
        _, gradient = regression_loss_and_gradient(network, p, X, Y)
        p = p - 1.0 * gradient
    final_loss, _ = regression_loss_and_gradient(network, p, X, Y)
    assert final_loss < initial_loss / 100, (initial_loss, final_loss)


# --- LocalMLP ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [40, 1000])
@pytest.mark.parametrize("integrator", ["euler", "rk2", "rk4"])
@pytest.mark.parametrize("seed", SEEDS)
def test_local_mlp_passes_adjoint_taylor_and_linearize_checks(n, integrator, seed):
    rng = np.random.default_rng(seed)
    model = LocalMLP(n_state=n, half_width=2, hidden=[16], integrator=integrator, init_output_scale=1.0)
    x = lorenz96_state(n, rng, spinup=20)
    run_suite(model, x, model.init_params(rng), seed, n_steps=5)


@pytest.mark.parametrize("integrator", ["euler", "rk4"])
def test_local_mlp_with_state_scaling_passes_checks_and_equals_scaled_network(integrator):
    rng = np.random.default_rng(17)
    scaled = LocalMLP(n_state=30, hidden=[12], integrator=integrator, state_offset=2.0, state_scale=4.0, init_output_scale=1.0)
    p = scaled.init_params(rng)
    x = lorenz96_state(30, rng, spinup=20)
    run_suite(scaled, x, p, 17, n_steps=5)
    # f(x) = c NN((S - m)/c): the step equals the plain network's step on (x - m)/c, mapped back
    plain = LocalMLP(n_state=30, hidden=[12], integrator=integrator, dt=0.05)
    expected = 2.0 + 4.0 * plain.step((x - 2.0) / 4.0, p)
    np.testing.assert_allclose(scaled.step(x, p), expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("hidden", [[8], [12, 8]])
def test_local_mlp_every_activation_and_depth(activation, hidden):
    rng = np.random.default_rng(10)
    model = LocalMLP(n_state=17, half_width=3, hidden=hidden, activation=activation, init_output_scale=1.0)
    p = model.init_params(rng) + 0.1 * rng.standard_normal(model.n_params)
    run_suite(model, rng.standard_normal(17), p, 10, n_steps=3)


@pytest.mark.parametrize("activation, hidden", [("tanh", [16]), ("relu", [8, 6]), ("sigmoid", [5])])
def test_local_mlp_explicit_jacobians_equal_the_layer_by_layer_derivatives(activation, hidden, monkeypatch):
    """On small grids the tendency's TL/AD use stored Jacobians (Jx, Jp); on large ones the
    layer-by-layer products. Both must be the same derivative, to round-off."""
    from models.local_mlp import LocalNetworkTendencyLinearization as Linearization

    rng = np.random.default_rng(23)
    model = LocalMLP(n_state=40, hidden=hidden, activation=activation, integrator="rk4", state_offset=2.0, state_scale=4.0, init_output_scale=1.0)
    x, p = lorenz96_state(40, rng, spinup=20), model.init_params(rng) + 0.1 * rng.standard_normal(model.n_params)
    dx, dp, ay = rng.standard_normal(40), rng.standard_normal(model.n_params), rng.standard_normal(40)
    explicit = model.linearize(x, p)
    for _ in range(Linearization.EXPLICIT_AFTER_CALLS):  # the Jacobians are built on a later call
        assert explicit.stages[0].Jx is None
        explicit.tl(dx, dp)
    monkeypatch.setattr(Linearization, "EXPLICIT_JACOBIAN_SIZE", 0)
    layered = model.linearize(x, p)
    assert explicit.stages[0].Jx is not None and not layered.stages[0].explicit
    for _ in range(Linearization.EXPLICIT_AFTER_CALLS):
        layered.tl(dx, dp)
    assert layered.stages[0].Jx is None
    np.testing.assert_allclose(explicit.tl(dx, dp), layered.tl(dx, dp), rtol=0, atol=1e-13)
    for a_explicit, a_layered in zip(explicit.ad(ay), layered.ad(ay)):
        np.testing.assert_allclose(a_explicit, a_layered, rtol=0, atol=1e-13)


def test_column_jacobians_need_a_one_output_network():
    network = Network([3, 4, 2], ["tanh", "identity"])
    lin = network.linearize(np.ones((3, 5)), network.init_params(np.random.default_rng(0)))
    with pytest.raises(ValueError, match="one output"):
        lin.column_jacobians()


def test_local_mlp_applies_one_network_at_every_grid_point():
    """Shifting the state shifts the step (weights are shared by all points), and each
    point's tendency equals the network applied to its own stencil."""
    rng = np.random.default_rng(11)
    model = LocalMLP(n_state=12, half_width=2, hidden=[5], dt=0.1, init_output_scale=1.0)
    p = model.init_params(rng)
    x = rng.standard_normal(12)
    np.testing.assert_allclose(model.step(np.roll(x, 3), p), np.roll(model.step(x, p), 3), rtol=0, atol=1e-14)
    i = 0
    stencil = x[[10, 11, 0, 1, 2]]  # x[i-2 .. i+2] around i = 0
    W1, W2 = model.network.weights(p)
    nn = W2 @ np.append(np.tanh(W1 @ np.append(stencil, 1.0)), 1.0)
    assert abs(model.step(x, p)[i] - (x[i] + 0.1 * nn[0])) < 1e-14
    assert np.all(LocalMLP(n_state=12).step(x, LocalMLP(n_state=12).init_params(rng)) == x)


# --- Hybrid --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [40, 200])
def test_hybrid_passes_adjoint_taylor_and_linearize_checks(seed, n):
    rng = np.random.default_rng(seed)
    model = Hybrid(
        physics={"type": "lorenz96", "n_state": n, "estimate_forcing": True},
        correction={"type": "local_mlp", "n_state": n, "hidden": [8], "integrator": "rk4", "init_output_scale": 1.0},
    )
    assert model.n_params == 1 + model.correction.n_params
    x = lorenz96_state(n, rng, spinup=20)
    run_suite(model, x, model.init_params(rng), seed, n_steps=5)


def test_hybrid_step_is_physics_plus_correction_increment():
    rng = np.random.default_rng(12)
    physics, correction = Lorenz96(n_state=20), LocalMLP(n_state=20, hidden=[6], init_output_scale=1.0)
    model = Hybrid(physics, correction)
    p = model.init_params(rng)
    x = lorenz96_state(20, rng, spinup=10)
    expected = physics.step(x, np.empty(0)) + (correction.step(x, p) - x)
    np.testing.assert_allclose(model.step(x, p), expected, rtol=0, atol=1e-13)
    # a correction starting at zero output leaves the physics unchanged
    zero = Hybrid(physics, LocalMLP(n_state=20, hidden=[6]))
    np.testing.assert_allclose(zero.step(x, zero.init_params(rng)), physics.step(x, np.empty(0)), rtol=1e-15, atol=1e-14)


def test_hybrid_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="share n_state"):
        Hybrid({"type": "lorenz96", "n_state": 40}, {"type": "local_mlp", "n_state": 20})


# --- registry ----------------------------------------------------------------------------------


def test_registry_builds_every_named_model_from_its_yaml_mapping():
    specs = {
        "mlp": {"type": "mlp", "layer_sizes": [4, 6, 4], "activations": ["tanh", "identity"], "residual": False},
        "lorenz96": {"type": "lorenz96", "n_state": 40, "forcing": 8.0, "dt": 0.05, "estimate_forcing": False},
        "local_mlp": {"type": "local_mlp", "n_state": 40, "half_width": 2, "hidden": [32], "activation": "tanh", "dt": 0.05},
        "hybrid": {"type": "hybrid", "physics": {"type": "lorenz96"}, "correction": {"type": "local_mlp"}},
    }
    classes = {"mlp": MLP, "lorenz96": Lorenz96, "local_mlp": LocalMLP, "hybrid": Hybrid}
    for name, spec in specs.items():
        assert type(build_model(spec)) is classes[name]


def test_registry_finds_a_users_class_by_module_path_and_by_registration(tmp_path, monkeypatch):
    from fourdvar.registry import RegistryError, register_model

    (tmp_path / "my_user_models.py").write_text(
        "import numpy as np\n"
        "from fourdvar.model import ModelBase\n"
        "class Decay(ModelBase):\n"
        "    n_params = 0\n"
        "    def __init__(self, n_state=3, rate=0.5):\n"
        "        self.n_state, self.rate = n_state, rate\n"
        "    def step(self, x, p):\n"
        "        return self.rate * x\n"
        "    def linearize(self, x, p):\n"
        "        return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model({"type": "my_user_models:Decay", "n_state": 5, "rate": 0.25})
    assert model.n_state == 5 and np.all(model.step(np.ones(5), np.empty(0)) == 0.25)

    @register_model("decay_for_test")
    class Registered(type(model)):
        pass

    assert type(build_model({"type": "decay_for_test"})) is Registered
    with pytest.raises(RegistryError, match="did you mean 'lorenz96'"):
        build_model({"type": "lorenz69"})
    with pytest.raises(RegistryError, match="cannot import module 'no_such_module'"):
        build_model({"type": "no_such_module:Model"})
    with pytest.raises(RegistryError, match="has no attribute 'Missing'"):
        build_model({"type": "my_user_models:Missing"})


@pytest.mark.parametrize("reference, problem", [
    ("subprocess:run", "is not a class (a function)"),
    ("builtins:dict", "is not a model class: it has no step, linearize, init_params"),
    ("observations.operators:Identity", "is not a model class: it has no step"),
])
def test_registry_refuses_what_is_not_a_model_class_before_calling_it(reference, problem, tmp_path, monkeypatch):
    from fourdvar.registry import RegistryError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegistryError, match=re.escape(problem)):
        build_model({"type": reference, "args": ["touch", "called"]})
    with pytest.raises(RegistryError, match=re.escape(problem)):  # nested in a hybrid's physics
        build_model({"type": "hybrid", "physics": {"type": reference, "args": ["touch", "called"]}, "correction": {"type": "local_mlp"}})
    assert not (tmp_path / "called").exists()


def test_registry_refuses_an_operator_that_is_not_one():
    from fourdvar.registry import RegistryError, build_operator

    with pytest.raises(RegistryError, match="is not an operator class: it has no apply, apply_tl, apply_ad"):
        build_operator({"type": "models.lorenz96:Lorenz96"})
    assert type(build_operator({"type": "observations.operators:Identity", "n_state": 3})).__name__ == "Identity"


def test_registered_names_only_refuses_module_references_nested_ones_included():
    from fourdvar.registry import RegistryError, registered_names_only

    spec = {"type": "hybrid", "physics": {"type": "models.lorenz96:Lorenz96", "n_state": 8}, "correction": {"type": "local_mlp", "n_state": 8}}
    assert build_model(spec).n_state == 8  # allowed by default
    with registered_names_only(), pytest.raises(RegistryError, match="importing modules named in this input is not allowed"):
        build_model(spec)
    with registered_names_only():
        assert build_model({**spec, "physics": {"type": "lorenz96", "n_state": 8}}).n_state == 8


def test_engine_does_not_import_models_or_observations_by_name():
    """`fourdvar` reaches concrete classes only through the registry."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "fourdvar"
    pattern = re.compile(r"^\s*(from|import)\s+(models|observations)\b", re.MULTILINE)
    offenders = [str(path) for path in root.rglob("*.py") if pattern.search(path.read_text())]
    assert not offenders


# --- negative controls: the suite catches wrong derivatives -------------------------------------


class WrongLinearization:
    """Wraps a correct linearisation and injects one bug into its TL or AD."""

    def __init__(self, lin, tl=None, ad=None):
        self.output = lin.output
        self._lin = lin
        self.tl = tl or lin.tl
        self.ad = ad or lin.ad


class WrongModel:
    """A model whose linearisation carries a bug; everything else delegates."""

    def __init__(self, model, bug):
        self.model, self.bug = model, bug
        self.n_state, self.n_params = model.n_state, model.n_params
        self.step = model.step

    def linearize(self, x, p):
        return self.bug(self.model, self.model.linearize(x, p), x, p)

    def step_tl(self, x, p, dx, dp):
        return self.linearize(x, p).tl(dx, dp)

    def step_ad(self, x, p, ax):
        return self.linearize(x, p).ad(ax)


def sign_flip_in_one_weight_adjoint(model, lin, x, p, index=3):
    def ad(ax):
        ax_prev, ap = lin.ad(ax)
        ap = ap.copy()
        ap[index] = -ap[index]
        return ax_prev, ap

    return WrongLinearization(lin, ad=ad)


def transposed_matrix_in_adjoint(model, lin, x, p):
    """For a one-layer linear network: AD with W instead of W^T for the state."""
    (W,) = model.network.weights(p)

    def ad(ax):
        _, ap = lin.ad(ax)
        return W[:, :-1] @ ax, ap

    return WrongLinearization(lin, ad=ad)


def wrong_tangent_linear(model, lin, x, p):
    """A TL that drops a small part of the parameter sensitivity (1 % of it)."""

    def tl(dx, dp):
        return lin.tl(dx, dp) - 0.01 * lin.tl(np.zeros_like(dx), dp)

    return WrongLinearization(lin, tl=tl)


def test_negative_control_sign_flip_in_one_weight_adjoint_is_caught():
    rng = np.random.default_rng(13)
    model = MLP([6, 10, 6], ["tanh", "identity"])
    p = 0.5 * rng.standard_normal(model.n_params)
    x = rng.standard_normal(6)
    wrong = WrongModel(model, sign_flip_in_one_weight_adjoint)
    assert not checks.model_adjoint_test(wrong, x, p, rng).passed
    assert not checks.model_chain_adjoint_test(wrong, x, p, 5, rng).passed
    assert checks.model_adjoint_test(model, x, p, rng).passed  # and the unperturbed one passes


def test_negative_control_transposed_matrix_in_adjoint_is_caught():
    rng = np.random.default_rng(14)
    model = MLP([7, 7], ["identity"])
    p = rng.standard_normal(model.n_params)
    wrong = WrongModel(model, transposed_matrix_in_adjoint)
    result = checks.model_adjoint_test(wrong, rng.standard_normal(7), p, rng)
    assert not result.passed and result.value > 1e-3


def test_negative_control_wrong_tangent_linear_is_caught_by_taylor_and_adjoint_tests():
    rng = np.random.default_rng(15)
    model = Lorenz96(n_state=40, estimate_forcing=True)
    x = lorenz96_state(40, rng)
    p = np.array([8.0])
    wrong = WrongModel(model, wrong_tangent_linear)
    taylor = checks.model_taylor_test(wrong, x, p, rng)
    assert taylor.failed and abs(taylor.order - 1) < 0.2  # the remainder falls only as a
    assert taylor.inspect == "the parameter part of .tl of linearize(x, p) (M_p dp)"
    assert not checks.model_adjoint_test(wrong, x, p, rng).passed


def test_negative_control_wrong_lorenz96_adjoint_stencil_is_caught():
    """A one-index slip in the adjoint of the advection term."""
    from models import lorenz96 as l96

    rng = np.random.default_rng(16)
    model = Lorenz96(n_state=40)
    x = lorenz96_state(40, rng)

    def ad(self, af):
        ax, ap = original(self, af)
        return ax + np.roll(self.x_im1 * af, 1) - np.roll(self.x_im1 * af, 2), ap

    original = l96.Lorenz96TendencyLinearization.ad
    try:
        l96.Lorenz96TendencyLinearization.ad = ad
        assert not checks.model_adjoint_test(model, x, np.empty(0), rng).passed
    finally:
        l96.Lorenz96TendencyLinearization.ad = original
    assert checks.model_adjoint_test(model, x, np.empty(0), rng).passed
