"""A deterministic generator of synthetic pull-request titles: the default, offline corpus.

The titles are made up, not scraped: conventional-commit prefixes, verbs, components,
identifiers in backticks, dependency bumps and issue numbers, drawn from fixed lists with a
seeded RNG. They are regular enough that a tiny model's loss falls well below ln(vocab) in a
few hundred steps, and varied enough that its samples read like real PR titles.
"""

from __future__ import annotations

import random

PREFIXES = ["feat", "fix", "docs", "refactor", "test", "chore", "perf", "ci", "build", "style"]
PREFIX_WEIGHTS = [24, 30, 10, 10, 7, 6, 4, 4, 3, 2]
COMPONENTS = [
    "api", "auth", "cli", "config", "core", "db", "deps", "docs", "http", "json", "logging",
    "models", "parser", "router", "schema", "serializer", "server", "settings", "types",
    "validation", "cache", "client", "tests", "typing", "openapi", "security", "websocket",
]
VERBS = {
    "feat": ["add", "support", "introduce", "allow", "implement", "expose", "enable"],
    "fix": ["fix", "handle", "correct", "avoid", "prevent", "resolve", "restore"],
    "docs": ["document", "update", "clarify", "improve", "fix typo in", "add example for"],
    "refactor": ["refactor", "simplify", "rename", "move", "extract", "clean up", "split"],
    "test": ["add tests for", "test", "cover", "fix flaky test for", "parametrize tests for"],
    "chore": ["update", "remove", "bump", "drop", "tidy"],
    "perf": ["speed up", "optimize", "cache", "avoid copying in", "reduce allocations in"],
    "ci": ["run", "cache", "pin", "split", "add"],
    "build": ["pin", "update", "drop support for", "require"],
    "style": ["format", "lint", "reorder imports in"],
}
IDENTIFIERS = [
    "BaseModel", "Field", "model_dump", "model_validate", "validator", "field_validator",
    "ConfigDict", "TypeAdapter", "Depends", "APIRouter", "Request", "Response", "HTTPException",
    "BackgroundTasks", "UploadFile", "Query", "Path", "Body", "Header", "Cookie", "Annotated",
    "Optional", "Union", "Literal", "datetime", "UUID", "Decimal", "EmailStr", "SecretStr",
    "json_schema", "alias", "default_factory", "frozen", "extra", "strict", "root_validator",
    "dataclass", "TypedDict", "Enum", "IntEnum", "computed_field", "PrivateAttr", "lifespan",
    "middleware", "OAuth2PasswordBearer", "status_code", "response_model", "dependencies",
]
OBJECTS = [
    "error messages", "type hints", "the default value", "nested models", "generic models",
    "forward references", "recursive schemas", "JSON serialization", "the docs build",
    "the test suite", "Python 3.13", "Python 3.8", "the release workflow", "the changelog",
    "the tutorial", "the README", "query parameters", "path parameters", "response headers",
    "startup events", "async dependencies", "custom validators", "OpenAPI output", "enum values",
    "optional fields", "datetime parsing", "URL parsing", "the benchmarks", "pre-commit hooks",
    "coverage reports", "mypy errors", "deprecation warnings", "file uploads", "CORS settings",
]
QUALIFIERS = [
    "", "", "", "", " when the field is optional", " for nested models", " in strict mode",
    " on Windows", " with `from __future__ import annotations`", " in the docs",
    " for generic types", " with custom types", " in the CLI", " when validation fails",
    " for async endpoints", " in error messages", " under Python 3.12",
]
PACKAGES = [
    "pytest", "mypy", "ruff", "black", "coverage", "hypothesis", "mkdocs-material", "starlette",
    "uvicorn", "httpx", "anyio", "typing-extensions", "pre-commit", "email-validator", "isort",
    "actions/checkout", "actions/setup-python", "codecov/codecov-action", "sqlalchemy", "orjson",
]


def _version(rng: random.Random) -> str:
    return f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 12)}"


def _subject(rng: random.Random, prefix: str) -> str:
    verb = rng.choice(VERBS[prefix])
    roll = rng.random()
    if roll < 0.45:
        target = f"`{rng.choice(IDENTIFIERS)}`"
        if rng.random() < 0.3:
            target += f" and `{rng.choice(IDENTIFIERS)}`"
    elif roll < 0.85:
        target = rng.choice(OBJECTS)
    else:
        target = f"`{rng.choice(IDENTIFIERS)}` {rng.choice(['support', 'handling', 'docs', 'tests'])}"
    return f"{verb} {target}{rng.choice(QUALIFIERS)}"


def pr_title(rng: random.Random, number: int) -> str:
    """One title, e.g. "fix(parser): handle `Field` in strict mode (#1234)"."""
    roll = rng.random()
    if roll < 0.12:
        pkg = rng.choice(PACKAGES)
        old = _version(rng)
        new = _version(rng)
        title = f"Bump {pkg} from {old} to {new}"
    elif roll < 0.20:
        subject = _subject(rng, rng.choice(["fix", "feat", "docs"]))
        title = subject[0].upper() + subject[1:]
    else:
        prefix = rng.choices(PREFIXES, PREFIX_WEIGHTS)[0]
        scope = f"({rng.choice(COMPONENTS)})" if rng.random() < 0.6 else ""
        breaking = "!" if prefix == "feat" and rng.random() < 0.03 else ""
        title = f"{prefix}{scope}{breaking}: {_subject(rng, prefix)}"
    if rng.random() < 0.1:
        title += f", closes #{rng.randint(1, number)}"
    return f"{title} (#{number})"


def generate(n_bytes: int = 300_000, seed: int = 0) -> str:
    """About n_bytes of titles, one per line, numbered upwards as a real repository's would be."""
    rng = random.Random(seed)
    lines, size, number = [], 0, 100
    while size < n_bytes:
        number += rng.randint(1, 4)
        line = pr_title(rng, number)
        lines.append(line)
        size += len(line.encode("utf-8")) + 1
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(generate(2_000), end="")
