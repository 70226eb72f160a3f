"""Attacks: pure, jit-compiled functions of a loss over a batch of inputs."""
from robustjax.attacks.pgd import PGDSpec, pgd

__all__ = ["PGDSpec", "pgd"]
