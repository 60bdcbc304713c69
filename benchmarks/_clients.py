"""Real libraries that take a pool, as users drive them: loops of small ``map`` calls.

scipy's ``differential_evolution(workers=pool.map)`` and emcee's
``EnsembleSampler(pool=pool)`` call ``pool.map`` once per generation or
step, each time on a few cheap items: the per-call cost of the pool is
what the user waits for. The objectives are made inside functions, so
they travel by value (as a function written in the user's script does),
not by name: the caller passes functions defined in its own ``__main__``.

scipy and emcee are imported when a loop runs (``pip install zpool[bench]``);
:func:`missing` says which are not installed.
"""

from __future__ import annotations

import importlib.util


def missing() -> list[str]:
    """The libraries these loops need that are not installed."""
    return [name for name in ("scipy", "emcee") if importlib.util.find_spec(name) is None]


def differential_evolution(objective, pool_map, maxiter: int = 30) -> float:
    """scipy's differential_evolution of a 5-D `objective`, its population evaluated by `pool_map`; the best value."""
    from scipy.optimize import differential_evolution as de

    bounds = [(-2.0, 2.0)] * 5
    result = de(
        objective,
        bounds,
        maxiter=maxiter,
        popsize=6,
        tol=0.0,
        seed=1,
        polish=False,
        updating="deferred",
        workers=pool_map,
    )
    return float(result.fun)


def emcee_run(log_prob, pool, steps: int = 300, walkers: int = 32) -> float:
    """emcee's quick start: `log_prob` of a correlated 5-D Gaussian, on `pool`; the mean of the chain."""
    import emcee
    import numpy as np

    rng = np.random.default_rng(1)
    cov = 0.5 - rng.random((5, 5))
    icov = np.linalg.inv(cov @ cov.T)
    p0 = rng.standard_normal((walkers, 5)) * 0.1
    sampler = emcee.EnsembleSampler(walkers, 5, log_prob, args=[icov], pool=pool)
    sampler.run_mcmc(p0, steps, progress=False)
    return float(np.mean(sampler.get_chain()))


def uses_scipy(x):
    """A task that needs scipy.optimize (already imported by the caller): the first call on a fresh pool."""
    from scipy.optimize import rosen

    return float(rosen([x, x + 1.0]))
