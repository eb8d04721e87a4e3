"""pydantic's ValidationError translated into InputErrors a user can act on.

``job.toml: query[1].image_count.min: must be >= 0, got -3``: the file, the key path in TOML
terms (aliases as written, ``[i]`` for the i-th array element counting from 0) and what is
wrong in plain words. Unknown keys get a close-match suggestion and the list of keys allowed at
that place. No pydantic exception or traceback ever leaves this module.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from tcia_fetch.errors import InputError

__all__ = ["key_error", "validate_model"]

_ERRORS_IN_MESSAGE = 10


def key_error(message: str, *, source: str, key: str | None) -> InputError:
    """An InputError reading ``job.toml: query[1].image_count.min: message``.

    InputError joins source and location with a bare ``:`` (right for ``file:line``); a key
    path reads better after ``": "``, so it goes into the message and ``location`` is set after.
    """
    error = InputError(f"{key}: {message}" if key else message, source=source)
    error.location = key
    return error


_Model = typing.TypeVar("_Model", bound=BaseModel)


def validate_model(model: type[_Model], data: Any, source: str, prefix: str | None) -> _Model:
    """``model.model_validate`` with every failure turned into an InputError naming the keys."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    except RecursionError:
        raise InputError("the document is nested too deeply", source=source) from None
    lines = []
    for error in errors[:_ERRORS_IN_MESSAGE]:
        loc = ((prefix,) if prefix else ()) + tuple(error["loc"])
        lines.append((_key_path(loc), _explain(model, error)))
    first_key, first_message = lines[0]
    rest = [
        f"  {source}: {key}: {message}" if key else f"  {source}: {message}" for key, message in lines[1:]
    ]
    if len(errors) > _ERRORS_IN_MESSAGE:
        rest.append(f"  ... and {len(errors) - _ERRORS_IN_MESSAGE} more errors")
    raise key_error("\n".join([first_message, *rest]), source=source, key=first_key or None)


def _key_path(loc: Sequence[int | str]) -> str:
    """``('query', 1, 'image_count', 'min')`` -> ``query[1].image_count.min``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "model_type": "a table",
    "dict_type": "a table",
    "date_type": "a date (YYYY-MM-DD)",
    "date_from_datetime_inexact": "a date without a time",
    "date_from_datetime_parsing": "a date (YYYY-MM-DD)",
}
_BOUND_WORDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _explain(model: type[BaseModel], error: Any) -> str:
    kind: str = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown_key(model, error["loc"])
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "tuple_type" and tuple(error["loc"]) == ("query",) and isinstance(value, dict):
        return "must be an array of tables: write [[query]] (double brackets) for each query"
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}, got {_describe_value(value)}"
    if kind in _BOUND_WORDS:
        bound = next(iter(ctx.values()), "?")
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"must be {_BOUND_WORDS[kind]} {bound}, got {_describe_value(value)}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected', 'one of the allowed values')}, got {_describe_value(value)}"
    return f"{error['msg']}, got {_describe_value(value)}"


def _describe_value(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value[:60]!r}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return repr(value)[:60]


def _unknown_key(model: type[BaseModel], loc: Sequence[int | str]) -> str:
    key = str(loc[-1])
    allowed = _keys_at(model, loc[:-1])
    if not allowed:
        return f"unknown key {key!r}"
    if key in allowed:  # only possible for a field with two accepted names, given both ways
        return "'model' and 'manufacturer_model' name the same filter: give only one of them"
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r}{hint} (allowed here: {', '.join(sorted(allowed))})"


def _keys_at(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The TOML keys the model at ``loc`` accepts (aliases as written in files)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = _field_by_key(current, part)
        if field is None:
            return []
        current = _inner_model(field.annotation)
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return []
    keys = []
    for name, info in current.model_fields.items():
        if name == "manufacturer_model":
            keys.append("model")
        keys.append(info.alias or name)
    return keys


def _field_by_key(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias) or (name == "manufacturer_model" and key == "model"):
            return info
    return None


def _inner_model(annotation: Any) -> Any:
    """The model inside ``X``, ``X | None`` or ``tuple[X, ...]``; else the annotation itself."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        inner = _inner_model(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation
