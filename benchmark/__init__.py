"""metarl-bench harness: suites, sampling, the one evaluation protocol, results, CLI, figures."""

__version__ = "0.1.0"
