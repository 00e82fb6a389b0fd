"""Write ``tests/data/qg_reference.npz``: pyqg-jax's QG tendency and streamfunction on a few states.

    pip install -e ".[bench]"            # JAX and pyqg-jax
    python benchmarks/qg_reference.py

For each case (constructor arguments of ``pyqg_jax.qg_model.QGModel``, double
precision) the file holds, under ``<case>/``: ``names`` and ``values`` (the
arguments), ``q`` ``(n, 2, ny, nx)`` (pyqg-jax's own random initial state, then
random fields with a red spectrum), ``dqdt`` (``irfftn`` of ``get_updates(state).qh``)
and ``psi`` (``get_full_state(state).p``).  ``tests/test_qg.py`` compares
``models.QG`` with it without importing JAX.
"""

from __future__ import annotations

from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from pyqg_jax.qg_model import QGModel  # noqa: E402
from pyqg_jax.state import Precision  # noqa: E402

OUTPUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "qg_reference.npz"

#: ``(name, constructor arguments, number of red-spectrum states)``
CASES = [
    ("nx16_defaults", dict(nx=16), 3),
    ("nx16_other_parameters", dict(nx=16, rek=1.2e-6, beta=2.1e-11, rd=11000.0, delta=0.3, U1=0.031, U2=-0.007), 3),
    ("nx16_ny12_rectangle", dict(nx=16, ny=12, L=1e6, W=7.5e5, U2=0.004), 2),
    ("nx64_defaults", dict(nx=64), 0),
]


def red_state(nx: int, ny: int, rng: np.random.Generator, amplitude: float = 1e-5) -> np.ndarray:
    """A random PV field ``(2, ny, nx)`` whose spectrum falls off past a quarter of the grid's wavenumbers."""
    k = np.fft.rfftfreq(nx)[None, :]
    l = np.fft.fftfreq(ny)[:, None]
    white = np.fft.rfft2(rng.standard_normal((2, ny, nx)))
    q = np.fft.irfft2(white / (1.0 + (k**2 + l**2) * 64.0), s=(ny, nx))
    return amplitude * q / q.std()


def case_arrays(kwargs: dict, n_red: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    model = QGModel(precision=Precision.DOUBLE, **kwargs)
    initial = model.create_initial_state(jax.random.key(int(rng.integers(2**31))))
    states = [np.asarray(initial.q)] + [red_state(model.nx, model.ny, rng) for _ in range(n_red)]
    dqdt, psi = [], []
    for q in states:
        state = initial.update(q=jnp.asarray(q))
        dqdt.append(np.asarray(jnp.fft.irfftn(model.get_updates(state).qh, axes=(-2, -1), s=q.shape[-2:])))
        psi.append(np.asarray(model.get_full_state(state).p))
    return {"names": np.array(list(kwargs)), "values": np.array(list(kwargs.values()), dtype=float),
            "q": np.stack(states), "dqdt": np.stack(dqdt), "psi": np.stack(psi)}


def main() -> None:
    rng = np.random.default_rng(20240221)
    arrays = {}
    for name, kwargs, n_red in CASES:
        for key, value in case_arrays(kwargs, n_red, rng).items():
            arrays[f"{name}/{key}"] = value
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    temporary = OUTPUT.with_name(OUTPUT.name + ".tmp.npz")
    np.savez_compressed(temporary, **arrays)
    temporary.replace(OUTPUT)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size / 1e3:.0f} kB, {len(CASES)} cases)")


if __name__ == "__main__":
    main()
