"""Ray actors: thin shells around the pure cores. One file per actor."""
