"""The trained model and its contract: bearing geometry, the features, the bundle and its card, the
interpreters that run it. Pure computation, no I/O beyond reading a bundle; the trainer builds on it.
"""
