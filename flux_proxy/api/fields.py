"""The value types request bodies are declared with (`schemas.py`), for JSON and form text
alike: an integer may arrive as `30` or `"30"`, a flag as `true` or `"true"`.

Each type is a pydantic `Annotated` type: the before-validator accepts what callers send and
says plainly what is wrong ("must be an integer, not a boolean"); the core type and its
constraints give the JSON Schema `/openapi.json` shows. A message is written without the
field's name: `validation.py` puts the `param` in front.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import AfterValidator, BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError, PydanticUseDefault

INTEGER_TEXT = r"^\s*[+-]?\d{1,20}\s*$"
_INTEGER_TEXT = re.compile(INTEGER_TEXT)
SIZE_TEXT = re.compile(r"^\s*(\d{1,6})\s*[xX×]\s*(\d{1,6})\s*$")


def problem(message: str, code: str = "invalid_value") -> PydanticCustomError:
    """A validation error whose `code` becomes the OpenAI error's `code`."""
    return PydanticCustomError(code, message)


def _absent_when_blank(value: Any) -> Any:
    # Form fields arrive as text, and "" from a form (or null in JSON) means "not given".
    if value is None or value == "":
        raise PydanticUseDefault()
    return value


def _absent_when_null(value: Any) -> Any:
    if value is None:
        raise PydanticUseDefault()
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise problem("must be an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER_TEXT.match(value):
        return int(value)
    raise problem("must be an integer")


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise problem("must be a number, not a boolean")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise problem("must be a number") from None
    else:
        raise problem("must be a number")
    if not math.isfinite(number):
        raise problem("must be a finite number")
    return number


def _flag(value: Any) -> bool:
    if value is None or value is False:
        return False
    if value is True:
        return True
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", ""):
        return value.strip().lower() in ("true", "1")
    raise problem("must be true or false")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise problem("must be a string")
    return value


def _lowered(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def Integer(minimum: int | None = None, maximum: int | None = None, *, blank: bool = False):
    """An integer (or its text); `minimum`/`maximum` are enforced. With `blank=True`, "" means
    absent too (fields the seed's page sends empty)."""
    return Annotated[
        int,
        annotated_types.Interval(ge=minimum, le=maximum),
        BeforeValidator(_integer),
        BeforeValidator(_absent_when_blank if blank else _absent_when_null),
    ]


Number = Annotated[float, BeforeValidator(_number), BeforeValidator(_absent_when_null)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Text = Annotated[str, BeforeValidator(_text), BeforeValidator(_absent_when_null)]
OptionalText = Annotated[str, BeforeValidator(_text), BeforeValidator(_absent_when_blank)]


def Choice(*values: str, lowered: bool = False, refuse: Callable[[Any], None] | None = None):
    """One of `values`; "" or null means absent. `lowered`: any case, spaces around ignored.
    `refuse(value)` may raise a more helpful error for a value known to be unsupported."""
    validators: list[Any] = []
    if refuse is not None:
        validators.append(BeforeValidator(_refusing(refuse)))
    if lowered:
        validators.append(BeforeValidator(_lowered))
    return Annotated[Literal[values], *validators, BeforeValidator(_absent_when_blank)]  # type: ignore[valid-type]


def _refusing(refuse: Callable[[Any], None]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        refuse(value)
        return value

    return check


def Renamed(choice: Any, renames: dict[str, str]):
    """A `Choice` whose synonyms are stored under one name (`jpg` → `jpeg`)."""
    return Annotated[choice, AfterValidator(lambda value: renames.get(value, value))]


def _size(value: Any) -> str:
    if not isinstance(value, str) or not (value == "auto" or SIZE_TEXT.match(value)):
        raise problem("must be 'auto' or 'WIDTHxHEIGHT', e.g. '1024x768'")
    return value


Size = Annotated[
    str,
    BeforeValidator(_size),
    BeforeValidator(_absent_when_null),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(auto|\s*\d{1,6}\s*[xX×]\s*\d{1,6}\s*)$",
            "examples": ["1024x1024", "auto"],
        }
    ),
]


def size_of(size: str | None) -> tuple[int, int] | None:
    """`"1024x768"` → (1024, 768); `"auto"` or None → None."""
    if size is None or size == "auto":
        return None
    match = SIZE_TEXT.match(size)
    assert match is not None  # checked by `Size`
    return int(match.group(1)), int(match.group(2))
