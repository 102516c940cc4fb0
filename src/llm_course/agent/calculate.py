"""Safe arithmetic for the ``calculate`` tool: the expression is parsed with :mod:`ast` and walked node by node;
only numbers, + - * / // % **, parentheses and a few math functions are allowed. Nothing is ever ``eval``-ed, so a
model (or a customer) cannot reach names, attributes, imports or calls beyond the list below."""

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

MAX_LENGTH = 200  # characters of an expression
MAX_EXPONENT = 64  # 2 ** 64 is fine; 9 ** 9 ** 9 would take the machine with it
MAX_MAGNITUDE = 1e100
OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}  # fmt: skip
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "log": math.log,
    "exp": math.exp,
    "floor": math.floor,
    "ceil": math.ceil,
}
CONSTANTS = {"pi": math.pi, "e": math.e}


class CalculationError(ValueError):
    """The expression is not plain arithmetic, or its value cannot be computed; the message says which part."""


def calculate(expression: str) -> float | int:
    """Evaluate an arithmetic expression, e.g. (17 * 23 + 4) / 5 or sqrt(2) * 10.

    Args:
        expression: numbers with + - * / // % ** and parentheses, and sqrt, abs, round, min, max, log, exp, floor,
            ceil, pi, e.

    Raises:
        CalculationError: anything else (names, attributes, strings, calls to other functions), a division by zero,
            or a value too large to be an answer.
    """
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    if not text:
        raise CalculationError("the expression is empty")
    if len(text) > MAX_LENGTH:
        raise CalculationError(f"the expression is {len(text)} characters, over {MAX_LENGTH}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as err:
        raise CalculationError(f"{expression!r} is not an arithmetic expression ({err.msg})") from None
    value = _value(tree.body)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return round(value, 10) if isinstance(value, float) else value


def _value(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        value = _value(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculationError(f"the exponent {right} is over {MAX_EXPONENT}")
        try:
            value = OPERATORS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculationError("division by zero") from None
        if isinstance(value, complex) or abs(value) > MAX_MAGNITUDE:
            raise CalculationError(f"{ast.unparse(node)} is not a real number below {MAX_MAGNITUDE:g}")
        return value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        if node.keywords:
            raise CalculationError(f"{node.func.id}() takes no keyword arguments here")
        try:
            return FUNCTIONS[node.func.id](*(_value(a) for a in node.args))
        except (ValueError, TypeError, OverflowError) as err:
            raise CalculationError(f"{ast.unparse(node)}: {err}") from None
    allowed = "numbers, + - * / // % ** ( ), " + ", ".join([*FUNCTIONS, *CONSTANTS])
    raise CalculationError(f"{ast.unparse(node)!r} is not allowed in a calculation; allowed: {allowed}")
