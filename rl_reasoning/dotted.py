"""Resolve a callable a recipe names by dotted path; light on imports, so tool worker processes
(rl_reasoning/tools.py) start without importing torch."""

from __future__ import annotations

import importlib

from .errors import ConfigError


def load_dotted(target: str, key: str, what: str, examples: str):
    """The callable a recipe names by dotted path (`module:attr` or `module.attr`), or a ConfigError
    naming `key`: `what` is the kind of thing ("tool"), `examples` the valid built-in names."""
    if ":" not in target and "." not in target:
        raise ConfigError(f"{key}: unknown {what} {target!r}; {examples}")
    module_name, _, attr = target.partition(":") if ":" in target else target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure of user code is a config error
        raise ConfigError(f"{key}: {what} {target!r}: cannot import module {module_name!r} ({type(e).__name__}: {e})") from None
    obj = getattr(module, attr, None)
    if not callable(obj):
        raise ConfigError(f"{key}: {what} {target!r}: {module_name} has no callable {attr!r}")
    return obj
