"""Running the `metarl` command in-process in tests: its exit code, stdout and stderr."""

from __future__ import annotations

from train.cli import main


def cli(args, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    """The only non-empty line of ``err``, asserting there is exactly one and no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
