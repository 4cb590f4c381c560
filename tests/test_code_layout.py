"""The code stays easy to pick up: no function in trainer/ grows past 60 lines (the loop, trainer.train.fit,
past 40), so a new concern lands in a function, and a module, of its own."""

from __future__ import annotations

import ast

from helpers import REPO


def function_lengths() -> dict[str, int]:
    out = {}
    for path in sorted((REPO / "trainer").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[f"{path.relative_to(REPO)}:{node.lineno} {node.name}"] = node.end_lineno - node.lineno + 1
    return out


def test_no_function_in_the_package_is_longer_than_60_lines():
    lengths = function_lengths()
    assert len(lengths) > 100  # it read the package
    assert {name: n for name, n in lengths.items() if n > 60} == {}


def test_the_training_loop_reads_in_one_screen():
    (fit,) = [n for name, n in function_lengths().items() if name.startswith("trainer/train.py") and name.endswith(" fit")]
    assert fit <= 40
