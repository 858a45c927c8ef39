"""Readers for the container files, just enough to check them against the code: the Dockerfile's
instructions by stage, `.dockerignore` patterns, the hash-locked requirement files and the compose file."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
LOCKS = ROOT / "requirements"
DIGEST_PINNED = re.compile(r"[a-z0-9][a-z0-9./-]*:[\w.-]+@sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # continuation lines joined, comment lines dropped
    line: int  # 1-based line of the keyword


@dataclass(frozen=True)
class Stage:
    name: str
    base: str  # the FROM image with global ARG defaults substituted, or an earlier stage's name
    body: tuple[Instruction, ...]  # the instructions after FROM, up to the next FROM


@dataclass(frozen=True)
class Dockerfile:
    global_args: dict[str, str]
    stages: tuple[Stage, ...]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile `text` as instructions: `\\` continuations joined, comment lines (and parser directives)
    dropped, as Docker reads them."""
    found: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not parts:
            start = number
        parts.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            keyword, _, args = " ".join(parts).partition(" ")
            found.append(Instruction(keyword.upper(), args.strip(), start))
            parts = []
    return found


def _substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def read_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    """The stages of the Dockerfile at `path`; an unnamed stage is named by its index, as Docker does."""
    global_args: dict[str, str] = {}
    stages: list[tuple[str, str, list[Instruction]]] = []
    for ins in instructions(path.read_text()):
        if ins.keyword == "FROM":
            words = ins.args.split()
            image = _substitute(next(w for w in words if not w.startswith("--")), global_args)
            name = words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else str(len(stages))
            stages.append((name, image, []))
        elif stages:
            stages[-1][2].append(ins)
        elif ins.keyword == "ARG":
            key, _, default = ins.args.partition("=")
            global_args[key.strip()] = default.strip()
    return Dockerfile(global_args, tuple(Stage(n, b, tuple(body)) for n, b, body in stages))


def pip_installs(run_args: str) -> list[list[str]]:
    """Each `pip install` command of a RUN instruction, as the words after `install`."""
    lexer = shlex.shlex(run_args, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [words[words.index("install") + 1:] for words in commands
            if len(words) >= 2 and words[0].endswith("pip") and "install" in words]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # Go's filepath.Match, which .dockerignore uses: `*` and `?` stop at `/`; `**` crosses directories.
    out = ""
    for token in re.split(r"(\*\*/?|\*|\?)", pattern):
        out += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(out)


def dockerignored(path: str, ignore_file: Path = ROOT / ".dockerignore") -> bool:
    """Whether `path` (relative to the build context) is left out of it: the last pattern that matches the
    path or one of its parent directories decides, `!` patterns letting it back in."""
    prefixes = ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 2)]
    ignored = False
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        regex = _pattern_regex(line.removeprefix("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not line.startswith("!")
    return ignored


@dataclass(frozen=True)
class Pin:
    name: str  # normalised (PEP 503)
    version: str
    hashes: tuple[str, ...]
    via: tuple[str, ...]  # uv's annotations: who asked for it (a package, or `graph-distill (pyproject.toml)`)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _via(block: str) -> tuple[str, ...]:
    comments = [line.strip() for line in block.splitlines() if line.strip().startswith("#")]
    if not comments or not comments[0].startswith("# via"):
        return ()
    inline = comments[0].removeprefix("# via").strip()
    return (inline,) if inline else tuple(c.removeprefix("#").strip() for c in comments[1:])


def read_lock(path: Path) -> dict[str, Pin]:
    """The pins of a `uv pip compile --generate-hashes` output, by normalised name."""
    pins: dict[str, Pin] = {}
    for block in re.split(r"\n(?=\S)", path.read_text()):
        head = re.match(r"([A-Za-z0-9][\w.-]*)==(\S+)", block)
        if head is not None:
            name = normalise(head.group(1))
            hashes = tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
            pins[name] = Pin(name, head.group(2), hashes, _via(block))
    return pins


def read_pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def read_compose(path: Path = COMPOSE) -> dict[str, Any]:
    with path.open() as f:
        data: dict[str, Any] = yaml.safe_load(f)
    return data
