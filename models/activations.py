"""Activation functions ``a = f(z)`` and their derivatives ``f'(z)``, in one place.

Each derivative is written in terms of the output ``a = f(z)`` alone::

    tanh      f' = 1 - a^2              sigmoid   f' = a (1 - a)
    relu      f' = [a > 0]              softplus  f' = sigmoid(z) = 1 - e^-a

so a linearisation keeps only the activations ``a`` (which the weight terms need
anyway) and forms ``f'`` from them when the TL or AD multiplies by it.
``identity`` has ``f' = 1``; its derivative is ``None`` so that TL/AD skip the
multiplication rather than multiply by ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Activation:
    """An activation ``f`` and its derivative written in terms of the output, ``f'(z) = g(f(z))``.

    Examples
    --------
    >>> tanh = get_activation("tanh")
    >>> a = tanh.f(np.array([0.0, 1.0]))
    >>> tanh.derivative(a)                       # 1 - tanh(z)^2
    array([1.        , 0.41997434])
    """

    name: str
    f: Callable[[np.ndarray], np.ndarray]
    derivative: Callable[[np.ndarray], np.ndarray] | None  # f'(z) from a = f(z)


def _sigmoid(z):
    # 1 / (1 + e^-z) without overflow for large |z|
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(z):
    # log(1 + e^z) = max(z, 0) + log1p(e^-|z|), stable for large |z|
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


ACTIVATIONS: dict[str, Activation] = {
    "identity": Activation("identity", lambda z: z, None),
    "tanh": Activation("tanh", np.tanh, lambda a: 1.0 - a * a),
    "sigmoid": Activation("sigmoid", _sigmoid, lambda a: a * (1.0 - a)),
    "relu": Activation("relu", lambda z: np.maximum(z, 0.0), lambda a: (a > 0.0).astype(a.dtype)),
    "softplus": Activation("softplus", _softplus, lambda a: -np.expm1(-a)),  # 1 - e^-a, accurate for small a
}


def get_activation(name: str) -> Activation:
    """The activation called ``name``: ``identity``, ``tanh``, ``sigmoid``, ``relu`` or ``softplus``.

    Raises
    ------
    ValueError
        For any other name, listing the valid ones.

    Examples
    --------
    >>> get_activation("relu").f(np.array([-1.0, 2.0]))
    array([0., 2.])
    >>> get_activation("swish")
    Traceback (most recent call last):
    ...
    ValueError: unknown activation 'swish'; choose one of identity, tanh, sigmoid, relu, softplus
    """
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None
