"""What every command line tool shares: one error line instead of a traceback, ``--debug``,
and the checks that run before any work (flag values, a writable output directory).

Every ``main(argv)`` of a ``mixedae`` command is ``run_main(PROG, body, argv)``:

* an expected failure (:class:`~mixedae.runtime.errors.MixedAEError`, an ``OSError`` such as
  a full disk or a file that cannot be read, a timed-out collective of a distributed job)
  prints ``PROG: error: <one line naming the file / flag / value>`` on stderr;
* any other exception is a bug of this project, not bad input, and says so:
  ``PROG: error: internal error (a bug, please report): <type>: <message>; rerun with --debug
  for the traceback``;
* exit code 2 for bad input (flags, config, data, checkpoints), 1 for a failure while running
  (I/O, diverged training, distributed timeout, a bug), 130 for Ctrl-C;
* ``--debug`` (a flag of every command, see :func:`add_debug_flag`) re-raises instead, so the
  full traceback is shown;
* after a failed collective of a distributed job, stopped ranks on this host are ended (see
  :mod:`mixedae.runtime.distributed`) and the process exits at once (``os._exit``).
"""
from __future__ import annotations

import errno
import math
import os
import re
import sys
from pathlib import Path
from typing import Callable

from mixedae.runtime.errors import ConfigError, MixedAEError

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def add_debug_flag(parser) -> None:
    """``--debug``, and argparse's usage errors as one line (``PROG: error: ... (see
    --help)``, exit code 2) instead of the usage text plus the error."""
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")

    def error(message: str):
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {message} (see --help)\n")
    parser.error = error


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# gloo's own words for a timed-out collective (torch 2.14 raises them as a plain RuntimeError):
# "[.../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation to
# complete", then "Application timeout caused pair closure" on the next collective
_GLOO_TIMEOUT = re.compile(r"Timed out waiting \d+ms for \w+ operation|"
                           r"Application timeout caused pair closure")


def _distributed_failure(e: BaseException) -> bool:
    """A failed or timed-out collective (another rank hung, froze or died), by type:
    ``torch.distributed.DistError`` covers NCCL's watchdog (``DistBackendError``), the c10d
    store (``DistStoreError``) and rendezvous (``DistNetworkError``); gloo has no type of its
    own in torch 2.14 (a plain ``RuntimeError``, not a subclass), recognised by gloo's timeout
    messages."""
    dist = sys.modules.get("torch.distributed")   # not imported: not a torch failure
    if dist is None:
        return False
    return isinstance(e, dist.DistError) or (
        type(e) is RuntimeError and _GLOO_TIMEOUT.search(str(e)) is not None)


def describe(e: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for an exception that ends a command."""
    if isinstance(e, MixedAEError):
        return (EXIT_USAGE if isinstance(e, ValueError) else EXIT_FAILURE), str(e)
    if isinstance(e, OSError) and e.errno is not None:
        name = errno.errorcode.get(e.errno, str(e.errno))
        where = f": {e.filename}" if e.filename else ""
        return EXIT_FAILURE, f"{e.strerror or first_line(e)} ({name}){where}"
    if isinstance(e, OSError):  # raised with a message naming the path (missing files, images)
        return EXIT_USAGE, str(e)
    if _distributed_failure(e):
        from mixedae.runtime.distributed import timeout_seconds
        cause = re.sub(r"\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", first_line(e))[:200]
        return EXIT_FAILURE, (
            f"a distributed collective failed or timed out (limit {timeout_seconds():g}s): "
            f"another rank hung or died ({cause}); set MIXEDAE_DIST_TIMEOUT (seconds) to "
            f"change the limit")
    return EXIT_FAILURE, (f"internal error (a bug, please report): {type(e).__name__}: "
                          f"{first_line(e)}; rerun with --debug for the traceback")


def run_main(prog: str | None, body: Callable[[list[str]], int | None],
             argv: list[str] | None = None) -> int:
    """Run ``body(argv)``; failures become one line on stderr and an exit code (see module
    docstring). ``--debug`` anywhere in ``argv`` keeps the traceback. ``prog`` None: the line
    starts with ``error:`` (the mm tools, as they always printed it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return int(body(argv) or 0)
    except SystemExit as e:  # argparse (--help, usage errors): already printed
        if isinstance(e.code, str):   # sys.exit("message"): printed, as the interpreter would
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted" if prog else "interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 (the point of this function)
        if debug:
            raise
        code, msg = describe(e)
        world = int(os.environ.get("WORLD_SIZE", 1))
        rank = f" (rank {os.environ.get('RANK', 0)}/{world})" if world > 1 else ""
        dist_failed = _distributed_failure(e)
        if dist_failed:
            from mixedae.runtime.distributed import end_stopped_peers
            ended = end_stopped_peers()
            if ended:
                msg += (f"; ended the stopped rank(s) {', '.join(map(str, ended))} on this host "
                        f"(SIGKILL)")
        print(f"{prog + ': ' if prog else ''}error{rank}: {msg}", file=sys.stderr, flush=True)
        if dist_failed and world > 1:
            _exit_now(code)
        return code


def _exit_now(code: int) -> None:
    """Leave at once after a failed collective: the process group's teardown at interpreter
    exit may wait on, or abort because of, the rank that hung (SIGABRT instead of ``code``)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# ---- checks before any work ------------------------------------------------------------------
_INTERVAL = re.compile(r"^([\[(])(-?[\d.e+-]+|-inf),(-?[\d.e+-]+|inf)([\])])$")


def _satisfies(v, rule: str) -> bool:
    if rule.startswith((">=", ">")):
        lo = float(rule.lstrip(">="))
        return v >= lo if rule.startswith(">=") else v > lo
    m = _INTERVAL.match(rule.replace(" ", ""))
    if m is None:
        raise ValueError(f"bad rule {rule!r}")
    lo, hi = float(m.group(2)), float(m.group(3))
    return (v >= lo if m.group(1) == "[" else v > lo) and (v <= hi if m.group(4) == "]" else v < hi)


def check_flags(args, rules: dict[str, str]) -> None:
    """Raise ConfigError for the first flag outside its rule (``--flag VALUE: must be ...``).
    ``rules``: attribute name → ``'>0'``, ``'>=0'``, ``'>=1'`` or an interval such as
    ``'[0,1)'``; None values pass; NaN and infinite values never pass."""
    for attr, rule in rules.items():
        v = getattr(args, attr)
        if v is None:
            continue
        flag = "--" + attr.replace("_", "-")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{flag} {v!r}: must be a number")
        if not math.isfinite(v) or not _satisfies(v, rule):
            want = (rule[:-1] + " " + rule[-1] if rule.startswith(">")
                    else "in " + rule.replace(",", ", "))
            raise ConfigError(f"{flag} {v}: must be {want}")


def check_writable_dir(path: str | os.PathLike, flag: str = "--output-dir") -> None:
    """Refuse an output directory that cannot be created or written, creating nothing: an
    existing directory gets a probe file; otherwise its nearest existing parent is checked."""
    p = Path(path).absolute()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} {path}: {probe} is not a directory")
    if probe == p:
        name = p / f".write-probe-{os.getpid()}"
        try:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            os.unlink(name)
        except OSError as e:
            raise ConfigError(f"{flag} {path} is not writable ({e.strerror})") from None
    elif not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path} cannot be created: {probe} is not writable")
