"""Task suites: point-nav (numpy), MuJoCo locomotion, Meta-World ML1/ML10/ML45."""
