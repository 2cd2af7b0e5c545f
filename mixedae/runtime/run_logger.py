"""The one run logger of every engine (rank 0 only): a tqdm progress bar, tensorboard scalars
in ``<dir>/tb`` and one JSON record per line in ``<dir>/log.jsonl``.

On resume, records past the resume step are dropped from ``log.jsonl`` (and tensorboard purges
them), so a resumed run's log reads like an uninterrupted one; a torn last line (a kill during
a write) is dropped too.

While the bar is shown, nothing is printed over it: :meth:`RunLogger.info` lines go through
``tqdm.write``, and so does every ``logging`` record of the console handlers
(``tqdm.contrib.logging.logging_redirect_tqdm`` from the bar's start to :meth:`RunLogger.close`),
so the engines' own ``log.info`` / warnings of the runtime print above the bar, not into it
(without any handler, as in the classification commands, the warnings that Python's
last-resort handler would print are written the same way).
"""
from __future__ import annotations

import json
import logging
import sys
from contextlib import ExitStack
from pathlib import Path

from mixedae.runtime.atomic import atomic_write_text
from mixedae.runtime.distributed import is_main_process

log = logging.getLogger(__name__)


def setup_logging(rank: int = 0) -> None:
    """Console logging of the command-line tools: INFO on rank 0, warnings elsewhere."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def print0(*args, **kw) -> None:
    """print on rank 0 only (flushed)."""
    if is_main_process():
        print(*args, **kw, flush=True)


def read_jsonl(path: str | Path, skipped: list[str] | None = None) -> list[dict]:
    """The records of a ``log.jsonl`` (unparsable lines, e.g. a torn last line, skipped and
    named in ``skipped`` if given)."""
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if skipped is not None:
                skipped.append(f"{path}:{i} is not JSON (skipped)")
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _is_console(handler: logging.Handler) -> bool:
    """A logging handler that writes to the terminal (the ones tqdm's redirect replaces)."""
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout,
                                                                            sys.stderr)


class RunLogger:
    """See module docstring. ``start_step``: records with a larger ``step`` are dropped from an
    existing log (``None`` keeps the whole log, e.g. a run directory shared by phases)."""

    def __init__(self, output_dir: str | Path | None, *, desc: str, total: int | None = None,
                 start_step: int | None = 0, progress: bool = True, tensorboard: bool = True):
        self.enabled = output_dir is not None and is_main_process()
        self.bar = self.tb = self.jsonl = None
        self._tb_dir, self._purge, self._redirect = None, None, ExitStack()
        if not self.enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl = out / "log.jsonl"
        self._tb_dir = out / "tb" if tensorboard else None
        self._bar_kw = dict(total=total, desc=desc, disable=not progress)
        if start_step is not None:
            self.resume_at(start_step)

    def _open_bar(self):
        """The bar, drawn from the first step on (so it starts with its final total)."""
        if self.bar is None and self.enabled:
            from tqdm import tqdm
            self.bar = tqdm(initial=0, dynamic_ncols=True, **self._bar_kw,
                            mininterval=0.1 if sys.stderr.isatty() else 30.0)
            roots = logging.root.handlers  # none: Python's last-resort handler prints warnings
            if not self.bar.disable and (not roots or any(_is_console(h) for h in roots)):
                from tqdm.contrib.logging import logging_redirect_tqdm
                self._redirect.enter_context(logging_redirect_tqdm())
        return self.bar

    def resume_at(self, step: int) -> None:
        """Continue a run at ``step``: drop later records (log.jsonl and tensorboard)."""
        if not self.enabled:
            return
        if self.jsonl.exists():
            keep = [r for r in read_jsonl(self.jsonl) if r.get("step", 0) <= step]
            atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in keep))
        self._purge = step + 1
        if step or self.bar is not None:
            bar = self._open_bar()
            bar.n = bar.last_print_n = step
            bar.refresh()

    def set_total(self, total: int) -> None:
        """The number of steps the bar counts to (e.g. a run stopping early at --max-steps)."""
        if not self.enabled:
            return
        self._bar_kw["total"] = total
        if self.bar is not None and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()

    def _writer(self):
        if self.tb is None and self._tb_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self._tb_dir), purge_step=self._purge)
            except ImportError:  # tensorboard is optional on a training box
                log.warning("tensorboard not installed; scalars only go to %s", self.jsonl)
                self._tb_dir = None
        return self.tb

    def step(self, n: int = 1) -> None:
        if self.enabled:
            self._open_bar().update(n)

    def event(self, **record) -> None:
        """Append one record to ``log.jsonl`` only."""
        if self.enabled:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps(record) + "\n")

    def log(self, record: dict, scalars: dict | None = None, postfix: dict | None = None,
            prefix: str = "") -> None:
        """``record`` → log.jsonl; ``scalars`` (default: the numeric fields of ``record``) →
        tensorboard at ``record['step']`` (names prefixed by ``prefix``); ``postfix`` → the
        progress bar."""
        if not self.enabled:
            return
        self.event(**record)
        if self._writer() is not None:
            if scalars is None:
                scalars = {k: v for k, v in record.items() if k not in ("step", "epoch")
                           and isinstance(v, (int, float)) and not isinstance(v, bool)}
            for k, v in scalars.items():
                self.tb.add_scalar(prefix + k, v, record.get("step", 0))
        if postfix:
            self._open_bar().set_postfix(postfix, refresh=False)

    def info(self, msg: str) -> None:
        """One console line (rank 0), printed above the progress bar."""
        if not self.enabled:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self._redirect.close()  # console logging as before the bar
        if self.tb is not None:
            self.tb.close()
