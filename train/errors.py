"""User-input errors: the CLI prints their one-line message and exits with code 2 (no traceback)."""


class UserError(ValueError):
    """A problem in what the user gave us: config keys or types, paths, names, corrupt files."""


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class RunDirError(UserError):
    """The run directory cannot be used: in use by another run, not empty, not a writable folder, disk full."""


MAX_MESSAGE = 300


def error_line(prog: str, err: UserError) -> str:
    """The one line every entry point prints to stderr, before exit code 2, for a :class:`UserError`."""
    return f"{prog}: error: {clip(str(err), 1000)}"


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line and at most ``limit`` characters (error messages quote what the user gave)."""
    raw = str(text)
    text = " ".join(raw[:4 * limit].split())
    if len(text) <= limit and len(raw) <= 4 * limit:
        return text
    return text[:limit - 1] + "…"


def out_of_memory(e: BaseException) -> bool:
    """An allocation that failed: MemoryError (NumPy's included) or torch's allocator errors (CPU, CUDA)."""
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(s in text for s in (
        "can't allocate memory", "out of memory", "not enough memory", "Cannot allocate memory"))
