"""The documentation stays true to the code (issue 32): the README is short and in short paragraphs; docs/cli.md
lists every config key the code accepts with the code's default, every config file and every benchmark; no
comment, config or page cites a file of the repository that is not there, or a section of a page that is not
there. Each check is a function run on the real files and, once, on a broken input it must reject."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import typing
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CLI_MD = ROOT / "docs" / "cli.md"

README_LINES = 200
PARAGRAPH_WORDS = 100


# ------------------------------------------------------------------------------------------------
# the README: short, in short paragraphs


def paragraphs(text: str) -> list[str]:
    """The prose paragraphs of a Markdown text: runs of non-blank lines outside code fences and tables; each
    list item and each heading counts alone."""
    out: list[list[str]] = []
    fenced = False
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            current = []
            continue
        if fenced or not line.strip() or line.startswith("|"):
            current = []
            continue
        if line.startswith(("#", "- ", "* ")) or re.match(r"\d+\. ", line) or not current:
            current = [line]
            out.append(current)
        else:
            current.append(line)
    return [" ".join(p) for p in out]


def long_paragraphs(text: str, limit: int = PARAGRAPH_WORDS) -> list[tuple[int, str]]:
    """(words, opening) of each paragraph over ``limit`` words."""
    return [(len(p.split()), p[:60]) for p in paragraphs(text) if len(p.split()) > limit]


def test_readme_is_at_most_200_lines_in_paragraphs_of_at_most_100_words():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_LINES
    assert long_paragraphs(text) == []
    assert len(paragraphs(text)) > 10                       # the parser sees the README's prose


def test_a_long_paragraph_is_found():
    words = " ".join(["word"] * 101)
    text = f"# title\n\nshort one\n\n{words[:200]}\n{words[200:]}\n\n```\n{words}\n```\n\n| {words} |\n- {words}\n"
    found = long_paragraphs(text)
    assert [n for n, _ in found] == [101, 102]              # the split paragraph and the list item; not code, table


# ------------------------------------------------------------------------------------------------
# docs/cli.md: every key with its default, every config file, every benchmark


def code_keys() -> dict[str, object]:
    """Every dotted config key the code accepts, with its default: train/config.py's sections, each task family's
    section and each method's own section."""
    from metarl.registry import METHODS, method_config_class
    from train.config import Config
    from train.tasks import TASKS, task_config_class

    def walk(cls: type, prefix: str):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in ("task_config", "method_config"):
                continue
            if dataclasses.is_dataclass(hints[f.name]):
                yield from walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                yield f"{prefix}{f.name}", list(default) if isinstance(default, tuple) else default

    keys = dict(walk(Config, ""))
    for task in TASKS:
        keys.update(walk(task_config_class(task), f"{task}."))
    for method in METHODS:
        if method_config_class(method) is not None:
            keys.update(walk(method_config_class(method), f"{method}."))
    return keys


def documented_keys(text: str) -> dict[str, str]:
    """{key: its default as written} from the rows ``| `key` | `default` | meaning |`` of cli.md."""
    return dict(re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", text, re.M))


def key_mismatches(keys: dict[str, object], documented: dict[str, str]) -> list[str]:
    """What the page gets wrong: a key it lacks, a key the code does not have, a default that differs."""
    out = [f"missing {k}" for k in keys if k not in documented]
    out += [f"no such key {k}" for k in documented if k not in keys]
    for k, written in documented.items():
        if k in keys:
            value = yaml.safe_load(written.replace("π", repr(math.pi)))
            if value != keys[k] or type(value) is not type(keys[k]) and keys[k] is not None:
                out.append(f"{k}: written {written}, the code's {keys[k]!r}")
    return out


def test_cli_md_lists_every_config_key_with_the_codes_default():
    keys = code_keys()
    assert len(keys) > 150
    assert key_mismatches(keys, documented_keys(CLI_MD.read_text())) == []


def test_a_missing_key_and_a_wrong_default_are_found():
    keys = {"meta.steps": 100, "leap.eps": 1e-9, "sine.phase": [0.0, math.pi], "omniglot.seed": None}
    good = "| `meta.steps` | `100` | x |\n| `leap.eps` | `1.0e-09` | x |\n| `sine.phase` | `[0.0, π]` | x |\n" \
           "| `omniglot.seed` | `null` | x |\n"
    assert key_mismatches(keys, documented_keys(good)) == []
    bad = good.replace("`100`", "`10`").replace("| `omniglot.seed` | `null` | x |\n", "| `meta.stesp` | `1` | x |\n")
    assert key_mismatches(keys, documented_keys(bad)) == [
        "missing omniglot.seed", "no such key meta.stesp", "meta.steps: written 10, the code's 100"]
    assert key_mismatches({"leap.p": 1}, documented_keys("| `leap.p` | `1.0` | x |")) != []      # an int, not a float


def test_cli_md_names_every_config_file_benchmark_and_command(capsys):
    from cli_helpers import cli
    from train.benchmarks import BENCHMARKS
    text = CLI_MD.read_text()
    patterns = [re.escape(a) + r"[a-z_]+" + re.escape(b) for a, b in re.findall(r"`(\w+_)<method>(\.yaml)`", text)]
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        assert f"`{path.name}`" in text or any(re.fullmatch(p, path.name) for p in patterns), path.name
    for name in BENCHMARKS:
        assert f"`{name}`" in text, name
    code, usage, _ = cli(["--help"], capsys)
    commands = re.search(r"\{([\w,-]+)\}", usage).group(1).split(",")      # usage: metarl ... {train,eval,...}
    assert code == 0 and "train" in commands
    for name in commands:
        assert f"`metarl {name} " in text, name


# ------------------------------------------------------------------------------------------------
# cited files and sections exist

CITED = re.compile(r"(?<![\w./-])((?:docs|configs|scripts|train|tests|metarl|agents|envs|examples)/[\w./-]*"
                   r"\.(?:md|yaml|py|sh|png|json))(?![\w{<*$])")
LINK = re.compile(r"\]\(([^)\s]+)\)")
PLACEHOLDERS = {"configs/NAME.yaml",                    # train/cli.py's usage line
                "configs/does_not_exist.yaml"}          # tests/test_cli_errors.py: a missing file on purpose


def anchors(markdown: str) -> set[str]:
    """The section anchors GitHub makes for a page's headings (outside code fences)."""
    out, fenced = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#+ (.+)", line)):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def broken_citations(path: Path, text: str, root: Path = ROOT) -> list[str]:
    """Repository paths ``text`` (the file ``path``) cites that do not exist (relative to the repository or to
    the file's folder), and Markdown links to a missing file or to a section its page does not have."""
    out = []
    for p in CITED.findall(text):
        if p not in PLACEHOLDERS and not (root / p).exists() and not (path.parent / p).exists():
            out.append(p)
    if path.suffix == ".md":
        for target in LINK.findall(text):
            if re.match(r"\w+:", target):
                continue                                   # a web address
            file, _, anchor = target.partition("#")
            page = (path.parent / file) if file else path
            if not page.exists():
                out.append(target)
            elif anchor and page.suffix == ".md" and anchor not in anchors(page.read_text()):
                out.append(target)
    return out


def repository_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py", "*.md",
                             "*.yaml", "*.sh", "*.toml", "Makefile"], cwd=ROOT, capture_output=True, text=True)
    return [ROOT / f for f in listed.stdout.split() if (ROOT / f).is_file()]


def test_no_file_cites_a_missing_file_or_section():
    files = repository_files()
    assert len(files) > 100
    broken = {str(f.relative_to(ROOT)): b for f in files if (b := broken_citations(f, f.read_text()))}
    assert broken == {}


def test_a_missing_file_or_section_is_found(tmp_path):
    d = "docs"                                              # not a citation of this file's own
    (tmp_path / d).mkdir()
    (tmp_path / d / "page.md").write_text("# Page\n\n## Two words\n\n```\n# not a heading\n```\n")
    text = (f"see {d}/page.md and {d}/gone.md, configs/*.yaml, [a](page.md#two-words), [b](page.md#not-a-heading), "
            "[c](gone.md), [d](https://example.org/x.md)")
    assert broken_citations(tmp_path / d / "x.md", text, tmp_path) == [
        f"{d}/gone.md", "page.md#not-a-heading", "gone.md"]


def test_design_md_is_cited_only_by_the_history():
    name = "DESIGN" + ".md"                                 # a file the repository never had (issue 32)
    assert {str(f.relative_to(ROOT)) for f in repository_files() if name in f.read_text()} <= {"docs/history.md"}
