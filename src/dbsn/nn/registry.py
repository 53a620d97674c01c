"""A plain model registry: ``create_model(name, **kwargs)`` over registered variants."""

from __future__ import annotations

from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DEFAULTS: dict[str, dict] = {}
_KINDS: dict[str, str] = {}
# the kinds of model, and the stage of the method each one is (as model cards and `dbsn list` name it)
STAGE_OF_KIND = {"blind-spot": "stage1", "student": "student"}
KINDS = tuple(STAGE_OF_KIND)


def register_model(name: str, kind: str, **defaults):
    """Register ``factory`` under ``name``.

    Args:
        kind: ``"blind-spot"`` (stage-1 models) or ``"student"`` (ordinary denoisers).
        defaults: keyword arguments of the factory unless overridden.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        _DEFAULTS[name] = dict(defaults)
        _KINDS[name] = kind
        return factory

    return wrap


def list_models(kind: str | None = None) -> list[str]:
    """Names accepted by :func:`create_model`, optionally only those of one kind."""
    return sorted(n for n in _REGISTRY if kind is None or _KINDS[n] == kind)


def model_kind(name: str) -> str:
    """``"blind-spot"`` or ``"student"``."""
    _check(name)
    return _KINDS[name]


def model_defaults(name: str) -> dict:
    _check(name)
    return dict(_DEFAULTS[name])


def _check(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model. Keyword arguments override the variant's defaults.

    The model remembers ``name`` and its full keyword arguments in ``model.config``,
    which is what checkpoints store to rebuild it.
    """
    _check(name)
    config = {**_DEFAULTS[name], **kwargs}
    model = _REGISTRY[name](**config)
    model.config = {"name": name, **config}
    return model
