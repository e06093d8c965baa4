"""scripts/metaworld_bounds.py: its command line, checked in one line before any simulator is built.

The bounds themselves (50 test goals x 500 steps x 3 policies) take minutes: here ``success_rates`` is
replaced, and bad input must fail before it, or ``load_suite``, is reached.
"""

import pytest

from scripts import metaworld_bounds as mwb


@pytest.fixture
def nothing_heavy(monkeypatch):
    """Fail the test if the script loads a suite or plays an episode."""

    def boom(*args, **kwargs):
        raise AssertionError("bad input reached the simulators")

    monkeypatch.setattr(mwb, "success_rates", boom)
    monkeypatch.setattr(mwb, "load_suite", boom)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["--suite", "point-nav"],
            "argument --suite: expected an ML1 suite, ml1-<task>, got 'point-nav' (tasks:",
        ),
        (["--suite", "ml10"], "got 'ml10' (tasks: assembly, basketball,"),
        (["--suite", "bogus"], "got 'bogus'"),
        (["--suite", ""], "got ''"),
        (["--suite", "ml1-nope"], "got 'ml1-nope'"),
        (
            ["--episodes", "1000000"],
            f"argument --episodes: expected an integer from 1 to {mwb.MAX_EPISODES:,}",
        ),
        (["--episodes", "0"], "got '0'"),
        (["--episodes", "x"], "got 'x'"),
        (["--workers", "0"], "argument --workers: --workers must be a positive integer, got '0'"),
        (["--workers", "-2"], "--workers must be a positive integer, got '-2'"),
        (["--suite", "ml1-reach", "--suite", "ml1-push"], "argument --suite: given more than once"),
        (["--episodes", "1", "--episodes", "2"], "argument --episodes: given more than once"),
        (["--nope"], "unrecognized arguments: --nope"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_anything_is_loaded(nothing_heavy, capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        mwb.main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and needle in err and len(err.splitlines()) == 1, err
    assert err.startswith("python -m scripts.metaworld_bounds: error: ")


def test_a_suite_without_a_scripted_policy_is_one_line(nothing_heavy, capsys, monkeypatch):
    def no_policy(name):
        raise ValueError(f"--suite {name}: no scripted policy SawyerReachV3Policy in metaworld.policies")

    monkeypatch.setattr(mwb, "policy_class", no_policy)
    assert mwb.main(["--suite", "ml1-reach"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "python -m scripts.metaworld_bounds: error: --suite ml1-reach: no scripted policy "
        "SawyerReachV3Policy in metaworld.policies"
    )


def test_every_ml1_suite_has_its_scripted_policy():
    """Meta-World names peg-insert-side's policy ``SawyerPegInsertionSideV3Policy``."""
    from benchmark.registry import suite_names

    for name in (n for n in suite_names() if n.startswith("ml1-")):
        assert mwb.policy_class(name).__name__.endswith("V3Policy"), name


def test_more_workers_than_goals_are_capped_and_it_says_so(capsys, monkeypatch):
    calls = []

    def fake_rates(suite_name, episodes, num_workers):
        calls.append((suite_name, episodes, num_workers))
        return {"scripted expert": 1.0, "uniform random": 0.0, "zero actions": 0.0}

    monkeypatch.setattr(mwb, "success_rates", fake_rates)
    assert mwb.main(["--suite", "ml1-reach", "--episodes", "2", "--workers", "99"]) == 0
    out = capsys.readouterr().out
    assert calls == [("ml1-reach", 2, 50)]
    assert "on the 50 test goals (2 episodes each; --workers 99 capped at 50, one per goal)" in out
    assert "scripted expert  1.000" in out
