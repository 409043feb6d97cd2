"""Model lifecycle: train, export, quantize, evaluate, publish. The only place torch/transformers/optimum load."""


class LifecycleError(Exception):
    """A problem the user can fix: the message is one line saying what to change."""
