"""Base class for every typed config, and the registry that resolves `kind:` / `type:` tags.

Each component owns its config (a `Config` subclass next to the code that reads it); job specs compose them.
Configs reject unknown keys so a typo never silently falls back to a default.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """A strict, typed config: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (what hashing and `omnivl spec show` use)."""
        return self.model_dump(mode="json")


class TaggedRegistry:
    """Maps a tag (the value of `kind:` or `type:`) to a Config subclass.

    One registry per family (jobs, pipeline steps, ...), never a global one: the family's base class owns it,
    as levanter's `register_subclass` does.
    """

    def __init__(self, family: str, tag_field: str) -> None:
        self.family = family
        self.tag_field = tag_field
        self._classes: dict[str, type[Config]] = {}

    def register(self, tag: str):
        def deco(cls: type[C]) -> type[C]:
            if tag in self._classes:
                raise ValueError(f"{self.family} tag {tag!r} registered twice")
            self._classes[tag] = cls
            cls.TAG = tag  # type: ignore[attr-defined]
            return cls

        return deco

    def tags(self) -> list[str]:
        return sorted(self._classes)

    def get(self, tag: str) -> type[Config] | None:
        return self._classes.get(tag)

    def items(self):
        return sorted(self._classes.items())


class Tagged(Config):
    """Mixin base for configs that carry their own tag (read-only after construction)."""

    TAG: ClassVar[str] = ""
