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
    """The pre-LLM methods (what ``reduce_visual_tokens`` runs)."""
    return sorted(n for n, cls in _REDUCERS.items() if not getattr(cls, "in_llm", False))


def known_methods() -> list[str]:
    """Every registered method: the pre-LLM reducers and the in-LLM ones (``reduction.inllm``)."""
    return sorted(_REDUCERS)


def registered_class(name):
    """The class registered as ``name``, or None."""
    return _REDUCERS.get(name)


def get_reducer(name: str):
    """A fresh instance of the method registered as ``name`` (pre-LLM reducer or in-LLM policy)."""
    if name not in _REDUCERS:
        raise ValueError(f"unknown reduction method {name!r}; known: {known_methods()}")
    return _REDUCERS[name]()
