"""The shared multitask model: sparse fingerprint trunk, task heads, losses, training, metrics."""

from fedchem.model.losses import censored_mse, masked_bce, multitask_loss
from fedchem.model.network import MultitaskNet, build_model
from fedchem.model.state import arrays_to_model, dump_arrays, load_arrays, model_to_arrays

__all__ = [
    "MultitaskNet",
    "arrays_to_model",
    "build_model",
    "censored_mse",
    "dump_arrays",
    "load_arrays",
    "masked_bce",
    "model_to_arrays",
    "multitask_loss",
]
