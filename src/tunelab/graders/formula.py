"""A multi grader's `calculate_output`: arithmetic over its sub-graders' rewards, as OpenAI documents it:
names, numbers, + - * / ^ (power; ** too) and parentheses, and min, max, abs, floor, ceil, exp, sqrt, log.

Evaluated by a small walker over Python's `ast` that allows only those: eval would run whatever code a
grader file holds."""

from __future__ import annotations

import ast
import math
import operator

from .base import GraderError, RowError

# name -> (function, fewest arguments, most arguments or None for any number)
FUNCTIONS = {
    "min": (min, 2, None),
    "max": (max, 2, None),
    "abs": (abs, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "exp": (math.exp, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "log": (math.log, 1, 2),  # log(x) is natural; log(x, base)
}
# math.pow, not **: a negative base to a fraction is an error, not a complex number.
BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: math.pow,
}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
ALLOWED = "the graders' names, numbers, + - * / ^ ( ) and " + ", ".join(FUNCTIONS)


MAX_FORMULA = 1000  # characters: a formula over a few graders is a line; a huge one could exhaust the parser


class Formula:
    """A checked formula; `evaluate` gives its value for one row's rewards."""

    def __init__(self, text: str, names: list[str], where: str):
        self.text = text
        source = text.replace("^", "**").strip()  # OpenAI's ^ is a power; Python's is exclusive or
        if len(source) > MAX_FORMULA:
            raise GraderError(f"{where}: longer than {MAX_FORMULA} characters")
        try:
            self.tree = ast.parse(source, mode="eval").body
            check(self.tree, names, where)
        except SyntaxError as err:
            raise GraderError(f"{where}: '{text}' is not a formula ({err.msg})") from None
        except (RecursionError, MemoryError):  # nested past the parser's limits
            raise GraderError(f"{where}: nested too deeply to be a formula") from None

    def evaluate(self, rewards: dict[str, float]) -> float:
        try:
            return float(evaluate(self.tree, rewards))
        except ZeroDivisionError:
            raise RowError(f"calculate_output '{self.text}': division by zero") from None
        except (ValueError, OverflowError) as err:  # sqrt(-1), log(0), exp(1000)
            raise RowError(f"calculate_output '{self.text}': {err}") from None


def check(node: ast.expr, names: list[str], where: str) -> None:
    """Refuse, naming it, anything in the formula but names of `names`, numbers, operators and functions."""
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        check(node.left, names, where)
        check(node.right, names, where)
    elif isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        check(node.operand, names, where)
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return
    elif isinstance(node, ast.Name):
        if node.id not in names:
            raise GraderError(f"{where}: '{node.id}' is no grader here; the graders are {', '.join(names)}")
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        check_call(node, names, where)
    else:
        raise GraderError(f"{where}: '{ast.unparse(node)}' is not allowed; a formula has {ALLOWED}")


def check_call(node: ast.Call, names: list[str], where: str) -> None:
    name = node.func.id
    _, fewest, most = FUNCTIONS[name]
    if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
        raise GraderError(f"{where}: {name}() takes plain arguments")
    if len(node.args) < fewest or (most is not None and len(node.args) > most):
        count = (
            f"{fewest}" if fewest == most else f"{fewest} or more" if most is None else f"{fewest} to {most}"
        )
        raise GraderError(f"{where}: {name}() takes {count} arguments, not {len(node.args)}")
    for arg in node.args:
        check(arg, names, where)


def evaluate(node: ast.expr, rewards: dict[str, float]) -> float:
    """The value of a checked formula's node."""
    if isinstance(node, ast.BinOp):
        return BINARY[type(node.op)](evaluate(node.left, rewards), evaluate(node.right, rewards))
    if isinstance(node, ast.UnaryOp):
        return UNARY[type(node.op)](evaluate(node.operand, rewards))
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return rewards[node.id]
    function = FUNCTIONS[node.func.id][0]
    return function(*(evaluate(arg, rewards) for arg in node.args))
