"""The runtime around the pure engine: load facts, evaluate, write state back."""
