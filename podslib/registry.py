"""Named registries: a family of rules (selection rules, loss aggregations, reward terms, tasks,
templates, engines) is a `Registry`, and a new rule is one decorated function.

    RULES = Registry("rule")

    @RULES.register("max_reward")
    def _max_reward(rewards, m, generator=None): ...

Everything else asks the registry: `RULES.get(name)` returns the function or raises a ValueError
that names the parameter and every registered name, and `Config` validates its fields against
the same registries, so a rule registered anywhere (a user's notebook included) is accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class Registry:
    """name -> object, with a decorator to register and one error message for unknown names."""

    def __init__(self, parameter: str):
        self.parameter = parameter          # the config field / argument the names are for
        self._entries: dict[str, Any] = {}

    def register(self, *names: str) -> Callable[[Any], Any]:
        """Decorator registering its target under every name in `names` (aliases share it)."""
        def add(target: Any) -> Any:
            for name in names:
                self._entries[name] = target
            return target
        return add

    def check(self, name: Any) -> None:
        """ValueError naming the parameter and the registered names unless `name` is one."""
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"{self.parameter} must be one of "
                             f"{', '.join(map(repr, self._entries))}; got {name!r}")

    def get(self, name: str) -> Any:
        self.check(name)
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self) -> list[tuple[str, Any]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
