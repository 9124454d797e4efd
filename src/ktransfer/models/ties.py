"""Tied weights (one tensor under several names, e.g. a language model's input embedding and output
layer) listed once in a model's state dict, so that every save holds each tensor once.

`tie_aware_state_dict(model)` makes `model.state_dict()` leave out the later names of a shared
parameter (the first name in registration order stays, as `named_parameters` lists it) and
makes `load_state_dict` accept a state without them: loading the first name fills the shared
tensor, so the tie holds. Checkpoints written from such a state (Accelerate's `save_state`,
`ktransfer.checkpoint.save_weights`) then have nothing to deduplicate.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ktransfer.checkpoint import tied_aliases

_HOOKED = "_ktransfer_tie_aware"


def tie_aware_state_dict(model: nn.Module) -> nn.Module:
    """Register the state-dict hooks on `model` (once) and return it; a model without ties is left alone."""
    if getattr(model, _HOOKED, False) or not tied_aliases(model):
        return model

    def drop_aliases(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        for alias, first in tied_aliases(module).items():
            if prefix + first in state:
                state.pop(prefix + alias, None)

    def accept_missing_aliases(module: nn.Module, incompatible: Any) -> None:
        # the hook sees the keys of the whole load; the aliases of this model appear with the caller's prefix
        aliases = tied_aliases(module)
        for name in list(incompatible.missing_keys):
            if any(name == alias or name.endswith("." + alias) for alias in aliases):
                incompatible.missing_keys.remove(name)

    model.register_state_dict_post_hook(drop_aliases)
    model.register_load_state_dict_post_hook(accept_missing_aliases)
    setattr(model, _HOOKED, True)
    return model


__all__ = ["tie_aware_state_dict"]
