"""Name -> reducer registry.  ``@register_reducer("divprune")`` on a Reducer subclass."""
from __future__ import annotations

_REDUCERS: dict[str, type] = {}


def register_reducer(name: str):
    def deco(cls):
        if name in _REDUCERS:
            raise ValueError(f"reducer {name!r} is registered twice ({_REDUCERS[name].__name__}, {cls.__name__})")
        cls.name = name
        _REDUCERS[name] = cls
        return cls

    return deco


def known_reducers() -> list[str]:
    return sorted(_REDUCERS)


def get_reducer(name: str):
    """A fresh instance of the reducer registered as ``name``."""
    if name not in _REDUCERS:
        raise ValueError(f"unknown reduction method {name!r}; known: {known_reducers()}")
    return _REDUCERS[name]()
