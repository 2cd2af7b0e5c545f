"""Resumable stages: each runs its commands as subprocesses into one log file and leaves a
marker when it finishes; a finished stage whose definition is unchanged is skipped.

Layout inside the pipeline folder ``OUT``::

    OUT/stages/<stage>.json   marker of a finished stage (its signature, seconds, log path and,
                              for a transfer, ``pretrained``: the runtime.provenance record of
                              the weights it started from, which the report checks)
    OUT/logs/<stage>.log      stdout + stderr of every attempt (appended)

A stage is re-run when asked (``--redo``) or when a stage it needs ran in this invocation; its
previous output folder is then kept as ``<folder>.prev-N`` (never deleted). A ``partial_ok``
stage (the report) also runs when a stage it needs failed, to show what exists. A stage without a
marker reruns into its folder, where every tool of the project resumes (pretraining from
``checkpoint.pth``, mm training with ``--resume``, transfer runs per dataset and lr).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mixedae.runtime.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

Command = Callable[[], list[str]]  # built when the step runs (it may read earlier outputs)


@dataclass
class Stage:
    name: str
    signature: dict                 # everything that defines the stage's result
    steps: list[Command]
    needs: tuple[str, ...] = ()
    output: Path | None = None      # folder the stage writes (set aside on a re-run)
    partial_ok: bool = False        # runs even when a needed stage failed (the report)
    env: dict = field(default_factory=dict)
    pretrained: Path | None = None  # the pretraining weights its result derives from


def subprocess_env(extra: dict | None = None) -> dict:
    """The project's code first on the path of every child (also torchrun's workers)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get(
        "PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def log_tail(log: Path, limit: int = 160) -> str:
    """The last line a stage wrote (tqdm redraws with \\r: the last of those), shortened."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    parts = [p.strip() for p in text.replace("\r", "\n").split("\n")]
    last = next((p for p in reversed(parts) if p and not p.startswith("=== ")), "")
    return last if len(last) <= limit else last[:limit - 1] + "…"


def elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class Runner:
    """Runs stages; while one runs, its progress (stage i/n, elapsed, the last line of its log)
    is shown: redrawn in place on a terminal, else printed every ``every_s`` seconds."""

    def __init__(self, out: Path, redo: set[str], echo: Callable[[str], None] = print,
                 every_s: float = 60.0, poll_s: float = 1.0):
        self.out, self.redo, self.echo = out, redo, echo
        self.every_s, self.poll_s = every_s, poll_s
        self.tty = sys.stdout.isatty()
        self.ran: set[str] = set()
        self.failed: dict[str, Path] = {}
        self.position = ""           # "i/n" of the stage being run (set by the caller)

    def marker(self, stage: Stage) -> Path:
        return self.out / "stages" / f"{stage.name}.json"

    def log(self, stage: Stage) -> Path:
        return self.out / "logs" / f"{stage.name}.log"

    def check(self, stages: list[Stage]) -> None:
        """Refuse (before any work) a finished stage whose definition changed."""
        for s in stages:
            m = self.marker(s)
            if s.name in self.redo or not m.is_file():
                continue
            old = json.loads(m.read_text()).get("signature")
            if old != _jsonable(s.signature):
                diff = sorted(k for k in set(old or {}) | set(s.signature)
                              if (old or {}).get(k) != _jsonable(s.signature).get(k))
                raise ConfigError(f"stage {s.name!r} was finished with other settings "
                                  f"({', '.join(diff)}); pass --redo {s.name} to run it "
                                  f"again, or use another --out")

    def state(self, stage: Stage) -> str:
        """'run', 'skip' (finished before) or 'blocked' (a needed stage failed)."""
        failed = any(n in self.failed for n in stage.needs)
        if failed and not stage.partial_ok:
            return "blocked"
        if failed or stage.name in self.redo or any(n in self.ran for n in stage.needs):
            return "run"
        return "skip" if self.marker(stage).is_file() else "run"

    def run(self, stage: Stage) -> bool:
        st = self.state(stage)
        if st == "skip":
            self.echo(f"[pipeline] {stage.name}: finished before, skipped "
                      f"({self.marker(stage)})")
            return True
        if st == "blocked":
            self.failed[stage.name] = self.log(stage)
            self.echo(f"[pipeline] {stage.name}: not run (needs the failed stage "
                      f"{', '.join(n for n in stage.needs if n in self.failed)})")
            return False
        self._set_aside(stage)
        return self._execute(stage)

    def _set_aside(self, stage: Stage) -> None:
        """A finished stage that runs again starts from an empty folder (old one kept)."""
        m = self.marker(stage)
        if not m.is_file():
            return
        m.unlink()
        if stage.output is not None and stage.output.exists() and not stage.partial_ok:
            n = 1
            while stage.output.with_name(f"{stage.output.name}.prev-{n}").exists():
                n += 1
            prev = stage.output.with_name(f"{stage.output.name}.prev-{n}")
            stage.output.rename(prev)
            self.echo(f"[pipeline] {stage.name}: previous output kept as {prev}")

    def _execute(self, stage: Stage) -> bool:
        log = self.log(stage)
        log.parent.mkdir(parents=True, exist_ok=True)
        if stage.output is not None:  # (some steps write into it before the tool does)
            stage.output.mkdir(parents=True, exist_ok=True)
        label = f"stage {self.position} {stage.name}" if self.position else stage.name
        self.echo(f"[pipeline] {label}: running (log: {log})")
        t0 = time.time()
        extra = {}
        if stage.pretrained is not None:  # read before the stage runs: what it was handed
            from mixedae.runtime.provenance import checkpoint_record
            try:
                extra["pretrained"] = checkpoint_record(stage.pretrained)
            except OSError:  # no weights file: the report will show the result as unknown
                pass
        with open(log, "a") as f:
            for step in stage.steps:
                cmd = [str(c) for c in step()]
                f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(cmd)}\n")
                f.flush()
                proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=self.out,
                                        env=subprocess_env(stage.env))
                rc = self._follow(proc, log, label, t0)
                if rc != 0:
                    f.write(f"=== exit code {rc}\n")
                    self.failed[stage.name] = log
                    self.echo(f"[pipeline] stage {stage.name!r} failed (exit code {rc}); "
                              f"log: {log}")
                    return False
        seconds = round(time.time() - t0, 1)
        from mixedae.runtime.atomic import atomic_write_text
        atomic_write_text(self.marker(stage), json.dumps({
            "stage": stage.name, "signature": _jsonable(stage.signature), "seconds": seconds,
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), "log": str(log), **extra},
            indent=1))
        self.ran.add(stage.name)
        self.echo(f"[pipeline] {stage.name}: done in {seconds:.0f}s")
        return True


    def _follow(self, proc: subprocess.Popen, log: Path, label: str, t0: float) -> int:
        """Wait for ``proc``, showing the stage's progress; its exit code."""
        shown = time.time()
        try:
            while True:
                try:
                    return proc.wait(timeout=self.poll_s)
                except subprocess.TimeoutExpired:
                    pass
                now = time.time()
                line = f"[pipeline] {label}: {elapsed(now - t0)}"
                tail = log_tail(log)
                line += f" | {tail}" if tail else ""
                if self.tty:
                    sys.stdout.write("\r\033[K" + line[:os.get_terminal_size().columns - 1])
                    sys.stdout.flush()
                elif now - shown >= self.every_s:
                    self.echo(line)
                    shown = now
        except BaseException:  # Ctrl-C: the stage's process goes with the pipeline
            proc.kill()
            proc.wait()
            raise
        finally:
            if self.tty:
                sys.stdout.write("\r\033[K")


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def python() -> str:
    """The project's interpreter (the one running the pipeline)."""
    return sys.executable
