"""Plugin registry: unlearning losses and LoRA init schemes, found through entry points.

Built-ins register exactly as third-party packages do, in pyproject.toml::

    [project.entry-points."forgetkit.losses"]
    ihl = "forgetkit.losses.builtin:InvertedHinge"

so ``forgetkit plugins`` and the stages see one list, whoever provides an entry.
"""

from __future__ import annotations

import dataclasses
import typing
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from forgetkit.errors import ForgetkitError

LOSSES = "forgetkit.losses"
INITS = "forgetkit.inits"
GROUPS = {"loss": LOSSES, "init": INITS}


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    kind: str
    name: str
    provider: str  # the distribution that declares it
    target: str  # module:object


def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def installed() -> list[PluginInfo]:
    found = []
    for kind, group in GROUPS.items():
        for name, ep in sorted(_entry_points(group).items()):
            provider = ep.dist.name if ep.dist is not None else "?"
            found.append(PluginInfo(kind=kind, name=name, provider=provider, target=ep.value))
    return found


def names(kind: str) -> list[str]:
    return sorted(_entry_points(GROUPS[kind]))


def _load_class(kind: str, name: str, base: type) -> type:
    available = _entry_points(GROUPS[kind])
    if name not in available:
        listing = ", ".join(sorted(available)) or "none installed"
        raise ForgetkitError(f"unknown {kind} '{name}' (installed: {listing})")
    try:
        obj = available[name].load()
    except Exception as exc:  # a broken plugin must not take the CLI down with a traceback
        raise ForgetkitError(f"{kind} plugin '{name}' ({available[name].value}) failed to import: {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise ForgetkitError(f"{kind} plugin '{name}' ({available[name].value}) is not a {base.__name__} subclass")
    return obj


def _coerce(value: str, annotation: Any, field: str, owner: str) -> Any:
    kind = annotation if isinstance(annotation, type) else {"float": float, "int": int, "bool": bool, "str": str}.get(
        str(annotation), str
    )
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return kind(value)
    except ValueError:
        raise ForgetkitError(f"{owner}: parameter '{field}' expects {kind.__name__}, got '{value}'") from None


def instantiate(cls: type, params: dict[str, str], owner: str) -> Any:
    """Build a plugin object from ``key=value`` strings, typed by its dataclass fields."""
    if not dataclasses.is_dataclass(cls):
        if params:
            raise ForgetkitError(f"{owner}: takes no parameters")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ForgetkitError(f"{owner}: unknown parameter(s) {', '.join(unknown)} (has: {', '.join(fields) or 'none'})")
    return cls(**{k: _coerce(v, hints.get(k, str), k, owner) for k, v in params.items()})


def parse_params(pairs: list[str] | None, option: str) -> dict[str, str]:
    params = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ForgetkitError(f"{option} '{pair}': expected KEY=VALUE")
        params[key.strip()] = value.strip()
    return params


def load_loss(name: str, params: dict[str, str] | None = None):
    from forgetkit.losses.base import UnlearningLoss

    return instantiate(_load_class("loss", name, UnlearningLoss), params or {}, f"loss '{name}'")


def load_init(name: str, params: dict[str, str] | None = None):
    from forgetkit.inits.base import InitScheme

    return instantiate(_load_class("init", name, InitScheme), params or {}, f"init scheme '{name}'")
