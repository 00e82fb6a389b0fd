"""The ConvNet's derivatives against JAX, blocked against one direction, linearised against forward.

    taskset -c 1 python benchmarks/convnet.py            # full run (about a minute)
    taskset -c 1 python benchmarks/convnet.py --quick    # smoke test, records nothing
    taskset -c 1 python benchmarks/convnet.py --cpu-time # times in the process's CPU seconds (a loaded machine)
    pip install -e ".[bench]"                            # JAX, for the first table

``ConvNet([2, 16, 16, 2], kernel=3, ["tanh", "tanh", "identity"])`` on a 64 x 64
periodic grid, float64, one core.  Each figure is the median of interleaved batches
(``timing.time_pair``), each ratio measured in the same run:

1. **Gradient of one network application**: ``net.linearize(x, p).ad(ay)`` (the
   forward pass kept for the derivatives, then ``(ax, ap)``) against the faster of
   two ``jax.jit`` functions returning the same ``(ax, ap)`` through ``jax.vjp``: one
   built on ``lax.conv_general_dilated`` applied to the wrap-padded input, one on a
   sum of ``k^2`` shifted copies (``jnp.roll``) contracted over the channels.
   Target: <= 1.0x.
2. **Blocked TL and AD**: 16 directions in one call against one direction.  Target: <= 8x.
   Beside each, the Gflop/s of the one and of the 16 directions (the matrix products of
   :func:`direction_flops`) and of one matrix product the size of the blocked weight term,
   interleaved with the one direction: the ratio that rate would give if every product ran
   at it.  Then that product against the same weight term of one direction: what blocking
   gains on the only part it can gather into fewer, larger products.
3. **Linearisation against the forward pass**: ``linearize`` against ``apply``.  Target: <= 1.5x.
4. With ``--baseline REF``: the TL and AD of one and of 16 directions against the same calls of
   ``models/convnet.py`` at the git revision ``REF`` (read with ``git show``), interleaved in this
   process, so that a change of the blocked ratio shows which of its two times moved.

The results replace the "ConvNet" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("benchmark_timing", os.path.join(os.path.dirname(os.path.abspath(__file__)), "timing.py"))
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)
import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from models.convnet import ConvNet  # noqa: E402

CHANNELS, KERNEL, ACTIVATIONS, NY, NX = [2, 16, 16, 2], 3, ["tanh", "tanh", "identity"], 64, 64
DIRECTIONS = 16


def jax_gradients(net: ConvNet):
    """``{name: jit(x, p, ay) -> (ax, ap)}`` for the two JAX formulations of the same network."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    jax.config.update("jax_enable_x64", True)
    k, h = net.kernel, net.kernel // 2
    activations = {"tanh": jnp.tanh, "identity": lambda z: z, "relu": lambda z: jnp.maximum(z, 0.0)}
    fs = [activations[f.name] for f in net.activations]
    pairs = list(zip(net.channels[:-1], net.channels[1:]))

    def unpack(p):
        layers, start = [], 0
        for c_in, c_out in pairs:
            W = p[start : start + c_out * c_in * k * k].reshape(c_out, c_in, k, k)
            start += c_out * c_in * k * k
            layers.append((W, p[start : start + c_out]))
            start += c_out
        return layers

    def conv_layer(a, W, b):
        padded = jnp.pad(a, ((0, 0), (h, h), (h, h)), mode="wrap")
        z = lax.conv_general_dilated(padded[None], W, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))[0]
        return z + b[:, None, None]

    def shifted_layer(a, W, b):
        z = b[:, None, None]
        for i in range(k):
            for j in range(k):
                z = z + jnp.einsum("oc,cyx->oyx", W[:, :, i, j], jnp.roll(a, (h - i, h - j), axis=(1, 2)))
        return z

    def network(layer):
        def forward(x, p):
            a = x.reshape(net.channels[0], net.ny, net.nx)
            for (W, b), f in zip(unpack(p), fs):
                a = f(layer(a, W, b))
            return a.reshape(-1)

        def gradient(x, p, ay):
            _, vjp = jax.vjp(forward, x, p)
            return vjp(ay)

        return jax.jit(forward), jax.jit(gradient)

    return {"conv_general_dilated": network(conv_layer), "shifted copies": network(shifted_layer)}


def direction_flops(net: ConvNet) -> float:
    """The multiply-adds (x2) of one direction's TL or AD: per layer the propagated correlation
    (``W_l P(da)``, or ``W~_l P(az)``) and the weight term (``dW_l P(a)``, or ``az P(a)^T``), each
    ``2 c_{l-1} c_l k^2`` per point."""
    return sum(2 * 2 * c_in * c_out * net.kernel**2 * net.n_points for c_in, c_out in zip(net.channels[:-1], net.channels[1:]))


def baseline_module(ref: str):
    """``models/convnet.py`` as it is at the git revision ``ref``, imported beside the working tree's as
    ``models.convnet_at_ref``; ``None`` when git cannot show that file."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(["git", "show", f"{ref}:models/convnet.py"], cwd=root, capture_output=True, text=True)
    if source.returncode:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "convnet_at_ref.py")
        with open(path, "w") as file:
            file.write(source.stdout)
        spec = importlib.util.spec_from_file_location("models.convnet_at_ref", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def against_baseline(ref: str, baseline, x, p, blocks, single, time_pair) -> list[str]:
    """Lines timing the TL and AD of one and of many directions here against the same calls of ``baseline``
    (:func:`baseline_module` of ``ref``)."""
    theirs = baseline.ConvNet(CHANNELS, KERNEL, ACTIVATIONS, ny=NY, nx=NX).linearize(x, p)
    ours = ConvNet(CHANNELS, KERNEL, ACTIVATIONS, ny=NY, nx=NX).linearize(x, p)
    (DX, DP, AY), (dx, dp, ay) = blocks, single
    lines = [f"4. against models/convnet.py at {ref}, the same calls interleaved"]
    for name, call in (("tl", lambda lin, a, b, c: lin.tl(a, b)), ("ad", lambda lin, a, b, c: lin.ad(c))):
        for label, args in (("one", (dx, dp, ay)), (f"{DX.shape[1]} directions", (DX, DP, AY))):
            t_ours, t_theirs = time_pair(lambda: call(ours, *args), lambda: call(theirs, *args))
            lines.append(f"   {name} {label:14s} {ref} {t_theirs * 1e3:7.2f} ms   this tree {t_ours * 1e3:7.2f} ms   ({t_ours / t_theirs:.2f}x)")
    return lines


def product_times(call, clock, repeats: int = 9) -> tuple[float, float]:
    """Seconds per ``call()`` and, of those, inside ``numpy.matmul`` (every matrix product of
    :mod:`models.convnet`), for the fastest of ``repeats`` calls."""
    import models.convnet as module

    inside = [0.0]

    def timed(*args, **kwargs):
        start = clock()
        result = np.matmul(*args, **kwargs)
        inside[0] += clock() - start
        return result

    class NumpyWithTimedMatmul:
        matmul = staticmethod(timed)

        def __getattr__(self, name):
            return getattr(np, name)

    module.np = NumpyWithTimedMatmul()
    try:
        best = (float("inf"), 0.0)
        for _ in range(repeats):
            inside[0], start = 0.0, clock()
            call()
            best = min(best, (clock() - start, inside[0]))
    finally:
        module.np = np
    return best


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few short batches (smoke test, records nothing)")
    parser.add_argument("--cpu-time", action="store_true", help="time in the process's CPU seconds instead of the wall clock")
    parser.add_argument("--baseline", metavar="REF", help="also time TL and AD against models/convnet.py at this git revision")
    args = parser.parse_args(argv)
    baseline = args.baseline and baseline_module(args.baseline)
    if args.baseline and baseline is None:
        parser.error(f"--baseline: expected a git revision holding models/convnet.py, got {args.baseline!r}")
    n_batches, batch_seconds = (3, 0.05) if args.quick else (15, 0.3)
    clock = time.process_time if args.cpu_time else time.perf_counter

    def time_pair(first, second):
        return timing.time_pair(first, second, n_batches, batch_seconds, clock)

    lines = [timing.machine_header(), timing.fix_malloc_thresholds(),
             "load average over 1 / 5 / 15 min at the start: " + " / ".join(f"{x:.1f}" for x in os.getloadavg()),
             f"ConvNet {CHANNELS}, kernel {KERNEL}, {ACTIVATIONS}, {NY} x {NX}, float64; medians of {n_batches} interleaved batches; "
             + ("CPU seconds of this process (--cpu-time)" if args.cpu_time else "wall clock"), ""]

    rng = np.random.default_rng(0)
    net = ConvNet(CHANNELS, KERNEL, ACTIVATIONS, ny=NY, nx=NX)
    x, p = rng.standard_normal(net.n_in), net.init_params(rng)
    ay = rng.standard_normal(net.n_out)
    ours = lambda: net.linearize(x, p).ad(ay)  # noqa: E731

    lines.append("1. gradient of one application, linearize + ad, against jax.jit(jax.vjp)  (target <= 1.0x the faster)")
    try:
        references = jax_gradients(net)
    except ImportError:
        references = {}
        lines.append("   JAX is not installed (pip install -e '.[bench]'): no reference")
    ratios = {}
    for name, (forward, gradient) in references.items():
        ax_ref, ap_ref = (np.asarray(v) for v in gradient(x, p, ay))
        ax, ap = ours()
        error = max(np.abs(ax - ax_ref).max() / np.abs(ax_ref).max(), np.abs(ap - ap_ref).max() / np.abs(ap_ref).max())
        assert np.allclose(np.asarray(forward(x, p)), net.apply(x, p), rtol=1e-12, atol=1e-12) and error < 1e-12, name
        t_ours, t_jax = time_pair(ours, lambda: [v.block_until_ready() for v in gradient(x, p, ay)])
        ratios[name] = t_ours / t_jax
        lines.append(f"   {name:22s} JAX {t_jax * 1e3:7.2f} ms   fourdvar {t_ours * 1e3:7.2f} ms   ratio {t_ours / t_jax:5.2f}x"
                     f"   (same (ax, ap) to {error:.0e})")
    if ratios:
        lines.append(f"   against the faster: {max(ratios.values()):.2f}x")

    lin = net.linearize(x, p)
    m = DIRECTIONS
    dx, dp = rng.standard_normal(net.n_in), rng.standard_normal(net.n_params)
    DX, DP, AY = rng.standard_normal((net.n_in, m)), rng.standard_normal((net.n_params, m)), rng.standard_normal((net.n_out, m))
    lines += ["", f"2. blocked TL and AD, {m} directions in one call against one direction  (target <= 8x)"]
    flops = direction_flops(net)
    widest = max(lin.P, key=len)  # the largest kept patches, against c_l m rows of weights: the blocked weight term
    rows = rng.standard_normal((max(W.shape[0] for W, _ in net.layers(p)) * m, len(widest)))
    for name, blocked, single in (("tl", lambda: lin.tl(DX, DP), lambda: lin.tl(dx, dp)), ("ad", lambda: lin.ad(AY), lambda: lin.ad(ay))):
        t_block, t_one = time_pair(blocked, single)
        t_product = time_pair(lambda: rows @ widest, single)[0]
        peak = 2 * rows.size * widest.shape[1] / t_product
        lines.append(f"   {name}: one {t_one * 1e3:7.2f} ms   {m} directions {t_block * 1e3:7.2f} ms   ratio {t_block / t_one:5.2f}x"
                     f"   ({t_block / t_one / m:.2f} of {m} single calls)")
        lines.append(f"       {flops / t_one / 1e9:4.1f} and {m * flops / t_block / 1e9:4.1f} Gflop/s; a product {rows.shape} x {widest.shape} "
                     f"{peak / 1e9:4.1f} Gflop/s: at that rate {m} directions take {m * flops / peak / t_one:.1f}x one")
    lines.append(f"   (each direction is {flops / 1e6:.0f} Mflop of matrix products, in one call of {m} directions as in {m} calls)")
    one_rows = rows[: rows.shape[0] // m]
    t_many, t_single = time_pair(lambda: rows @ widest, lambda: one_rows @ widest)
    lines.append(f"   the part that blocks: the widest weight term {rows.shape} x {widest.shape} takes {t_many * 1e3:.2f} ms, "
                 f"{t_many / t_single:.1f}x its one-direction product {one_rows.shape} x {widest.shape} ({t_single * 1e3:.2f} ms);")
    lines.append(f"   the propagated correlations share the kernel but not the fields: one product per direction, {m}x")
    for name, blocked, single in (("tl", lambda: lin.tl(DX, DP), lambda: lin.tl(dx, dp)), ("ad", lambda: lin.ad(AY), lambda: lin.ad(ay))):
        (t_block, p_block), (t_one, p_one) = product_times(blocked, clock), product_times(single, clock)
        lines.append(f"   {name}, fastest of 9 calls: the matrix products inside take {p_one * 1e3:.2f} ms of one direction's {t_one * 1e3:.2f} ms and "
                     f"{p_block * 1e3:.2f} ms of {m} directions' {t_block * 1e3:.2f} ms: {p_block / p_one:.2f}x; the rest {(t_block - p_block) / (t_one - p_one):.2f}x")

    lines += ["", "3. linearize against the forward pass (apply)  (target <= 1.5x)"]
    t_lin, t_fwd = time_pair(lambda: net.linearize(x, p), lambda: net.apply(x, p))
    lines.append(f"   apply {t_fwd * 1e3:7.2f} ms   linearize {t_lin * 1e3:7.2f} ms   ratio {t_lin / t_fwd:5.2f}x")
    if args.baseline:
        lines += [""] + against_baseline(args.baseline, baseline, x, p, (DX, DP, AY), (dx, dp, ay), time_pair)
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from results import record

        options = (" --cpu-time" if args.cpu_time else "") + (f" --baseline {args.baseline}" if args.baseline else "")
        record("ConvNet", "```\n" + text + "\n```", command="taskset -c 1 python benchmarks/convnet.py" + options)
    return text


if __name__ == "__main__":
    main()
