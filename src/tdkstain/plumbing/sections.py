"""The strict settings base that every config section and every method's options derive from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Section"]


class Section(BaseModel):
    """A group of settings: unknown keys and values of the wrong type are errors that name the key.

    strict: "5" is not an int, 1 is not a bool; ints are still accepted for floats.
    """

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)
