"""Starting a training run from trained weights (``--init``): the same model, or one grown from it.

A gray student becomes an opponent-colour one, a shallower or narrower MWCNN a deeper or wider
one or one with attention, a stage-1 model for another noise keeps its D-BSN; each starts computing what its source did.
"""

from __future__ import annotations

import json
import logging
from collections.abc import KeysView

from torch import nn

from ..hub import read_checkpoint, resolve_model

log = logging.getLogger("dbsn")

PLAIN, SHUFFLED = "bsn.", "bsn.inner."  # the backbone's weights in a plain and in a pixel-shuffled model


def init_weights(model: nn.Module, source: str) -> None:
    """Start from trained weights (fine-tuning): a checkpoint, weights file or bundled name."""
    payload = read_checkpoint(resolve_model(source))
    source_config = payload["config"]
    if hasattr(model, "load_gray_state") and source_config.get("in_channels", 1) == 1:
        # a gray student grown into an opponent-colour one of the same architecture
        if source_config.get("name") != model.config["name"]:
            raise ValueError(f"--init {source}: a {source_config.get('name')!r} cannot start a "
                             f"{model.config['name']!r}")
        try:
            model.load_gray_state(payload["model"])
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"--init {source}: {err}") from None
        log.info("initialised from the gray student %s, on each opponent channel", source)
        return
    state = _match_shuffle(payload["model"], model.state_dict().keys())
    # a smaller MWCNN student grown into this one: (is it, the method, what the log says it kept)
    for smaller, method, kept in ((_shallower, "load_shallower_state", "depth"),
                                  (_narrower, "load_narrower_state", "widths"),
                                  (_unattended, "load_unattended_state", "attention")):
        if smaller(source_config, model.config) and hasattr(model, method):
            try:
                getattr(model, method)(state)
            except ValueError as err:
                raise ValueError(f"--init {source}: {err}") from None
            log.info("initialised from %s (%s %s), grown into this model", source, kept, source_config.get(kept, 0))
            return
    source_noise, noise = source_config.get("noise_model"), model.config.get("noise_model")
    if source_noise and noise and source_noise != noise and not _fits(model, state):
        # a stage-1 model for another noise whose heads have other shapes (MG's full covariance against
        # a diagonal one): its D-BSN is the part worth keeping, and the heads start from scratch
        bsn = {k.removeprefix("bsn."): v for k, v in state.items() if k.startswith("bsn.")}
        try:
            model.bsn.load_state_dict(bsn)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[:2]
            raise ValueError(f"--init {source}: its D-BSN does not fit {model.config['name']} with these options "
                             f"({' '.join(first)})") from None
        log.info("initialised the D-BSN from %s (noise model %s); the %s heads start from scratch",
                 source, source_noise, noise)
        return
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[:2]
        raise ValueError(f"--init {source}: its weights do not fit {model.config['name']} with these options "
                         f"(model {payload['config'].get('name')!r}; {' '.join(first)})") from None
    log.info("initialised from %s", source)


def _match_shuffle(state: dict, own: KeysView) -> dict:
    """``state`` with its backbone's names as the model has them: the pixel shuffle wraps the backbone
    (``bsn.inner.*``), so a plain blind-spot model's weights start a pixel-shuffled one (a model trained on
    clean images fine-tuned on camera photographs) and the other way round."""
    wrapped, source_wrapped = (any(k.startswith(SHUFFLED) for k in keys) for keys in (own, state))
    if wrapped and not source_wrapped:
        return {SHUFFLED + k.removeprefix(PLAIN) if k.startswith(PLAIN) else k: v for k, v in state.items()}
    if source_wrapped and not wrapped:
        return {PLAIN + k.removeprefix(SHUFFLED) if k.startswith(SHUFFLED) else k: v for k, v in state.items()}
    return state


def _rest(config: dict, key: str) -> dict:
    """``config`` without ``key``, as JSON has it (tuples become lists)."""
    return json.loads(json.dumps({k: v for k, v in config.items() if k != key}))


def _same_but(source: dict, target: dict, key: str) -> bool:
    """Whether two model configurations agree on everything but ``key``."""
    return key in source and key in target and _rest(source, key) == _rest(target, key)


def _shallower(source: dict, target: dict) -> bool:
    """Whether ``source`` is the configuration ``target`` has, with fewer layers per level."""
    return _same_but(source, target, "depth") and source["depth"] < target["depth"]


def _narrower(source: dict, target: dict) -> bool:
    """Whether ``source`` is the configuration ``target`` has, with as many levels and fewer channels."""
    if not _same_but(source, target, "widths") or len(source["widths"]) != len(target["widths"]):
        return False
    pairs = list(zip(source["widths"], target["widths"]))
    return all(a <= b for a, b in pairs) and any(a < b for a, b in pairs)


def _unattended(source: dict, target: dict) -> bool:
    """Whether ``source`` is the configuration ``target`` has, without its attention blocks."""
    return (not source.get("attention") and bool(target.get("attention"))
            and _rest(source, "attention") == _rest(target, "attention"))


def _fits(model: nn.Module, state: dict) -> bool:
    """Whether ``state`` has exactly the model's tensor names and shapes."""
    own = model.state_dict()
    return own.keys() == state.keys() and all(own[k].shape == state[k].shape for k in own)
