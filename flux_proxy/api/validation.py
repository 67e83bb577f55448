"""A decoded body checked against its declaration (`schemas.py`), and pydantic's errors turned
into the OpenAI error callers know: a 400 naming the `param`, with a message that says what the
field must be ("n must be between 1 and 10; got 0").
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from flux_proxy.errors import ApiError, invalid

Body = TypeVar("Body", bound=BaseModel)

_CORE_CODES = {"missing": "missing_required_parameter"}
_OWN_CODES = frozenset(("invalid_value", "unsupported_parameter"))  # from `fields.problem`


def validate_body(declaration: type[Body], fields: dict[str, Any]) -> Body:
    try:
        return declaration.model_validate(fields)
    except ValidationError as error:
        raise as_api_error(declaration, error) from None


def as_api_error(declaration: type[BaseModel], error: ValidationError) -> ApiError:
    """The first problem, in the declaration's field order (a union's other branches, which
    pydantic reports too, say nothing new)."""
    first = error.errors(include_url=False)[0]
    loc = first["loc"]
    param = str(loc[0]) if loc else None
    kind = first["type"]
    if kind == "missing":
        message = f"{param} is required"
    elif kind in ("greater_than_equal", "less_than_equal") and param is not None:
        low, high = _bounds(declaration).get(param, (None, None))
        message = f"{param} must be between {low} and {high}; got {first.get('input')!r}"
    else:
        text = first["msg"].replace("Input should be", "must be")
        message = f"{param} {text}" if param else text
    return invalid(message[:500], param=param, code=_code(kind))


def _code(kind: str) -> str:
    return _CORE_CODES.get(kind) or (kind if kind in _OWN_CODES else "invalid_value")


@functools.cache
def _bounds(declaration: type[BaseModel]) -> dict[str, tuple[Any, Any]]:
    properties = declaration.model_json_schema(by_alias=True).get("properties", {})
    return {
        name: (schema.get("minimum"), schema.get("maximum"))
        for name, schema in properties.items()
        if "minimum" in schema or "maximum" in schema
    }
