"""Unlearning objectives. Built-ins live in ``builtin``; plugins subclass ``base.UnlearningLoss``."""

from forgetkit.losses.base import LossContext, UnlearningLoss

__all__ = ["LossContext", "UnlearningLoss"]
