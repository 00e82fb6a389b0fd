"""``fourdvar check``: the consistency suite on everything an experiment uses.

The model at the first background (one step, the chain and the window, the batched
window against the per-step chain when the model has ``linearize_window``), each
observation operator of the first window, ``B``, ``P``, the first ``R``, and the cost
of the first window; one table per object, the legend of the columns and the counts.
"""

from __future__ import annotations

import numpy as np

from .. import checks
from ..window import forecast


def check_experiment(experiment, config: dict, n_steps: int | None = None, directions: int = 1, write=print) -> dict[str, int]:
    """Run the checks, ``write`` their tables, return ``{"PASS": n, "FAIL": n, "INCONCLUSIVE": n}``.

    ``n_steps`` (default: the experiment's window length) is the window checked,
    ``directions`` the number of random directions per test.
    """
    from ..cost import FourDVarCost

    rng = np.random.default_rng(config["seed"])
    model, x, p = experiment.model, experiment.xb0, experiment.pb0
    n_steps = n_steps or experiment.n_steps
    per_test = f"{directions} random direction{'s' if directions > 1 else ''} per test"
    sections = [(f"model {model!r}, window of {n_steps} steps, {per_test}",
                 checks.check_model(model, x, p, rng, n_steps=n_steps, directions=directions))]

    slots = list(experiment.observations.window(0, n_steps, include_end=False))
    truth = experiment.truth["trajectory"] if experiment.truth is not None else None
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
    covariances = [("B", experiment.B0)] + ([("P", experiment.P0)] if experiment.P0 is not None else [])
    if slots:
        covariances.append(("R (first observation time)", slots[0].covariance))
    for name, covariance in covariances:
        sections.append((f"covariance {name}", [checks.covariance_sqrt_adjoint_test(covariance, rng), checks.covariance_inverse_test(covariance, rng)]))
    P = experiment.P0 if "params" in experiment.control else None
    cost = FourDVarCost(model, slots, x, B=experiment.B0, pb=p, P=P, n_steps=n_steps)
    sections.append((f"cost of the first {n_steps} steps (control: {', '.join(experiment.control)})",
                     checks.check_cost(cost, x, p, experiment.control, rng, transform=config["assimilation"]["transform"], directions=directions)))

    for title, results in sections:
        write(f"== {title}")
        write(checks.format_table(results))
        write("")
    counts = checks.summarize(result for _, results in sections for result in results)
    write(checks.LEGEND)
    write("")
    write(f"{counts[checks.PASS]} passed, {counts[checks.FAIL]} failed, {counts[checks.INCONCLUSIVE]} inconclusive")
    return counts
