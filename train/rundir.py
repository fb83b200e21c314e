"""The run directory's guards: a usable folder, one run at a time (a lock), no fresh run over another
run's files, no resume of a finished run.

``metarl train`` (train/cli.py) applies them around ``train()``:

    run_dir = prepare_run_dir(run_dir, resume)       # a writable folder, created for a fresh run
    with RunLock(run_dir):                           # refused while another live process holds it
        check_fresh(run_dir)                         # fresh run: the folder must be empty
        check_resumable(run_dir, cfg, state)         # resume: not finished, meta.steps not below progress
        train(...)

All refusals are :class:`RunDirError` (one line, exit code 2) and happen before anything is written.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Any

from .checkpoint import load_latest, read_json
from .commands import command
from .errors import RunDirError

LOCK_NAME = ".metarl.lock"
RESULT_FILES = ("eval.json", "result.json")     # a finished run's final result (result.json: maze runs)

try:
    import fcntl
except ImportError:                              # not POSIX: the pid in the lock file decides alone
    fcntl = None


def _reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "a symbolic link loop"
    return e.strerror or type(e).__name__


def check_run_dir(run_dir: Path) -> None:
    """A finished or stopped run to read (``metarl eval``, ``export``): one line (RunDirError) when the folder does
    not exist or holds no config.yaml."""
    if not run_dir.exists():
        raise RunDirError(f"run directory {run_dir} does not exist")
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"not a run directory (no config.yaml): {run_dir}")


def prepare_run_dir(path: str | os.PathLike, resume: bool = False) -> Path:
    """``path`` as a usable run directory: an existing folder when resuming, else created (with parents).

    Refused in one line: a file, a path under a file, a symbolic link loop, a folder we cannot write."""
    run_dir = Path(path)
    try:
        os.stat(run_dir)                        # ELOOP / ENOTDIR surface here, not in Path.is_dir()
        exists = True
    except FileNotFoundError:
        exists = False
    except OSError as e:
        raise RunDirError(f"run directory {run_dir} is not usable: {_reason(e)}") from None
    if exists and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} is a file, not a folder")
    if resume and not exists:
        raise RunDirError(f"cannot resume: {run_dir} does not exist")
    if not exists:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise RunDirError(f"cannot create run directory {run_dir}: a file is in the way") from None
        except NotADirectoryError:
            raise RunDirError(f"cannot create run directory {run_dir}: a part of the path is a file") from None
        except OSError as e:
            raise RunDirError(f"cannot create run directory {run_dir}: {_reason(e)}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunDirError(f"run directory {run_dir} is not writable")
    return run_dir


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                     # alive, another user's
        return True
    except OSError:
        return False
    return True


def _read_holder(fd: int) -> tuple[int, str]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        fields = os.read(fd, 256).decode("utf-8", "replace").split()
        return int(fields[0]), (fields[1] if len(fields) > 1 else "")
    except (OSError, ValueError, IndexError):
        return 0, ""


class RunLock:
    """An exclusive lock on a run directory: ``RUN_DIR/.metarl.lock`` holding ``pid host``.

    Held through ``flock`` on the open file, so the kernel releases it when the holder dies (kill -9
    included): a lock file left by a killed run is stale and taken over. Where ``flock`` is unavailable
    the pid decides (a lock of a dead pid on this host is stale). Released (the file removed) on
    :meth:`release` or leaving the ``with`` block. Only rank 0 of a distributed run locks."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.dir_fd: int | None = None
        self.stale: tuple[int, str] | None = None   # the dead holder a stale lock named, if any

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(f"cannot lock run directory {self.run_dir}: {_reason(e)}") from None

    def _busy(self, pid: int, host: str) -> RunDirError:
        who = f"process {pid}" + (f" on {host}" if host and host != socket.gethostname() else "") if pid \
            else "another process"
        return RunDirError(f"run directory {self.run_dir} is in use by {who} (another metarl run): wait for it "
                           f"to finish, or stop it, then retry")

    def acquire(self) -> "RunLock":
        me = socket.gethostname()
        for _ in range(20):
            fd = self._open()
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise self._busy(*_read_holder(fd)) from None
                    except OSError:           # no flock on this file system: the pid decides
                        self._check_pid(fd, me)
                else:
                    self._check_pid(fd, me)
                # the holder we waited on may have removed the file: lock the file at the path, or retry
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                self._lock_folder()
                pid, host = _read_holder(fd)
                if pid and pid != os.getpid():
                    self.stale = (pid, host)
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, f"{os.getpid()} {me}\n".encode())
                os.fsync(fd)
            except BaseException as e:
                os.close(fd)
                if self.dir_fd is not None:
                    os.close(self.dir_fd)
                    self.dir_fd = None
                if isinstance(e, OSError):
                    raise RunDirError(f"cannot lock run directory {self.run_dir}: {_reason(e)}") from None
                raise
            self.fd = fd
            return self
        raise RunDirError(f"cannot lock run directory {self.run_dir}: it keeps changing hands")

    def _lock_folder(self) -> None:
        """Also flock the folder itself: the lock file can be deleted by hand while its holder lives (the
        holder then locks a file no one else can open), the folder cannot. Skipped where folders cannot be
        locked; the lock file (with the pid) still decides there."""
        if fcntl is None:
            return
        try:
            dfd = os.open(self.run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return
        try:
            fcntl.flock(dfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(dfd)
            raise self._busy(0, "") from None
        except OSError:
            os.close(dfd)
            return
        self.dir_fd = dfd

    def stale_warning(self) -> str:
        """The line that says a lock was taken over ('' when it was not): from a process that is gone, or —
        a live pid, reused or a holder that no longer locks — one that no longer holds it."""
        if self.stale is None:
            return ""
        pid, host = self.stale
        how = "which no longer holds it" if host == socket.gethostname() and _pid_alive(pid) else "which is gone"
        return f"warning: {self.run_dir} was locked by process {pid}, {how}: taking it over"

    def _check_pid(self, fd: int, me: str) -> None:
        pid, host = _read_holder(fd)
        if pid and pid != os.getpid() and (host != me or _pid_alive(pid)):
            raise self._busy(pid, host)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)                # while still holding it: a waiter then retries on a new file
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_holder(run_dir: str | os.PathLike) -> int | None:
    """The pid of the live process holding ``run_dir``'s lock, or None (no lock, or a stale one)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        pid, host = _read_holder(fd)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return None                     # nobody holds it
            except BlockingIOError:
                return pid or -1
            except OSError:
                pass
        return pid if pid and (host != socket.gethostname() or _pid_alive(pid)) else None
    finally:
        os.close(fd)


def check_fresh(run_dir: str | os.PathLike) -> None:
    """A fresh run must start in an empty folder (its lock file aside): writing over another run's
    config.yaml, eval.json, curves and checkpoints mixes two runs and prunes the wrong checkpoints."""
    run_dir = Path(run_dir)
    try:
        entries = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
    except OSError as e:
        raise RunDirError(f"cannot read run directory {run_dir}: {_reason(e)}") from None
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        hint = (f"continue it with {command('metarl', 'train', '--resume', run_dir)}, or "
                if "config.yaml" in entries else "")
        raise RunDirError(f"run directory {run_dir} is not empty ({shown}): {hint}choose another --run-dir")


def run_progress(state: dict[str, Any], cfg: Any) -> tuple[int, int] | None:
    """(done, total) of a checkpoint under ``cfg``: meta-steps for the meta-batch trainer (the meta-learner's
    counters), iterations for task families with a loop of their own (``task_config.iterations``), or
    None when the checkpoint does not say."""
    meta = state.get("meta")
    if isinstance(meta, dict) and "counters" in meta:
        try:
            return int(meta["counters"][2]), int(cfg.meta.steps)
        except (IndexError, TypeError, ValueError, RuntimeError):
            return None
    total = getattr(cfg.task_config, "iterations", None)
    if isinstance(total, int):
        try:
            return int(state["step"]), total
        except (KeyError, TypeError, ValueError, RuntimeError):
            return None
    return None


def finished_result(run_dir: str | os.PathLike) -> tuple[Path, dict] | None:
    """The final result file of a run (eval.json, or result.json for maze runs) when it is readable."""
    for name in RESULT_FILES:
        path = Path(run_dir) / name
        data = read_json(path)
        if isinstance(data, dict):
            return path, data
    return None


def set_aside_unreadable_results(run_dir: str | os.PathLike, log=None) -> list[Path]:
    """Rename result files that exist but do not parse (an eval.json emptied by a run killed mid-write,
    before writes were atomic) to ``*.corrupt``: the resumed run then repeats its final evaluation instead
    of failing on them. Returns the renamed files."""
    moved = []
    for name in RESULT_FILES:
        path = Path(run_dir) / name
        if path.exists() and not isinstance(read_json(path), dict):
            target = path.with_name(path.name + ".corrupt")
            try:
                os.replace(path, target)
            except OSError as e:
                raise RunDirError(f"cannot move the unreadable {path} aside: {_reason(e)}") from None
            if log is not None:
                log(f"warning: {path} is unreadable; moved it to {target.name} and the final evaluation is repeated")
            moved.append(path)
    return moved


def check_resumable(run_dir: str | os.PathLike, cfg: Any, state: dict[str, Any] | None) -> None:
    """Refuse a resume that cannot continue (:class:`RunDirError`, before anything is written):

    - ``meta.steps`` (or the task's run length) below what the checkpoint ``state`` has already done;
    - a finished run (done == total) whose final result is on disk: there is nothing to resume (raise
      ``meta.steps`` to train on, or ``metarl eval RUN_DIR`` to evaluate again).

    ``state`` is the checkpoint the run would resume from (``load_latest``), None when it has none.
    A finished run without a readable result may resume: it repeats the final evaluation."""
    if state is None:
        return
    progress = run_progress(state, cfg)
    if progress is None:
        return
    done, total = progress
    unit = "meta-steps" if isinstance(state.get("meta"), dict) else "iterations"
    if done > total:
        raise RunDirError(f"cannot resume {run_dir}: its checkpoint has done {done} {unit}, more than the "
                          f"{total} configured (meta.steps may only be raised on resume)")
    if done == total and finished_result(run_dir) is not None:
        raise RunDirError(f"run {run_dir} is finished ({done} of {total} {unit}, result in "
                          f"{finished_result(run_dir)[0].name}): nothing to resume; raise meta.steps to train "
                          f"on, or evaluate it with {command('metarl', 'eval', run_dir)}")


def resume_state(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint a resume of ``run_dir`` would start from (silently: the trainer reports skipped ones)."""
    loaded = load_latest(Path(run_dir), log=lambda msg: None)
    return loaded[0] if loaded is not None else None


def run_info(adapter: Any = None) -> dict[str, Any]:
    """What ran: the package version, the git commit of the source tree (None outside a git checkout or
    without git), Python and torch versions, and the task family's own entries (Atari: its backend)."""
    import platform
    import subprocess
    import sys
    from importlib import metadata

    import torch

    try:
        version = metadata.version("metarl")
    except metadata.PackageNotFoundError:
        version = None
    root = Path(__file__).resolve().parent.parent
    commit, dirty = None, None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0:
            commit = out.stdout.strip()
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
            dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    info = {"package": "metarl", "version": version, "git_commit": commit, "git_dirty": dirty,
            "python": platform.python_version(), "torch": torch.__version__, "argv": list(sys.argv)}
    if adapter is not None:
        info.update(adapter.run_info())
    return info
