"""Tool-argument errors a model can act on: the argument's name, what was given, what is expected.

The SDK reports a type error as pydantic's text ("1 validation error for rememberArguments ... visit
https://errors.pydantic.dev/...") and silently drops arguments it does not know (`priority="high"`). Every
tool of our server gets argument metadata that refuses unknown arguments by name and words type errors for
a reader; the tools' JSON schemas say `additionalProperties: false` so hosts can tell before calling.
"""

from __future__ import annotations

import json
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from pydantic import ValidationError

_REFUSAL = "__agentcache_refusal__"
"""Key of the one entry validate_arguments returns for refused arguments; call_fn raises it as a ToolError
(inside the SDK's handling of deliberate tool errors, so the message reaches the model unchanged)."""

_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "finite_number": "a finite number",
}


def _described(value: Any) -> str:
    kind = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    shown = json.dumps(value, ensure_ascii=False, default=repr)  # as the caller wrote it: true, null, "high"
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({kind.get(type(value), type(value).__name__)})" if value is not None else "null"


_UNION_BRANCHES = {"str", "int", "float", "bool", "none"}
"""Pydantic names the branch of a union (str | int | float | bool) as the last part of an error's location;
a value that fits no branch gets one error per branch, which we report as one."""


def describe_validation_error(exc: ValidationError) -> str:
    """One sentence per wrong argument, e.g. "argument 'importance' must be a number; got 'high' (a string)"."""
    grouped: dict[str, tuple[list[str], Any]] = {}
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        location = [str(part) for part in error["loc"]]
        if len(location) > 1 and location[-1] in _UNION_BRANCHES:
            location = location[:-1]
        name = location[0] if location else "?"
        where = name + "".join(f"[{part}]" for part in location[1:])
        if error["type"] == "missing":
            problems.append(f"argument '{where}' is required")
            continue
        expected = _EXPECTED.get(error["type"])
        if expected is None:
            problems.append(f"argument '{where}': {error['msg']}; got {_described(error.get('input'))}")
            continue
        if where not in grouped:
            grouped[where] = ([], error.get("input"))
            problems.append(where)  # a placeholder, filled in below in this order
        grouped[where][0].append(expected)
    out: list[str] = []
    for problem in problems:
        if problem not in grouped:
            out.append(problem)
            continue
        expectations, given = grouped[problem]
        kinds = list(dict.fromkeys(expectations))
        if "a number" in kinds and "a whole number" in kinds:
            kinds.remove("a whole number")
        wanted = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " or " + kinds[-1]
        out.append(f"argument '{problem}' must be {wanted}; got {_described(given)}")
    return "; ".join(dict.fromkeys(out))


class _HumaneArguments(FuncMetadata):
    def validate_arguments(self, arguments_to_validate: dict[str, Any]) -> dict[str, Any]:
        known = {field.alias or name for name, field in self.arg_model.model_fields.items()}
        unknown = [name for name in arguments_to_validate if name not in known]
        if unknown:
            return {
                _REFUSAL: f"unknown argument{'s' if len(unknown) > 1 else ''} "
                + ", ".join(repr(u) for u in unknown)
                + f"; it accepts {', '.join(sorted(known))}"
            }
        try:
            return super().validate_arguments(arguments_to_validate)
        except ValidationError as exc:
            return {_REFUSAL: describe_validation_error(exc)}

    async def call_fn(self, fn: Any, fn_is_async: bool, arguments: dict[str, Any], *rest: Any, **kw: Any) -> Any:
        if _REFUSAL in arguments:
            raise ToolError(arguments[_REFUSAL])
        return await super().call_fn(fn, fn_is_async, arguments, *rest, **kw)


def check_arguments_humanely(server: MCPServer[Any]) -> None:
    """Give every registered tool of `server` the argument checks above."""
    for tool in server._tool_manager.list_tools():
        meta = tool.fn_metadata
        tool.fn_metadata = _HumaneArguments(
            arg_model=meta.arg_model,
            output_schema=meta.output_schema,
            output_model=meta.output_model,
            wrap_output=meta.wrap_output,
        )
        tool.parameters["additionalProperties"] = False
