"""The tuner's functional core: search spaces, GA operators, NSGA-II, the median pruning rule, budgets.

Torch-free and ray-free (the gateway validates search spaces with it; the evolver actor is its shell).
"""
