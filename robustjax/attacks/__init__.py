"""Attacks: pure, jit-compiled functions of a loss or a model over a batch of inputs.

Every attack name (the ensemble's members, adversarial_distance's methods) and its
kind is in ``robustjax.attacks.registry``.
"""
from robustjax.attacks.apgd import apgd
from robustjax.attacks.decision import decision_attack, hopskipjump, tangent_attack
from robustjax.attacks.ensemble import evaluate_robust_accuracy
from robustjax.attacks.fab import fab
from robustjax.attacks.instance import instance_attack, instance_loss_fn
from robustjax.attacks.minimal import bisection, fmn
from robustjax.attacks.pgd import PGDSpec, pgd
from robustjax.attacks.square import square

__all__ = ["PGDSpec", "pgd", "apgd", "square", "fmn", "fab", "bisection", "decision_attack",
           "hopskipjump", "tangent_attack", "evaluate_robust_accuracy",
           "instance_attack", "instance_loss_fn"]
