"""Lorenz-63 with its three parameters estimated: the model of the tutorial "Your own model".

    dx/dt = s (y - x),   dy/dt = x (r - z) - y,   dz/dt = x y - b z,   p = (s, r, b)

The tendency is written three times, statement by statement: the nonlinear code (NL),
its tangent-linear (TL) and its adjoint (AD, the TL statements transposed in reverse
order, with the same names).  One model step is a fourth-order Runge-Kutta step of the
tendency, whose exact TL and AD ``models.integrators`` provides.
"""

import numpy as np

from models.integrators import IntegratedModel, RungeKutta


# --8<-- [start:tendency]
class Lorenz63Tendency:
    """``f(v, p)`` of Lorenz-63 for ``v = (x, y, z)`` and ``p = (s, r, b)``."""

    def evaluate(self, v, p):
        x, y, z = v
        s, r, b = p
        return np.array([s * (y - x), x * (r - z) - y, x * y - b * z])

    def linearize(self, v, p):
        return Lorenz63TendencyLinearization(self, v, p)


class Lorenz63TendencyLinearization:
    """The tendency at one point ``(v, p)``: its value, TL and AD."""

    def __init__(self, tendency, v, p):
        self.v, self.p = np.array(v, dtype=float), np.array(p, dtype=float)
        self.output = tendency.evaluate(self.v, self.p)

    def tl(self, dv, dp):
        x, y, z = self.v
        s, r, b = self.p
        dx, dy, dz = dv
        ds, dr, db = dp
        df_x = ds * (y - x) + s * (dy - dx)
        df_y = dx * (r - z) + x * (dr - dz) - dy
        df_z = dx * y + x * dy - db * z - b * dz
        return np.array([df_x, df_y, df_z])

    def ad(self, af):
        x, y, z = self.v
        s, r, b = self.p
        af_x, af_y, af_z = af
        ax = ay = az = as_ = ar = ab = 0.0
        # df_z = dx * y + x * dy - db * z - b * dz
        ax += y * af_z
        ay += x * af_z
        ab -= z * af_z
        az -= b * af_z
        # df_y = dx * (r - z) + x * (dr - dz) - dy
        ax += (r - z) * af_y
        ar += x * af_y
        az -= x * af_y
        ay -= af_y
        # df_x = ds * (y - x) + s * (dy - dx)
        as_ += (y - x) * af_x
        ay += s * af_x
        ax -= s * af_x
        return np.array([ax, ay, az]), np.array([as_, ar, ab])
# --8<-- [end:tendency]


# --8<-- [start:model]
class Lorenz63(IntegratedModel):
    """Lorenz-63, one RK4 step of ``dt`` per model step, parameters ``p = (s, r, b)``."""

    n_state, n_params = 3, 3

    def __init__(self, dt=0.01):
        self.dt = dt
        self.tendency = Lorenz63Tendency()
        self.integrator = RungeKutta("rk4", dt)

    def init_params(self, rng):
        return np.array([10.0, 28.0, 8.0 / 3.0])
# --8<-- [end:model]
