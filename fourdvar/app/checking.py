"""``fourdvar check``: the consistency suite on everything a plan uses.

The model at the first background (one step, the chain and the window, the batched
window against the per-step chain when the model has ``linearize_window``), each
observation operator of the first window, ``B``, ``P``, ``Q``, the first ``R``, and the cost
of the first window (in weak constraint the forced window and the gradients with the
forcing, :func:`fourdvar.checks.check_cost` with ``eta``); one table per object, the legend of
the columns and the counts.
"""

from __future__ import annotations

import warnings

import numpy as np

from .. import checks
from ..window import forecast


def check_plan(plan, config: dict | None = None, n_steps: int | None = None, directions: int = 1, write=print) -> dict[str, int]:
    """Run the checks, ``write`` their tables, return ``{"PASS": n, "FAIL": n, "INCONCLUSIVE": n}``.

    ``n_steps`` (default: the plan's window length) is the window checked,
    ``directions`` the number of random directions per test.  ``config`` is read from
    the plan (passing it is deprecated).
    """
    from ..cost import FourDVarCost

    if config is not None:
        warnings.warn("check_plan(plan, config): the plan carries its configuration; call check_plan(plan)", DeprecationWarning, stacklevel=2)
    rng = np.random.default_rng(plan.problem.seed)
    model, x, p = plan.model, plan.xb0, plan.pb0
    n_steps = n_steps or plan.n_steps
    per_test = f"{directions} random direction{'s' if directions > 1 else ''} per test"
    sections = [(f"model {model!r}, window of {n_steps} steps, {per_test}",
                 checks.check_model(model, x, p, rng, n_steps=n_steps, directions=directions))]

    slots = list(plan.window_slots(0, n_steps))
    truth = plan.truth["trajectory"] if plan.truth is not None else None
    states = truth if truth is not None and len(truth) > n_steps else forecast(model, x, p, n_steps)
    seen = set()
    for slot in slots:
        if id(slot.operator) in seen:
            continue
        seen.add(id(slot.operator))
        x_obs = states[slot.step]
        sections.append((f"observation operator {slot.operator!r}", [
            checks.operator_adjoint_test(slot.operator, x_obs, rng, directions=directions),
            checks.operator_taylor_test(slot.operator, x_obs, rng, directions=directions),
        ]))
    covariances = [("B", plan.B0)] + ([("P", plan.P0)] if plan.P0 is not None else [])
    covariances += [("Q", plan.Q0)] if plan.Q0 is not None else []
    if slots:
        covariances.append(("R (first observation time)", slots[0].covariance))
    for name, covariance in covariances:
        sections.append((f"covariance {name}", [checks.covariance_sqrt_adjoint_test(covariance, rng), checks.covariance_inverse_test(covariance, rng)]))
    P = plan.P0 if "params" in plan.control else None
    transform = plan.method.solver.transform
    if plan.Q0 is None:
        cost = FourDVarCost(model, slots, x, B=plan.B0, pb=p, P=P, n_steps=n_steps)
        cost_checks = checks.check_cost(cost, x, p, plan.control, rng, transform=transform, directions=directions)
    else:  # weak constraint: the forced window and the gradients with eta, at a forcing drawn from Q
        cost = FourDVarCost(model, slots, x, B=plan.B0, pb=p, P=P, n_steps=n_steps, Q=plan.Q0,
                            model_error_every=plan.model_error_every)
        eta = np.array([plan.Q0.sample(rng) for _ in range(cost.n_sub)])
        cost_checks = checks.check_cost(cost, x, p, plan.control, rng, transform=transform, eta=eta)
    sections.append((f"cost of the first {n_steps} steps (control: {', '.join(plan.control)})", cost_checks))

    for title, results in sections:
        write(f"== {title}")
        write(checks.format_table(results))
        write("")
    counts = checks.summarize(result for _, results in sections for result in results)
    write(checks.LEGEND)
    write("")
    write(f"{counts[checks.PASS]} passed, {counts[checks.FAIL]} failed, {counts[checks.INCONCLUSIVE]} inconclusive")
    return counts
