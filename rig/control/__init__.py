"""The controller: the bench (hardware owner), per-terminal cycles and the procedures."""
