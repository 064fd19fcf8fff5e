"""Easy and hard tasks (linmaml.closedform.mixture) against independent computations: the population
closed form E_ERM/E_MAML = 1 + (1 − t_E)²D²/R_H at α = 1/ρ_E (derived by hand), the spread-independence
of the absolute gain, scipy minimisers of the exact objective, and Monte Carlo with explicit inner steps."""
import numpy as np
import pytest
from scipy import optimize

from linmaml.closedform import mixture as mx
from linmaml.closedform.gaussian import expected_post_adaptation_loss
from linmaml.errors import ArgumentError, ArgumentTypeError


@pytest.mark.parametrize("spread_hard,distance", [(0.01, 3.0), (1.0, 0.5), (5.0, 10.0)])
def test_population_ratio_closed_form(spread_hard, distance):
    # α = 1/ρ_E solves every easy task in one population step (b_E = 0): MAML sits at the hard centre, so
    # E_MAML = ½π_H b_H R_H and E_ERM = ½π_H b_H((1 − t_E)²D² + R_H), t_E = π_Hρ_H/(π_Hρ_H + π_Eρ_E).
    params = dict(rho_easy=2.0, rho_hard=0.3, weight_hard=0.4, spread_hard=spread_hard, distance=distance)
    result = mx.maml_gain(mx.easy_hard_mixture(**params), 1 / params["rho_easy"], population=True)
    t_e = 0.4 * 0.3 / (0.4 * 0.3 + 0.6 * 2.0)
    assert result["excess_ratio"] == pytest.approx(1 + (1 - t_e) ** 2 * distance**2 / spread_hard, rel=1e-10)
    assert result["W_maml"][0, 0] == pytest.approx(distance, rel=1e-12)


def test_absolute_gain_does_not_depend_on_the_spreads():
    gains = [mx.maml_gain(mx.easy_hard_mixture(spread_hard=R, spread_easy=E, distance=2.0), 0.7)["gain"]
             for R in (0.001, 1.0, 50.0) for E in (0.1, 3.0)]
    np.testing.assert_allclose(gains, gains[0], rtol=1e-10)
    assert gains[0] > 0


def test_maml_solution_minimises_the_exact_objective_and_erm_the_plain_loss():
    mixture = mx.easy_hard_mixture(d=3, distance=1.5, spread_hard=0.2, n_support=7)
    lr = 0.6
    result = mx.maml_gain(mixture, lr)
    found = optimize.minimize(lambda w: expected_post_adaptation_loss(w.reshape(1, 3), mixture, lr, 1), np.ones(3),
                              method="BFGS", options={"gtol": 1e-12}).x
    np.testing.assert_allclose(result["W_maml"][0], found, atol=1e-6)
    plain = optimize.minimize(lambda w: expected_post_adaptation_loss(w.reshape(1, 3), mixture, 0.0, 0), np.ones(3),
                              method="BFGS", options={"gtol": 1e-12}).x
    np.testing.assert_allclose(result["W_erm"][0], plain, atol=1e-6)
    assert result["gain"] >= 0 and result["excess_ratio"] >= 1


def test_no_hardness_discrepancy_no_gain():
    result = mx.maml_gain(mx.easy_hard_mixture(rho_easy=0.5, rho_hard=0.5, distance=3.0), 0.8)
    assert result["gain"] == pytest.approx(0.0, abs=1e-12)
    assert result["excess_ratio"] == pytest.approx(1.0, abs=1e-12)
    solved = mx.maml_gain(mx.easy_hard_mixture(rho_easy=1.0, rho_hard=1.0, distance=3.0), 1.0, population=True)
    assert solved["excess_ratio"] == 1.0 and solved["gain"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("population", [False, True])
def test_simulation_agrees_with_the_exact_gain(population):
    mixture = mx.easy_hard_mixture(d=3, distance=2.0, spread_hard=0.1, n_support=10)
    lr = 0.8
    exact = mx.maml_gain(mixture, lr, population=population)
    mc = mx.simulate(mixture, exact["W_maml"], exact["W_erm"], lr, tasks=20000, population=population, seed=4)
    assert abs(mc["gain"] - exact["gain"]) < 4 * mc["gain_se"]
    assert abs(mc["excess_ratio"] - exact["excess_ratio"]) < 4 * mc["excess_ratio_se"]
    assert abs(mc["loss_maml"] - exact["loss_maml"]) < 4 * mc["loss_maml_se"]


@pytest.mark.parametrize("kwargs,name", [({"weight_hard": 1.5}, "weight_hard"), ({"rho_hard": 0.0}, "rho_hard"),
                                         ({"distance": -1.0}, "distance"), ({"d": 0}, "d")])
def test_bad_landscapes_are_refused(kwargs, name):
    with pytest.raises(ArgumentError) as info:
        mx.easy_hard_mixture(**kwargs)
    assert info.value.argument == name


def test_bad_mixture_is_refused():
    with pytest.raises(ArgumentTypeError) as info:
        mx.maml_gain("mixture", 0.5)
    assert info.value.argument == "mixture"
    with pytest.raises(ArgumentError) as info:
        mx.simulate(mx.easy_hard_mixture(), np.zeros((1, 5)), np.zeros((1, 5)), float("inf"))
    assert info.value.argument == "lr"


def test_verification_rows_catch_a_wrong_solution_and_a_wrong_floor(monkeypatch):
    # a row that cannot fail checks nothing: the population-level MAML solution reported for a finite-n one
    # (caught by the segment closed form), and a wrong noise floor in the excess ratio (caught by Monte Carlo)
    from linmaml.checks import bernacchia_collins as rows
    from linmaml.closedform import gaussian
    from linmaml.verification import all_identities

    def row(check):
        return next(i for i in all_identities() if i.check is check)

    original = gaussian.maml_fixed_point
    with monkeypatch.context() as patch:
        patch.setattr(gaussian, "maml_fixed_point", lambda family, lr, steps=1, population=None:
                      original(family, lr, steps, True))
        assert not row(rows._segment_closed_form).run(0)["passed"]
    floor = mx.noise_floor
    with monkeypatch.context() as patch:
        patch.setattr(mx, "noise_floor", lambda mixture: 1.5 * floor(mixture))
        assert not row(rows._gain_monte_carlo).run(0)["passed"]
