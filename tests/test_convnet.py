"""The periodic convolutional network: forward against a direct loop, adjoint (dot-product)
and Taylor tests of each layer and the whole network w.r.t. input and weights, the
blocked form against single directions, the surrogate model, and negative controls."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fourdvar import checks
from fourdvar.registry import build_model
from models import ConvSurrogate
from models.convnet import ConvNet, ConvNetLinearization


def loop_convnet(net: ConvNet, x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The network written as the definition reads, one output value at a time."""
    ny, nx, k = net.ny, net.nx, net.kernel
    h = k // 2
    a = x.reshape(net.channels[0], ny, nx) / net.input_scale
    offset = 0
    for c_in, c_out, f in zip(net.channels[:-1], net.channels[1:], net.activations):
        W = p[offset : offset + c_out * c_in * k * k].reshape(c_out, c_in, k, k)
        offset += W.size
        b = p[offset : offset + c_out]
        offset += c_out
        z = np.empty((c_out, ny, nx))
        for o, i, j in itertools.product(range(c_out), range(ny), range(nx)):
            z[o, i, j] = b[o] + sum(W[o, c, u, v] * a[c, (i + u - h) % ny, (j + v - h) % nx]
                                    for c, u, v in itertools.product(range(c_in), range(k), range(k)))
        a = f.f(z)
    y = net.output_scale * a.reshape(-1)
    return y + x if net.residual else y


def random_net(rng, channels, kernel, activations, ny=6, nx=7, **options):
    net = ConvNet(channels, kernel, activations, ny=ny, nx=nx, **options)
    return net, rng.standard_normal(net.n_in), 0.5 * rng.standard_normal(net.n_params)


NETWORKS = [  # (channels, kernel, activations)
    ([2, 3], 1, ["relu"]),
    ([2, 3], 3, ["tanh"]),
    ([3, 2], 5, ["identity"]),
    ([2, 4, 3, 2], 3, ["tanh", "relu", "identity"]),
    ([1, 5, 1], 5, ["relu", "tanh"]),
    ([3, 2, 4], 1, ["identity", "tanh"]),
]


@pytest.mark.parametrize("channels, kernel, activations", NETWORKS)
def test_convnet_forward_equals_the_direct_loop_over_points_channels_and_kernel(channels, kernel, activations):
    rng = np.random.default_rng(1)
    net, x, p = random_net(rng, channels, kernel, activations, ny=5, nx=6)
    y = net.apply(x, p)
    np.testing.assert_allclose(y, loop_convnet(net, x, p), rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(net.linearize(x, p).output, y)


def test_convnet_parameter_layout_is_each_kernel_in_c_order_then_its_bias():
    """A single 1 in W[o, c, a, b] reads channel c at offset (a - h, b - h), into output o."""
    net = ConvNet([2, 3], 3, ["identity"], ny=5, nx=6)
    x = np.random.default_rng(2).standard_normal(net.n_in)
    p = np.zeros(net.n_params)
    p[np.ravel_multi_index((2, 1, 0, 2), (3, 2, 3, 3))] = 1.0  # W[2, 1, 0, 2]
    p[3 * 2 * 9 + 1] = 0.5  # b[1]
    y = net.apply(x, p).reshape(3, 5, 6)
    np.testing.assert_array_equal(y[2], np.roll(x.reshape(2, 5, 6)[1], (1, -1), axis=(0, 1)))
    np.testing.assert_array_equal(y[1], 0.5)
    np.testing.assert_array_equal(y[0], 0.0)


@pytest.mark.parametrize("channels, kernel, activations", NETWORKS)
@pytest.mark.parametrize("part", ["input", "weights", "both"])
def test_convnet_adjoint_matches_tangent_linear_to_roundoff(channels, kernel, activations, part):
    """One-layer networks test each layer alone; the deeper ones the whole network."""
    rng = np.random.default_rng(3)
    net, x, p = random_net(rng, channels, kernel, activations)
    lin = net.linearize(x, p)
    dx = rng.standard_normal(net.n_in) * (part != "weights")
    dp = rng.standard_normal(net.n_params) * (part != "input")
    result = checks.dot_product_test(lin.tl, lin.ad, [dx, dp], rng.standard_normal(net.n_out))
    assert result.passed and result.value < 1e-12, str(result)


@pytest.mark.parametrize("residual, input_scale, output_scale", [(True, 1.0, 1.0), (False, 3.0, 0.25), (True, 2.0, 5.0)])
def test_convnet_with_residual_and_scaling_passes_adjoint_and_equals_the_scaled_network(residual, input_scale, output_scale):
    rng = np.random.default_rng(4)
    net, x, p = random_net(rng, [2, 4, 2], 3, ["tanh", "identity"], residual=residual, input_scale=input_scale, output_scale=output_scale)
    plain = ConvNet([2, 4, 2], 3, ["tanh", "identity"], ny=6, nx=7)
    expected = output_scale * plain.apply(x / input_scale, p) + (x if residual else 0.0)
    np.testing.assert_allclose(net.apply(x, p), expected, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(net.apply(x, p), loop_convnet(net, x, p), rtol=1e-13, atol=1e-13)
    lin = net.linearize(x, p)
    result = checks.dot_product_test(lin.tl, lin.ad, [rng.standard_normal(net.n_in), rng.standard_normal(net.n_params)],
                                     rng.standard_normal(net.n_out))
    assert result.value < 1e-12, str(result)
    assert checks.taylor_test(*joint_maps(net, x, p), np.concatenate([x, p]), joint_direction(net, rng), rng=rng).passed


def joint_maps(net, x, p):
    lin, n = net.linearize(x, p), net.n_in
    return (lambda u: net.apply(u[:n], u[n:])), (lambda du: lin.tl(du[:n], du[n:]))


def joint_direction(net, rng):
    return np.concatenate([rng.standard_normal(net.n_in), 0.5 * rng.standard_normal(net.n_params)])


@pytest.mark.parametrize("channels, kernel, activations", [
    ([2, 3], 3, ["tanh"]),
    ([2, 4, 3, 2], 3, ["tanh", "softplus", "identity"]),
    ([1, 3, 2], 5, ["sigmoid", "tanh"]),
    ([2, 3, 2], 1, ["tanh", "identity"]),
])
def test_convnet_taylor_remainder_falls_as_the_square_of_the_amplitude(channels, kernel, activations):
    rng = np.random.default_rng(5)
    net, x, p = random_net(rng, channels, kernel, activations)
    result = checks.taylor_test(*joint_maps(net, x, p), np.concatenate([x, p]), joint_direction(net, rng), rng=rng)
    assert result.passed and abs(result.order - 2) < 0.2, str(result)


@pytest.mark.parametrize("channels, kernel, activations", NETWORKS[3:])
@pytest.mark.parametrize("chunk", [None, 2])
def test_convnet_blocked_tl_and_ad_equal_one_direction_at_a_time(channels, kernel, activations, chunk):
    """All directions in one product, and (``chunk = 2``) taken two at a time."""
    rng = np.random.default_rng(6)
    net, x, p = random_net(rng, channels, kernel, activations)
    lin = net.linearize(x, p)
    lin.chunk = chunk or lin.chunk
    m = 5
    dx, dp, ay = rng.standard_normal((net.n_in, m)), rng.standard_normal((net.n_params, m)), rng.standard_normal((net.n_out, m))
    dy = lin.tl(dx, dp)
    ax, ap = lin.ad(ay)
    assert dy.shape == (net.n_out, m) and ax.shape == (net.n_in, m) and ap.shape == (net.n_params, m)
    for d in range(m):
        np.testing.assert_allclose(dy[:, d], lin.tl(dx[:, d], dp[:, d]), rtol=1e-13, atol=1e-13)
        ax_d, ap_d = lin.ad(ay[:, d])
        np.testing.assert_allclose(ax[:, d], ax_d, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(ap[:, d], ap_d, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("chunk", [None, 2])
def test_convnet_blocked_equals_single_directions_for_each_kernel_through_patches_and_shifted_sums(kernel, chunk):
    """``[2, 4, 3]``: the TL's first layer and the AD's second take the patches of their input, the TL's
    second layer and the AD's first the shifted sum (fewer outputs than inputs); all to round-off."""
    rng = np.random.default_rng(12)
    net, x, p = random_net(rng, [2, 4, 3], kernel, ["tanh", "identity"], ny=7, nx=6)
    lin = net.linearize(x, p)
    lin.chunk = chunk or lin.chunk
    m = 5
    dx, dp, ay = rng.standard_normal((net.n_in, m)), rng.standard_normal((net.n_params, m)), rng.standard_normal((net.n_out, m))
    dy, (ax, ap) = lin.tl(dx, dp), lin.ad(ay)
    single = [(lin.tl(dx[:, d], dp[:, d]), *lin.ad(ay[:, d])) for d in range(m)]
    for blocked, column in zip((dy, ax, ap), zip(*single)):
        assert np.max(np.abs(blocked - np.stack(column, axis=1))) <= 1e-14 * np.max(np.abs(blocked))


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("outputs", [2, 5], ids=["shifted-sum", "patches"])
def test_correlation_of_many_directions_equals_the_sum_of_rolled_fields(kernel, outputs):
    """``K P(a)[o, d] = sum_{c, a, b} K[o, c, a, b] roll(a[c, d], (h - a, h - b))``, for a kernel with fewer
    outputs than inputs (the shifted sum) and with more (the patches)."""
    rng = np.random.default_rng(13)
    net, x, p = random_net(rng, [3, 3], kernel, ["identity"], ny=7, nx=6)
    lin, h = net.linearize(x, p), kernel // 2
    K, a = rng.standard_normal((outputs, 3, kernel, kernel)), rng.standard_normal((3, 4, 7, 6))
    expected = np.zeros((outputs, 4, 7, 6))
    for o, c, u, v in itertools.product(range(outputs), range(3), range(kernel), range(kernel)):
        expected[o] += K[o, c, u, v] * np.roll(a[c], (h - u, h - v), axis=(1, 2))
    np.testing.assert_allclose(lin.correlate(K, a.reshape(3, 4, -1)).reshape(expected.shape), expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("gathered", [0, 1, 2], ids=["shifted-sum", "rows", "patches"])
@pytest.mark.parametrize("outputs", [2, 5])
def test_correlation_split_at_each_kernel_axis_equals_the_sum_of_rolled_fields_written_or_added(kernel, gathered, outputs):
    """``K P(a)`` with 0, 1 or 2 kernel axes gathered into the columns before the product (the others summed
    shifted after it), two directions per product: the sum of rolled fields, written into a buffer or added to it."""
    rng = np.random.default_rng(14)
    net, x, p = random_net(rng, [3, 3], kernel, ["identity"], ny=7, nx=6)
    lin, patches, h = net.linearize(x, p), net.patches, kernel // 2
    lin.chunk = 2
    K, a, base = rng.standard_normal((outputs, 3, kernel, kernel)), rng.standard_normal((3, 5, 7, 6)), rng.standard_normal((outputs, 5, 7, 6))
    expected = np.zeros((outputs, 5, 7, 6))
    for o, c, u, v in itertools.product(range(outputs), range(3), range(kernel), range(kernel)):
        expected[o] += K[o, c, u, v] * np.roll(a[c], (h - u, h - v), axis=(1, 2))
    np.testing.assert_allclose(lin.correlate(K, a.reshape(3, 5, -1), gathered).reshape(expected.shape), expected, rtol=1e-13, atol=1e-13)
    out = patches.pad(base)
    lin.correlate_into(K, patches.pad(a), out, add=True, gathered=gathered)
    np.testing.assert_allclose(patches.interior(out), base + expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("m", [None, 3], ids=["one", "block"])
def test_joint_product_of_a_layer_with_few_inputs_is_its_weight_term_plus_its_correlation(m):
    """``[W dW db] [P(da); P(a); 1] = W P(da) + dW P(a) + db``: the first layer of ``[2, 8, 3]`` (two inputs,
    eight outputs) gathers its increment's patches whole and takes its weight term in the same product."""
    rng = np.random.default_rng(15)
    net, x, p = random_net(rng, [2, 8, 3], 3, ["tanh", "identity"], ny=7, nx=6)
    lin, patches = net.linearize(x, p), net.patches
    assert [lin.split(K) for K in lin.kernels] == [2, 1]
    shape = () if m is None else (m,)
    da = patches.pad(rng.standard_normal((2, m or 1, 42)))
    dW, db = net.layers(rng.standard_normal((net.n_params,) + shape))[0]
    expected = patches.buffer(8, m or 1)
    weight_rows = np.concatenate([dW, db], axis=1).reshape(8, -1, m or 1).transpose(0, 2, 1).reshape(8 * (m or 1), -1)
    np.matmul(weight_rows, lin.P[0], out=patches.wide_rows(expected))
    lin.correlate_into(lin.kernels[0], da, expected, add=True, gathered=2)
    joint = patches.buffer(8, m or 1)
    lin.joint_tl(0, dW, db, da, joint)
    np.testing.assert_allclose(patches.interior(joint), patches.interior(expected), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kernel", [1, 3])
def test_correlation_of_patches_one_direction_per_product_is_written_in_place(kernel):
    """With every kernel axis gathered and one direction per product, the product is written straight into the
    wide layout of the buffer: the sum of rolled fields, whatever the buffer held."""
    rng = np.random.default_rng(16)
    net, x, p = random_net(rng, [3, 3], kernel, ["identity"], ny=7, nx=6)
    lin, patches, h = net.linearize(x, p), net.patches, kernel // 2
    lin.chunk = 1
    K, a = rng.standard_normal((4, 3, kernel, kernel)), rng.standard_normal((3, 2, 7, 6))
    expected = np.zeros((4, 2, 7, 6))
    for o, c, u, v in itertools.product(range(4), range(3), range(kernel), range(kernel)):
        expected[o] += K[o, c, u, v] * np.roll(a[c], (h - u, h - v), axis=(1, 2))
    out = patches.buffer(4, 2)
    out[...] = 7.0
    lin.correlate_into(K, patches.pad(a), out, gathered=2)
    np.testing.assert_allclose(patches.interior(out), expected, rtol=1e-13, atol=1e-13)


def test_convnet_weight_adjoint_is_the_gradient_of_a_loss_by_finite_differences():
    rng = np.random.default_rng(7)
    net, x, p = random_net(rng, [2, 3, 2], 3, ["tanh", "identity"])
    target = rng.standard_normal(net.n_out)

    def loss(q):
        return 0.5 * np.sum((net.apply(x, q) - target) ** 2)

    _, gradient = net.linearize(x, p).ad(net.apply(x, p) - target)
    e = np.zeros(net.n_params)
    for i in rng.choice(net.n_params, 6, replace=False):
        e[:] = 0.0
        e[i] = 1e-6
        assert abs((loss(p + e) - loss(p - e)) / 2e-6 - gradient[i]) < 1e-7 * max(1.0, abs(gradient[i]))


# --- the surrogate model ---------------------------------------------------------------------


@pytest.mark.parametrize("integrator", ["euler", "rk4"])
def test_conv_surrogate_passes_the_model_suite(integrator):
    rng = np.random.default_rng(8)
    model = ConvSurrogate(channels=[2, 4, 2], kernel=3, activations=["tanh", "identity"], ny=6, nx=5, dt=0.1, integrator=integrator, init_output_scale=1.0)
    results = checks.check_model(model, rng.standard_normal(model.n_state), model.init_params(rng), rng, n_steps=4, directions=2)
    failed = [str(r) for r in results if not r.passed]
    assert not failed, "\n".join(failed)


def test_conv_surrogate_euler_step_is_x_plus_dt_times_the_network_and_starts_as_the_identity():
    rng = np.random.default_rng(9)
    model = build_model({"type": "conv_surrogate", "channels": [2, 3, 2], "kernel": 3, "activations": ["tanh", "identity"],
                         "ny": 5, "nx": 6, "dt": 0.2, "init_output_scale": 1.0})
    assert isinstance(model, ConvSurrogate) and model.blocked_linearization
    x, p = rng.standard_normal(model.n_state), model.init_params(rng)
    np.testing.assert_allclose(model.step(x, p), x + 0.2 * model.network.apply(x, p), rtol=1e-15, atol=1e-15)
    zero = ConvSurrogate(channels=[2, 3, 2], activations=["tanh", "identity"], ny=5, nx=6)
    assert np.all(zero.step(x, zero.init_params(rng)) == x)


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("arguments, message", [
    ({"kernel": 7, "ny": 5, "nx": 8}, "kernel 7 is wider than the 5 x 8 grid: it must be at most 5"),
    ({"kernel": 4}, "kernel must be odd"),
    ({"channels": [2, 3], "activations": ["tanh", "tanh"]}, "activations must list one name per layer"),
    ({"channels": [2, 3], "activations": ["tanh"], "residual": True}, "residual ConvNet needs as many output channels"),
    ({"activations": ["swish", "identity"]}, "unknown activation 'swish'"),
    ({"input_scale": 0.0}, "input_scale must be positive"),
])
def test_convnet_refuses_bad_configuration_with_a_clear_message(arguments, message):
    options = {"channels": [2, 4, 2], "kernel": 3, "activations": ["tanh", "identity"], "ny": 8, "nx": 8} | arguments
    with pytest.raises(ValueError, match=message):
        ConvNet(**options)


def test_convnet_refuses_inputs_of_the_wrong_shape():
    net = ConvNet([2, 2], 3, ["tanh"], ny=4, nx=4)
    with pytest.raises(ValueError, match=r"ConvNet input must have shape \(32,\)"):
        net.apply(np.zeros(31), np.zeros(net.n_params))
    with pytest.raises(ValueError, match=r"ConvNet parameters must have shape \(38,\) or \(38, m\), got \(3,\)"):
        net.linearize(np.zeros(32), np.zeros(net.n_params)).tl(np.zeros(32), np.zeros(3))


# --- negative controls -----------------------------------------------------------------------


def test_negative_control_unflipped_kernel_in_the_input_adjoint_fails_the_dot_product_test(monkeypatch):
    """The input adjoint with ``W^T`` per offset but the kernel not flipped: right for
    a symmetric kernel only, so a random one must fail."""
    rng = np.random.default_rng(10)
    net, x, p = random_net(rng, [2, 3], 3, ["tanh"])
    original = ConvNetLinearization.__init__

    def unflipped(self, *args):
        original(self, *args)
        self.flipped = [W.transpose(1, 0, 2, 3) for W in self.kernels]

    monkeypatch.setattr(ConvNetLinearization, "__init__", unflipped)
    lin = net.linearize(x, p)
    result = checks.dot_product_test(lin.tl, lin.ad, [rng.standard_normal(net.n_in), np.zeros(net.n_params)], rng.standard_normal(net.n_out))
    assert result.failed and result.value > 1e-3


def test_negative_control_tl_without_the_bias_term_fails_taylor_and_adjoint():
    rng = np.random.default_rng(11)
    net, x, p = random_net(rng, [2, 3, 2], 3, ["tanh", "identity"])
    lin = net.linearize(x, p)
    bias = np.zeros(net.n_params)
    bias[net.offsets[1] - 3 : net.offsets[1]] = 1.0  # the first layer's biases

    def tl(dx, dp):
        return lin.tl(dx, dp) - lin.tl(np.zeros_like(dx), bias * dp)

    f, _ = joint_maps(net, x, p)
    taylor = checks.taylor_test(f, lambda du: tl(du[: net.n_in], du[net.n_in :]), np.concatenate([x, p]), joint_direction(net, rng), rng=rng)
    assert taylor.failed
    adjoint = checks.dot_product_test(tl, lin.ad, [rng.standard_normal(net.n_in), rng.standard_normal(net.n_params)], rng.standard_normal(net.n_out))
    assert adjoint.failed


# --- the correction inside the time step (tendency form) ---------------------------------------


def test_tendency_hybrid_step_is_rk4_of_the_summed_tendencies_and_passes_the_model_suite():
    from models import Lorenz96, LocalMLP, TendencyHybrid

    rng = np.random.default_rng(12)
    physics = Lorenz96(n_state=12, dt=0.05)
    correction = LocalMLP(n_state=12, hidden=[5], init_output_scale=1.0, state_scale=4.0)
    model = TendencyHybrid(physics, correction)
    x, p = 8.0 + rng.standard_normal(12), model.init_params(rng)

    def h(v):
        return physics.tendency.evaluate(v, np.empty(0)) + correction.tendency.evaluate(v, p)

    dt = 0.05
    k1 = h(x)
    k2 = h(x + dt / 2 * k1)
    k3 = h(x + dt / 2 * k2)
    k4 = h(x + dt * k3)
    np.testing.assert_allclose(model.step(x, p), x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4), rtol=1e-14)
    results = checks.check_model(model, x, p, rng, n_steps=4, directions=2)
    assert all(r.passed for r in results), "\n".join(str(r) for r in results if not r.passed)
    built = build_model({"type": "tendency_hybrid", "physics": {"type": "lorenz96", "n_state": 12},
                         "correction": {"type": "local_mlp", "n_state": 12, "hidden": [5], "state_scale": 4.0}})
    assert isinstance(built, TendencyHybrid) and built.step(x, p).tolist() == model.step(x, p).tolist()


def test_tendency_hybrid_refuses_a_physics_model_without_an_integrator():
    from models import MLP, TendencyHybrid

    with pytest.raises(TypeError, match="tendency hybrid physics MLP has no integrator"):
        TendencyHybrid(MLP([4, 4], ["identity"]), {"type": "local_mlp", "n_state": 4, "half_width": 1})


# --- QG + ConvNet: the correction inside the step and after it -----------------------------------


def qg_hybrid(form, rng, estimate=(), nx=12):
    """A small QG model with a ConvNet correction ``c NN(q / s)``, ``s`` a typical PV and ``c`` a typical tendency."""
    from models import QG, Hybrid, TendencyHybrid

    physics = QG(nx=nx, estimate=estimate, U2=0.005)
    correction = ConvSurrogate(channels=[2, 4, 2], activations=["tanh", "identity"], ny=nx, nx=nx, dt=physics.dt, input_scale=1e-5,
                               output_scale=1e-10, init_output_scale=1.0)
    model = (TendencyHybrid if form == "tendency" else Hybrid)(physics, correction)
    white = rng.standard_normal((2, nx, nx))
    q = np.real(np.fft.ifft2(np.fft.fft2(white) / (1.0 + np.add.outer(np.arange(nx) ** 2, np.arange(nx) ** 2))))
    return model, 1e-5 * q.reshape(-1) / q.std(), model.init_params(rng)


def test_qg_tendency_hybrid_step_is_the_filtered_rk4_of_physics_plus_network():
    rng = np.random.default_rng(20)
    model, q, p = qg_hybrid("tendency", rng)
    qg, net = model.physics, model.correction.network

    def h(v):
        return qg.physics_tendency.evaluate(v, np.empty(0)) + net.apply(v, p)

    dt = qg.dt
    k1 = h(q)
    k2 = h(q + dt / 2 * k1)
    k3 = h(q + dt / 2 * k2)
    k4 = h(q + dt * k3)
    np.testing.assert_allclose(model.step(q, p), qg.spectral_filter(q + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)), rtol=1e-13, atol=1e-13 * np.abs(q).max())
    assert np.abs(model.step(q, p) - qg.step(q, np.empty(0))).max() > 1e-3 * np.abs(q).max()  # the network acts
    zero = np.zeros_like(p)
    np.testing.assert_array_equal(model.step(q, zero), qg.step(q, np.empty(0)))


@pytest.mark.parametrize("form", ["tendency", "resolvent"])
def test_qg_convnet_hybrid_passes_the_model_suite_in_both_forms(form):
    rng = np.random.default_rng(21)
    model, q, p = qg_hybrid(form, rng)
    results = checks.check_model(model, q, p, rng, n_steps=3, directions=2)
    assert all(r.passed for r in results), "\n".join(str(r) for r in results if not r.passed)


@pytest.mark.parametrize("form", ["tendency", "resolvent"])
def test_qg_convnet_hybrid_adjoint_with_an_estimated_drag_and_blocks(form):
    rng = np.random.default_rng(22)
    model, q, p = qg_hybrid(form, rng, estimate=["rek"])
    assert model.n_params == 1 + model.correction.n_params and model.blocked_linearization
    lin = model.linearize(q, p)
    dq, dp, aq = rng.standard_normal((model.n_state, 3)), rng.standard_normal((model.n_params, 3)), rng.standard_normal((model.n_state, 3))
    dp[0] *= 5.787e-7
    result = checks.dot_product_test(lin.tl, lin.ad, [dq, dp], aq)
    assert result.value < 1e-12, str(result)
    ax, ap = lin.ad(aq)
    for d in range(3):
        np.testing.assert_allclose(lin.tl(dq[:, d], dp[:, d]), lin.tl(dq, dp)[:, d], rtol=1e-12, atol=1e-12 * np.abs(lin.tl(dq, dp)).max())
        np.testing.assert_allclose(lin.ad(aq[:, d])[1], ap[:, d], rtol=1e-12, atol=1e-12 * np.abs(ap).max())


def test_negative_control_tendency_hybrid_adjoint_without_the_filter_fails():
    rng = np.random.default_rng(23)
    model, q, p = qg_hybrid("tendency", rng)
    model.filter_ad = lambda ax: ax
    assert not checks.model_adjoint_test(model, q, p, rng).passed


def test_qg_with_a_damping_the_model_lacks_is_a_truth_whose_missing_term_is_known():
    from models import QG, LinearDamping, TendencyHybrid

    rng = np.random.default_rng(24)
    truth = build_model({"type": "tendency_hybrid", "physics": {"type": "qg", "nx": 12},
                         "correction": {"type": "linear_damping", "rates": [2e-7, 0.0], "ny": 12, "nx": 12}})
    assert isinstance(truth.correction, LinearDamping) and truth.n_params == 0
    _, q, _ = qg_hybrid("tendency", rng)
    missing = truth.unresolved_tendency(q).reshape(2, 12, 12)
    np.testing.assert_array_equal(missing[0], -2e-7 * q.reshape(2, 12, 12)[0])
    np.testing.assert_array_equal(missing[1], 0.0)
    qg = QG(nx=12)
    np.testing.assert_allclose(truth.tendency.evaluate(q, np.empty(0)), qg.tendency(q, np.empty(0)) + missing.ravel(), rtol=1e-14, atol=1e-24)
    results = checks.check_model(truth, q, np.empty(0), rng, n_steps=3, directions=2)
    assert all(r.passed for r in results), "\n".join(str(r) for r in results if not r.passed)
    learned = TendencyHybrid(qg, ConvSurrogate(channels=[2, 2], kernel=1, activations=["identity"], ny=12, nx=12))
    assert not hasattr(learned, "unresolved_tendency")  # a correction with weights has no fixed missing term
    with pytest.raises(ValueError, match="rates must list one non-negative damping rate per field"):
        LinearDamping(rates=[-1.0, 0.0])


def test_hybrids_take_over_the_physics_grid_and_streamfunction_for_gridded_observations():
    rng = np.random.default_rng(25)
    for form in ("tendency", "resolvent"):
        model, q, _ = qg_hybrid(form, rng)
        assert (model.nx, model.ny, model.L, model.W) == (12, 12, model.physics.L, model.physics.W)
        np.testing.assert_array_equal(model.streamfunction(q), model.physics.streamfunction(q))


def test_convnet_per_channel_input_scale_equals_dividing_each_channel_and_passes_adjoint():
    rng = np.random.default_rng(11)
    scales = [3.0, 0.2]
    net, x, p = random_net(rng, [2, 4, 2], 3, ["tanh", "identity"], input_scale=scales, output_scale=0.5)
    plain = ConvNet([2, 4, 2], 3, ["tanh", "identity"], ny=6, nx=7)
    divided = (x.reshape(2, -1) / np.array(scales)[:, None]).reshape(-1)
    np.testing.assert_allclose(net.apply(x, p), 0.5 * plain.apply(divided, p), rtol=1e-14, atol=1e-14)
    lin, m = net.linearize(x, p), 3
    dx, dp, ay = rng.standard_normal((net.n_in, m)), rng.standard_normal((net.n_params, m)), rng.standard_normal((net.n_out, m))
    for j in range(m):  # each direction: the dot-product test, and the blocked form equal to the single one
        result = checks.dot_product_test(lin.tl, lin.ad, [dx[:, j], dp[:, j]], ay[:, j])
        assert result.value < 1e-12, str(result)
        np.testing.assert_allclose(lin.tl(dx, dp)[:, j], lin.tl(dx[:, j], dp[:, j]), rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(lin.ad(ay)[0][:, j], lin.ad(ay[:, j])[0], rtol=1e-13, atol=1e-13)
    # a uniform list is the scalar scale, and the two channels' scales act on their own channel only (negative control)
    uniform = ConvNet([2, 4, 2], 3, ["tanh", "identity"], ny=6, nx=7, input_scale=[3.0, 3.0])
    scalar = ConvNet([2, 4, 2], 3, ["tanh", "identity"], ny=6, nx=7, input_scale=3.0)
    np.testing.assert_array_equal(uniform.apply(x, p), scalar.apply(x, p))
    swapped = ConvNet([2, 4, 2], 3, ["tanh", "identity"], ny=6, nx=7, input_scale=scales[::-1], output_scale=0.5)
    assert np.max(np.abs(swapped.apply(x, p) - net.apply(x, p))) > 1e-3


@pytest.mark.parametrize("input_scale, message", [
    ([1.0, 2.0, 3.0], r"input_scale must be one number or one per input channel \(2\), got \[1.0, 2.0, 3.0\]"),
    ([1.0, -2.0], r"input_scale must be positive, got \[1.0, -2.0\]"),
])
def test_convnet_refuses_a_per_channel_input_scale_of_the_wrong_length_or_sign(input_scale, message):
    with pytest.raises(ValueError, match=message):
        ConvNet([2, 4, 2], 3, ["tanh", "identity"], ny=8, nx=8, input_scale=input_scale)
