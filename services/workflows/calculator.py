"""A safe arithmetic evaluator for the chat agent's calculator tool.

The expression is parsed with `ast` and walked over an allow-list of node types; nothing is ever
passed to `eval`. Names resolve only to a fixed table of constants and functions. Work is bounded:
the text length, the AST size, exponent sizes and result magnitudes are all capped, so no input
can make the worker allocate a huge integer or spin. `^` is read as a power, as on calculators.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

__all__ = ["NAMES", "CalculatorError", "calculate", "format_number"]

_MAX_CHARS = 200
_MAX_NODES = 100
_MAX_EXPONENT = 1_000
_MAX_MAGNITUDE = 1e100

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "floor": math.floor,
    "ceil": math.ceil,
}
# Every name an expression may use: lets a caller tell arithmetic from prose before evaluating.
NAMES = frozenset(_CONSTANTS) | frozenset(_FUNCTIONS)


class CalculatorError(ValueError):
    """The expression is not allowed or cannot be evaluated; the message says why."""


def calculate(expression: str) -> int | float:
    """Evaluate an arithmetic expression such as `2*(3+4)` or `sqrt(2)^2`."""
    text = expression.strip().replace("^", "**")
    if not text:
        raise CalculatorError("nothing to calculate")
    if len(text) > _MAX_CHARS:
        raise CalculatorError(f"expression longer than {_MAX_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from None
    if sum(1 for _ in ast.walk(tree)) > _MAX_NODES:
        raise CalculatorError("expression too complex")
    try:
        return _check(_eval(tree.body))
    except CalculatorError:
        raise
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise CalculatorError(f"cannot evaluate: {exc}") from None


def format_number(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.12g}"
    return str(value)


def _check(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculatorError("the result is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not finite")
    if abs(value) > _MAX_MAGNITUDE:
        raise CalculatorError("the result is too large")
    return value


def _eval(node: ast.expr) -> int | float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError("only numbers are allowed")
        return _check(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise CalculatorError(f"exponent larger than {_MAX_EXPONENT}")
        return _check(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise CalculatorError(f"unknown name {node.id!r}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            raise CalculatorError("only these functions are allowed: " + ", ".join(_FUNCTIONS))
        if node.keywords or not 1 <= len(node.args) <= 5:
            raise CalculatorError(f"bad arguments to {node.func.id}()")
        args = [_eval(arg) for arg in node.args]
        return _check(_FUNCTIONS[node.func.id](*args))
    raise CalculatorError(f"{type(node).__name__} is not allowed in a calculation")
