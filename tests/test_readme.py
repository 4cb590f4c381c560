"""Every command the README shows works as shown (the issue "every command in the README is checked").

README.md is read at test time. Each `python -m trainer...` line of its shell blocks (```bash, sh, shell,
console, or a bare block of `$ ` lines; torchrun's lines too) is a test named by the line, run in this
process in a tmp dir holding the files the line names (FIXTURES: small corpora, a tiny real run and sweep
copied to the run dirs it names):
- `python -m trainer ...`: with plan=true added (composes, validates, reads the corpus, sizes the model,
  trains nothing); where plan does not apply (resume=auto, an Optuna search) and for the lines listed in
  COMPOSED_ONLY, `--cfg job` for each job of the line, and config.validate on the config it printed;
  resume=<a run or sweep dir> for real; a line that already says plan=true, --cfg or --help as written;
- trainer.compare, evaluate, generate, prepare, tokenizer, export: for real, on the tiny run and sweep;
- each `$ command` shown with the `error: ...` it prints: that exact stderr (`...` matches anything), exit 2.
A line none of these can check fails unless listed, with why, in COMPOSED_ONLY, SLOW or NOT_RUN; a listed
line gone from the README fails too, and so does a KNOWN_BROKEN line that now works (a strict xfail).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import importlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
from helpers import REPO, TINY, Result, call_main, trainer_env
from omegaconf import OmegaConf

from trainer.config import validate

# README_UNDER_TEST=path/to/draft.md checks a draft instead (its paths are the tmp dir's all the same).
README = Path(os.environ.get("README_UNDER_TEST") or REPO / "README.md")

# ----------------------------------------------------------------------------- what the test cannot run
# Each table: {a README line exactly, or a regex found in it: why}. A key that matches no line fails
# test_every_listed_line_is_still_in_the_readme, so that the lists cannot rot.

# Lines that need what a test cannot have. Each is still composed: `--cfg job` for each of its jobs, and
# config.validate on what that printed (device=cuda composes on a CPU; torchrun's lines: the trainer's part).
COMPOSED_ONLY: dict[str, str] = {
    r"device=cuda": "needs a CUDA GPU",
    r"^torchrun --standalone --nproc_per_node=(4|gpu) ": "needs several GPUs (torchrun's ranks)",
    r"hydra/launcher=(slurm|submitit_slurm)": "submits its jobs to a SLURM cluster (sbatch)",
    r"data=hf data_path=(roneneldan/TinyStories|HuggingFaceFW/fineweb)": "streams a dataset from the Hugging Face hub",
}
# Lines too slow for the default tier: composed there (as above), run for real in the slow tier (`-m slow`).
SLOW: dict[str, str] = {
    r"resume=outputs/\S+ max_iters=2000": "trains the tiny run 1,980 steps further",
}
# Lines not run at all, not even composed: {line or regex: why not}.
NOT_RUN: dict[str, str] = {}
# README lines that do not work (a mistake in the README, or in the trainer): they are run, and reported as
# expected failures; strict: once the line works, its entry must go. {line or regex: what is wrong}.
KNOWN_BROKEN: dict[str, str] = {}

# Placeholders a README line may hold in a shell block, and what the test puts in their place.
PLACEHOLDERS = {"<run dir>": "RUN", "<sweep dir>": "outputs/multirun/2000-01-01/00-00-00", "<out dir>": "out"}


# ----------------------------------------------------------------------------- the README's commands

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\s`]*)")
SHELLS = {"bash", "sh", "shell", "console"}
PROMPT = "$ "
TRAINER = re.compile(r"trainer(\.\w+)*")
PYTHON = re.compile(r"(\S*/)?python[\d.]*")


@dataclass
class Command:
    """One command of a README line, as the shell would run it."""

    text: str  # as the README shows it: continuation lines joined, the comment dropped
    lines: list[int]  # where it is in the README (each place it is shown)
    output: list[str]  # what a `$ ` block shows it printing
    words: list[str] = field(default_factory=list)
    problem: str = ""  # why the line cannot be run as written (an unbalanced quote, a placeholder, ...)

    @property
    def where(self) -> str:
        return ", ".join(f"{README.name}:{n}" for n in self.lines)

    @functools.cached_property
    def _split(self) -> tuple[dict[str, str], list[str], str, list[str]]:
        """Its environment assignments, what launches the module (python, torchrun), the module, its args."""
        words = list(self.words)
        env = {}
        while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        at = next(i for i in range(len(words) - 1) if words[i] == "-m" and TRAINER.fullmatch(words[i + 1]))
        return env, words[:at], words[at + 1], words[at + 2:]

    @property
    def env(self) -> dict[str, str]:
        return self._split[0]

    @property
    def launcher(self) -> list[str]:
        return self._split[1]

    @property
    def module(self) -> str:
        return self._split[2]

    @property
    def args(self) -> list[str]:
        return self._split[3]

    @property
    def by_python(self) -> bool:
        """`python -m trainer...` itself (not torchrun, srun, ...)."""
        launcher = self.launcher
        return bool(launcher) and bool(PYTHON.fullmatch(launcher[0])) and all(w.startswith("-") for w in launcher[1:])

    @property
    def errors(self) -> list[str]:
        """The `error: ...` lines the README shows it printing, if that is what it shows."""
        return self.output if self.output and self.output[0].startswith("error:") else []


def shell_blocks(text: str) -> Iterator[tuple[bool, list[tuple[int, str]]]]:
    """Each shell block's lines (numbered, dedented to the fence), and whether they are `$ ` prompts."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = len(m["indent"]), m["fence"], m["info"].lower()
        closing = re.compile(rf"[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body = []
        i += 1
        while i < len(lines) and not closing.match(lines[i]):
            line = lines[i]
            body.append((i + 1, line[indent:] if not line[:indent].strip() else line.lstrip()))
            i += 1
        i += 1
        prompts = any(line.startswith(PROMPT) for _, line in body)
        if info in SHELLS or (not info and prompts):
            yield prompts, body


def logical_lines(prompts: bool, body: list[tuple[int, str]]) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, is a command) with backslash continuations joined; in a `$ ` block the
    command lines lose their prompt and the others are output."""
    pending: Optional[tuple[int, str]] = None
    for n, line in body:
        if pending is not None:
            start, text = pending
            text = f"{text} {line.strip()}"
        elif prompts and not line.startswith(PROMPT):
            yield n, line, False
            continue
        else:
            start, text = n, line.removeprefix(PROMPT) if prompts else line
        if text.rstrip().endswith("\\"):
            pending = (start, text.rstrip()[:-1].rstrip())
            continue
        pending = None
        yield start, text, True
    if pending is not None:
        yield pending[0], pending[1], True


def split_commands(line: str) -> list[str]:
    """A shell line's commands: a trailing `# comment` dropped, split at &&, ||, ; and |, outside quotes."""
    parts, current, quote, i = [], "", "", 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\" and quote == '"' and i + 1 < len(line):
                c += line[i + 1]
                i += 1
            elif c == quote:
                quote = ""
        elif c == "\\" and i + 1 < len(line):
            c += line[i + 1]
            i += 1
        elif c in "'\"":
            quote = c
        elif c == "#" and (not current or current[-1].isspace()):
            break
        elif c in ";|" or line.startswith("&&", i):
            i += 1 + line.startswith(("&&", "||"), i)
            parts.append(current)
            current = ""
            continue
        current += c
        i += 1
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def readme_commands(text: str) -> list[Command]:
    """Every trainer command of the README's shell blocks, each shown command once (with all its places)."""
    shown: list[Command] = []
    for prompts, body in shell_blocks(text):
        last: list[Command] = []  # the command(s) of the latest `$ ` line: what output lines belong to
        for n, line, is_command in logical_lines(prompts, body):
            if not is_command:
                for c in last:
                    c.output.append(line.rstrip())
                continue
            last = [Command(part, [n], []) for part in split_commands(line)
                    if re.search(rf"(^|\s)-m\s+{TRAINER.pattern}(\s|$)", part)]
            shown += last
    found: dict[tuple[str, tuple[str, ...]], Command] = {}
    for c in shown:
        while c.output and not c.output[-1].strip():
            c.output.pop()
        key = (c.text, tuple(c.output))
        if key in found:
            found[key].lines += c.lines
        else:
            found[key] = c
            c.words, c.problem = words_of(c.text)
    return list(found.values())


def words_of(text: str) -> tuple[list[str], str]:
    """The line's words as the shell passes them (placeholders filled in), or why it cannot be run as written."""
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    try:
        words = shlex.split(text)
    except ValueError as e:
        return [], f"the shell cannot parse it ({e})"
    c = Command(text, [], [], words)
    if not any(words[i] == "-m" and TRAINER.fullmatch(words[i + 1]) for i in range(len(words) - 1)):
        return [], "no `-m trainer...` word once the shell has split it"
    placeholder = re.search(r"<\w[\w .-]*>", text[re.search(rf"-m\s+{TRAINER.pattern}", text).end():])
    variable = next((w for w in [*c.env.values(), *c.args] if re.search(r"\$\w|\$[{(]|`", w)), None)
    if placeholder or variable:
        return words, (f"{placeholder[0] if placeholder else variable!r} is a placeholder or shell variable the "
                       "test cannot fill in (add it to PLACEHOLDERS, or list the line in NOT_RUN)")
    return words, ""


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- fixtures: what the lines name
# The paths the commands name, each made by the first entry of FIXTURES whose regex matches it whole (a glob
# gets two files that match it; `~/...` lies under the tmp dir's .home/, an absolute path under .abs/).
# A new README path: one entry here, its regex and a maker(workspace, path); None: it must not exist.


def prose(n_bytes: int, seed: int = 0) -> str:
    """Sentences of made-up words (a few thousand, Zipf-like): enough text for a BPE of 4,096 tokens."""
    import random

    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "é")]
    words = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(6000)})
    weights = [1 / (i + 1) ** 0.5 for i in range(len(words))]
    lines, size = [], 0
    while size < n_bytes:
        line = " ".join(rng.choices(words, weights, k=rng.randint(4, 14))).capitalize() + rng.choice(".!?") + "\n"
        lines.append(line)
        size += len(line.encode())
    return "".join(lines)


@functools.cache
def titles(n: int = 400) -> list[str]:
    """The default (synthetic) corpus's first titles: every token of them is in the fixture run's vocabulary."""
    from trainer.synthetic import generate

    return generate().splitlines()[:n]


def write(path: Path, content: str | bytes) -> None:
    """A file (gzipped when its name ends in .gz), its dirs made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def text_file(ws: Workspace, path: Path) -> None:
    write(path, prose(200_000))


def csv_file(ws: Workspace, path: Path) -> None:
    """repo,pr,title rows, like scripts/build_pr_titles_csv.py's."""
    out = io.StringIO()
    rows = csv.writer(out, lineterminator="\n")
    rows.writerow(["repo", "pr", "title"])
    rows.writerows(["octo/widgets", 100 + i, title] for i, title in enumerate(titles()))
    write(path, out.getvalue())


def jsonl_file(ws: Workspace, path: Path) -> None:
    write(path, "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(titles())))


def bad_jsonl(ws: Workspace, path: Path) -> None:
    """Its line 3 is not JSON."""
    good = [json.dumps({"text": t}) for t in titles(4)]
    write(path, "\n".join([*good[:2], "not json", *good[2:]]) + "\n")


def parquet_file(ws: Workspace, path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet

    path.parent.mkdir(parents=True, exist_ok=True)
    pyarrow.parquet.write_table(pa.table({"text": titles()}), str(path))


def corpus_with_a_binary(ws: Workspace, path: Path) -> None:
    """A dir of text files with a PNG among them (the "not UTF-8 text" example)."""
    write(path / "notes.txt", prose(20_000))
    write(path / "logo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)))


def code_dir(ws: Workspace, path: Path) -> None:
    """A directory of code (a project checkout)."""
    write(path / "README.md", "# myproject\n\nSmall tools.\n")
    for i in range(40):
        write(path / "src" / f"mod{i}.py", "".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}  # {t}\n\n\n"
                                                   for j, t in enumerate(titles(20))))


def hf_dataset(ws: Workspace, path: Path) -> None:
    """A Hugging Face dataset saved with save_to_disk."""
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": titles()}).save_to_disk(str(path))


def a_tokenizer(ws: Workspace, path: Path) -> None:
    """DIR/tokenizer.json: a byte-level BPE trained by trainer.tokenizer on the fixture text."""
    import trainer.tokenizer

    text = ws.root / ".fixtures" / "tokenizer-corpus.txt"
    write(text, prose(50_000, seed=1))
    made(call_main(trainer.tokenizer.main, "data=text", f"data_path={text}", "vocab_size=512",
                   f"out={path.parent}", cwd=ws.root), path)


def a_gpt2_dir(ws: Workspace, path: Path) -> None:
    """A transformers GPT-2 dir (config.json, model.safetensors, a tokenizer): tiny and random."""
    transformers = pytest.importorskip("transformers")
    import torch

    a_tokenizer(ws, path / "tokenizer.json")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=512,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(path)


def a_run(ws: Workspace, path: Path) -> None:
    """The tiny run (a run dir named by its checkpoint: the dir)."""
    copy(ws.run, path.parent if path.suffix == ".ckpt" else path)


def a_sweep(ws: Workspace, path: Path) -> None:
    """The tiny sweep (named by a job's dir: the sweep's)."""
    copy(ws.sweep, path.parent if path.name.isdigit() else path)


def some_runs(ws: Workspace, path: Path) -> None:
    """A dir of runs: the tiny run in it, unless runs are there already."""
    if not any(path.glob("**/.hydra")):
        copy(ws.run, path / "2000-01-01" / "00-00-00")


def made(result: Result, path: Path) -> None:
    assert result.returncode == 0, f"making the fixture {path}: {result.stderr}"


def copy(src: Path, dst: Path) -> None:
    if not dst.exists():
        shutil.copytree(src, dst, symlinks=True)


DATE_TIME = r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d(_\d+)?"
FIXTURES: list[tuple[str, Optional[Callable[[Workspace, Path], None]]]] = [
    (r"missing\.\w+", None),  # "file not found"
    (r"bad\.jsonl", bad_jsonl),
    (r"corpus", corpus_with_a_binary),
    (rf"outputs/multirun/{DATE_TIME}(/\d+)?/?", a_sweep),
    (rf"outputs/{DATE_TIME}(/(model|best)\.ckpt)?/?", a_run),
    (r"RUN", a_run),
    (r"outputs/?", some_runs),
    (r"models/[\w.-]+", a_gpt2_dir),  # init_from=
    (r"(.+/)?tokenizer\.json", a_tokenizer),  # encoding=hf:
    (r"tinystories", hf_dataset),
    (r"~/src/[\w.-]+", code_dir),
    (r".+\.jsonl(\.gz)?", jsonl_file),
    (r".+\.csv(\.gz)?", csv_file),
    (r".+\.parquet", parquet_file),
    (r".+\.(txt|md)(\.gz)?", text_file),
]
ALWAYS_MADE = ["data/github_pr_titles.csv"]  # data=github_pr_titles's default data_path


def key_value(word: str) -> tuple[str, str]:
    """`key=value` split (a Hydra override's key may start with + or ~), else ("", word)."""
    m = re.fullmatch(r"([+~]*[\w./@-]+)=(.*)", word, re.S)
    return (m[1], m[2]) if m else ("", word)


def path_candidates(args: list[str]) -> Iterator[str]:
    """Every word and override value of the args that might be a path (a sweep's values one by one)."""
    for word in args:
        _, value = key_value(word)
        for v in {value, *value.split(",")}:
            yield v.removeprefix("hf:")  # encoding=hf:<tokenizer.json>


def located(root: Path, path: str) -> Path:
    """Where a path the README names lies in the tmp dir: ~ under .home/, an absolute path under .abs/."""
    if path == "~" or path.startswith("~/"):
        return root / ".home" / path[2:]
    if path.startswith("/"):
        return root / ".abs" / path.lstrip("/")
    return root / path


def as_the_shell_passes_it(word: str, root: Path) -> str:
    """The word with `~` expanded as bash does (at its start, or after `identifier=`) and an absolute path
    moved under the tmp dir, both to where `located` put them."""
    key, value = key_value(word)
    tilde = (value == "~" or value.startswith("~/")) and (not key or re.fullmatch(r"[A-Za-z_]\w*", key))
    if tilde or value.startswith("/"):
        value = str(located(root, value))
    return f"{key}={value}" if key else value


def concrete(path: str) -> list[str]:
    """Files a glob matches (two), or the path itself."""
    if not re.search(r"[*?\[]", path):
        return [path]
    return [re.sub(r"\?", "x", path.replace("**/", f"d{i}/").replace("**", f"d{i}").replace("*", f"f{i}"))
            for i in range(2)]


def fixture_for(path: str) -> tuple[Optional[str], Optional[Callable]]:
    for pattern, maker in FIXTURES:
        if re.fullmatch(pattern, path):
            return pattern, maker
    return None, None


class Workspace:
    """The tmp dir the README's lines run in, with every file they name; the tiny run and sweep trained
    (once, when a line names a run dir) beside it."""

    def __init__(self, root: Path, made: Path, cache_dir: Path, unmade: Optional[dict[str, str]] = None):
        self.root, self.made, self.cache_dir = root, made, cache_dir
        self.unmade = unmade if unmade is not None else {}  # path: why not (a package this install lacks)

    @functools.cached_property
    def run(self) -> Path:
        """A tiny run with GPT-2's architecture (so that trainer.export --to hf takes it)."""
        run = self.made / "run"
        with users_env(self.cache_dir):
            made(call_main(cli_main(), "model=gpt2", *TINY, f"hydra.run.dir={run}", cwd=self.made), run)
        return run

    @functools.cached_property
    def sweep(self) -> Path:
        """A tiny sweep of two jobs."""
        sweep = self.made / "sweep"
        with users_env(self.cache_dir):
            made(call_main(cli_main(), "-m", "learning_rate=1e-3,3e-3", "model=gpt2", *TINY,
                           f"hydra.sweep.dir={sweep}", cwd=self.made), sweep)
        return sweep

    def make(self, commands: list[Command]) -> None:
        for c in commands:
            if c.words:
                for word in path_candidates(c.args):
                    self.make_path(word)
        for path in ALWAYS_MADE:
            self.make_path(path)

    def make_path(self, word: str) -> None:
        for path in concrete(word):
            _, maker = fixture_for(path)
            target = located(self.root, path)
            if maker is not None and not target.exists():
                try:
                    maker(self, target)
                except pytest.skip.Exception as e:  # a package this install lacks: skip the lines that need it
                    self.unmade[word] = str(e)

    def listing(self) -> list[tuple[str, int, int]]:
        """Every path in it, a file's with its size and mtime: what a line that writes nothing leaves as it was
        (a run dir made and removed again when the line failed leaves its parent's mtime changed: not counted)."""
        out = []
        for p in sorted(self.root.rglob("*")):
            st = p.lstat()
            out.append((str(p.relative_to(self.root)), *((st.st_size, st.st_mtime_ns) if p.is_file() else (0, 0))))
        return out


# ----------------------------------------------------------------------------- running a line

# No network, no W&B account, no Hydra or torchrun settings from outside; the session's token cache.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "WANDB_SILENT": "true"}
# A known (slow) peak: plan=true then estimates each job from its FLOPs instead of timing real steps (the
# same composing, checking and sizing, in a fraction of the time), and a run skips measuring the CPU's peak.
PEAK = {"TRAINER_PEAK_FLOPS": "1e6"}


@contextlib.contextmanager
def users_env(cache_dir: Path, extra: Optional[dict[str, str]] = None) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith(("WANDB_", "HYDRA_")) or key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
                mp.delenv(key)
        for key, value in {**OFFLINE, **PEAK, "TRAINER_CACHE_DIR": str(cache_dir), **(extra or {})}.items():
            mp.setenv(key, value)
        yield


def cli_main() -> Callable[[], None]:
    from trainer.cli import main

    return main


def main_of(c: Command) -> Callable[[], None]:
    """What `python -m <the line's module>` runs."""
    if c.module == "trainer":
        return cli_main()
    try:
        main = importlib.import_module(c.module).main
    except (ImportError, AttributeError) as e:
        raise AssertionError(f"{c.where}: `{c.text}`: {c.module} has no main() ({e})") from None
    return main


def run(c: Command, args: list[str], cwd: Path, cache_dir: Path, extra_env: Optional[dict[str, str]] = None) -> Result:
    """The line's module with these args, in this process, as the shell would start it in cwd."""
    args = [as_the_shell_passes_it(a, cwd) for a in args]
    with users_env(cache_dir, {**c.env, **(extra_env or {})}):
        return call_main(main_of(c), *args, cwd=cwd)


def launched(c: Command, cwd: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    """A torchrun line, in child processes (torchrun as `python -m torch.distributed.run`)."""
    launcher = c.launcher
    if launcher[0] == "torchrun":
        launcher = [sys.executable, "-m", "torch.distributed.run", *launcher[1:]]
    elif PYTHON.fullmatch(launcher[0]):
        launcher = [sys.executable, *launcher[1:]]
    args = [as_the_shell_passes_it(a, cwd) for a in c.args]
    env = {**trainer_env(cache_dir), **OFFLINE, **PEAK, **c.env}
    return subprocess.run([*launcher, "-m", c.module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def jobs_of(args: list[str]) -> list[list[str]]:
    """Each job's overrides, as the basic sweeper expands the line's sweeps (an Optuna interval at its low
    end); a single run's, unchanged."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if not a.startswith("-")]
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    if not any(o.is_sweep_override() for o in parsed):
        return [overrides]
    fixed = [f"{o.get_key_element()}={o.value().start}" if o.is_interval_sweep() else o.input_line for o in parsed]
    (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(fixed), None)
    return batch


# ----------------------------------------------------------------------------- how each line is checked

PLAN, COMPOSE, AS_WRITTEN = "plan=true", "--cfg job", "as written"
NO_RUN_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}
NON_BASIC_SWEEPER = ("hparams_search", "hydra/sweeper")


def matches(pattern: str, text: str) -> bool:
    if pattern == text:
        return True
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return False


def listed(table: dict[str, str], c: Command) -> Optional[str]:
    """Why the table lists the line, if it does."""
    return next((why for pattern, why in table.items() if matches(pattern, c.text)), None)


def how(c: Command, slow: bool = False) -> tuple[str, str]:
    """How the line is checked (in the slow tier: a SLOW line), and why not otherwise; ("", why) when it cannot be."""
    if c.problem:
        return "", c.problem
    if slow:
        return AS_WRITTEN, f"slow: {listed(SLOW, c)}"
    why = listed(COMPOSED_ONLY, c) or (f"run for real in the slow tier: {listed(SLOW, c)}" if listed(SLOW, c) else "")
    if why:
        if c.module != "trainer":
            return "", f"{c.module} has no config to compose; list the line in NOT_RUN instead"
        return COMPOSE, why
    if not c.by_python:
        return "", (f"launched by {' '.join(c.launcher[:1])!r}, which no test here can run; list it in "
                    "COMPOSED_ONLY (the trainer's part is composed), SLOW (run for real) or NOT_RUN, with why")
    if c.module != "trainer":
        return AS_WRITTEN, "a real run, on the fixtures"
    keys = {key_value(a)[0].lstrip("+~") for a in c.args}
    if keys & {"plan", "prepare"} or any(a.split("=")[0] in NO_RUN_FLAGS for a in c.args):
        return AS_WRITTEN, ""
    if "resume" in keys:
        resume = next(key_value(a)[1] for a in c.args if key_value(a)[0].lstrip("+~") == "resume")
        if resume != "auto":
            return AS_WRITTEN, "a real resume, of the tiny run or sweep"
        return COMPOSE, "resume=auto needs a run trained with exactly this config"
    if keys & set(NON_BASIC_SWEEPER):
        return COMPOSE, "plan=true previews the basic sweeper's grid only"
    return PLAN, ""


def params(c: Command) -> list:
    """The line's test (its id: the line), and for a SLOW line its real run in the slow tier."""
    marks = []
    if why := listed(NOT_RUN, c):
        marks.append(pytest.mark.skip(reason=f"not run: {why}"))
    if why := listed(KNOWN_BROKEN, c):
        marks.append(pytest.mark.xfail(reason=f"KNOWN_BROKEN: {why}", strict=True))
    out = [pytest.param(c, False, marks=marks, id=c.text)]
    if listed(SLOW, c) and not c.errors:
        out.append(pytest.param(c, True, marks=[*marks, pytest.mark.slow], id=f"{c.text} (for real)"))
    return out


def workspace_listing_unchanged(ws: Workspace, before: list, c: Command) -> None:
    after = ws.listing()
    changed = sorted(set(after) ^ set(before))
    assert not changed, f"{c.where}: `{c.text}` wrote into the tmp dir: {changed[:5]}"


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, cache_dir) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("readme"), tmp_path_factory.mktemp("readme-runs"), cache_dir)
    ws.make(COMMANDS)
    return ws


@pytest.fixture
def own_workspace(workspace, tmp_path) -> Workspace:
    """A copy of the workspace, for a line that writes (a real run)."""
    root = tmp_path / "ws"
    shutil.copytree(workspace.root, root, symlinks=True)
    return Workspace(root, workspace.made, workspace.cache_dir, workspace.unmade)


COMMAND_PARAMS = [p for c in COMMANDS if not c.errors for p in params(c)]
ERROR_PARAMS = [pytest.param(c, marks=params(c)[0].marks, id=c.text) for c in COMMANDS if c.errors]


def test_the_readme_has_commands_to_check():
    assert COMMAND_PARAMS, f"no `python -m trainer...` line found in the shell blocks of {README}"


def skip_unmade(c: Command, ws: Workspace) -> None:
    for word in path_candidates(c.args):
        if word in ws.unmade:
            pytest.skip(f"{c.where}: `{c.text}`: cannot make {word}: {ws.unmade[word]}")


@pytest.mark.parametrize("c, slow", COMMAND_PARAMS)
def test_readme_command(c: Command, slow: bool, workspace, request):
    check, why = how(c, slow)
    assert check, f"{c.where}: `{c.text}` is not checked: {why}"
    skip_unmade(c, workspace)
    said = f"{c.where}: `{c.text}` ({check}{': ' + why if why else ''})"
    if check == PLAN:
        before = workspace.listing()
        r = run(c, [*c.args, "plan=true"], workspace.root, workspace.cache_dir)
        assert r.returncode == 0, f"{said}: exit code {r.returncode}\n{r.stderr}"
        assert r.stdout.startswith("Plan: "), f"{said}: no plan printed\n{r.stdout}"
        workspace_listing_unchanged(workspace, before, c)
    elif check == COMPOSE:
        before = workspace.listing()
        flags = [a for a in c.args if a.startswith("-") and a not in ("-m", "--multirun")]
        for job in jobs_of(c.args):
            r = run(c, [*flags, *job, "--cfg", "job"], workspace.root, workspace.cache_dir)
            assert r.returncode == 0, f"{said}: the job `{' '.join(job)}` does not compose\n{r.stderr}"
            try:
                validate(OmegaConf.create(r.stdout))
                wrong = ""
            except Exception as e:  # noqa: BLE001 - named in the failure
                wrong = f"{type(e).__name__}: {e}"
            assert not wrong, f"{said}: the job `{' '.join(job)}` composes to a config that fails its check: {wrong}"
        workspace_listing_unchanged(workspace, before, c)
    else:
        ws = request.getfixturevalue("own_workspace")
        if c.by_python:
            r = run(c, c.args, ws.root, ws.cache_dir)
        else:
            r = launched(c, ws.root, ws.cache_dir)
        assert r.returncode == 0, f"{said}: exit code {r.returncode}\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("c", ERROR_PARAMS)
def test_readme_error_example(c: Command, workspace):
    """The command prints the error the README shows it printing (`...` in it stands for anything), exit 2."""
    assert not c.problem, f"{c.where}: `{c.text}`: {c.problem}"
    assert c.by_python, f"{c.where}: `{c.text}`: an error example is run in this process: python -m ..., not a launcher"
    skip_unmade(c, workspace)
    before = workspace.listing()
    r = run(c, c.args, workspace.root, workspace.cache_dir)
    shown = "\n".join(c.errors)
    pattern = ".*".join(re.escape(part) for part in shown.split("..."))
    assert re.fullmatch(pattern, r.stderr.rstrip("\n"), re.S), (
        f"{c.where}: `{c.text}` prints\n{r.stderr}\nbut the README shows\n{shown}")
    assert r.returncode == 2, f"{c.where}: `{c.text}` exits with {r.returncode}, not 2"
    workspace_listing_unchanged(workspace, before, c)


def test_every_listed_line_is_still_in_the_readme():
    tables = {"COMPOSED_ONLY": COMPOSED_ONLY, "SLOW": SLOW, "NOT_RUN": NOT_RUN, "KNOWN_BROKEN": KNOWN_BROKEN}
    stale = [f"{name}[{pattern!r}]" for name, table in tables.items() for pattern in table
             if not any(matches(pattern, c.text) for c in COMMANDS)]
    assert not stale, f"listed, but no line of {README.name} matches (remove them): {', '.join(stale)}"

