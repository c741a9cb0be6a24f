"""Progress of a certification run: bars with ETA on a terminal, JSON lines for CI.

A run reports two things as it goes: images finished (out of the run's total, resumed ones counted
as done) and, within each batch, its stages (``invert`` in Adam steps, ``generate`` in generations,
``prompts`` in prompts tested). :class:`RunProgress` draws them as tqdm bars on standard error when
that is a terminal (images per second and ETA on the images bar) and appends them, with the time,
to a JSON-lines log when one is given, so a CI job can follow a long run. With neither it only
counts; nothing here changes a result.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO


class RunProgress:
    """Bars on ``stream`` (only when ``bars``) and JSON lines in ``log`` (only when given)."""

    def __init__(self, bars: bool = False, log: str | Path | None = None, stream: IO[str] | None = None):
        self.bars, self.stream = bars, stream or sys.stderr
        self.log = open(log, "a", encoding="utf-8") if log is not None else None  # noqa: SIM115 - closed in close()
        self.images = None
        self.stage_bar = None
        self.started = time.time()
        self.images_done = self.images_total = 0
        self.stage_name, self.stage_done, self.stage_total = None, 0, 0

    def _write(self, event: str, **fields) -> None:
        if self.log is not None:
            record = {"time": round(time.time(), 3), "event": event, "images_done": self.images_done,
                      "images_total": self.images_total} | fields
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()

    def say(self, message: str) -> None:
        """A line of text on the stream that does not break the bars."""
        if self.bars:
            from tqdm import tqdm

            tqdm.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def start(self, total: int, done: int) -> None:
        """The run has ``total`` images, ``done`` of them already certified (resumed)."""
        self.images_total, self.images_done = total, done
        if self.bars:
            from tqdm import tqdm

            self.images = tqdm(total=total, initial=done, unit="image", desc="images", file=self.stream,
                               dynamic_ncols=True, position=0)
        self._write("start")

    def finished(self, count: int) -> None:
        """``count`` more images are certified."""
        self.images_done += count
        if self.images is not None:
            self.images.update(count)
        elapsed = time.time() - self.started
        rate = self.images_done / elapsed if elapsed > 0 else None
        left = self.images_total - self.images_done
        self._write("images", eta_s=round(left / rate, 1) if rate else None)

    def stage(self, name: str, total: int, unit: str) -> None:
        """A stage of the current batch begins: ``total`` ``unit`` to do (it may grow)."""
        self.end_stage()
        self.stage_name, self.stage_done, self.stage_total = name, 0, total
        if self.bars:
            from tqdm import tqdm

            self.stage_bar = tqdm(total=total, unit=unit, desc=name, file=self.stream, dynamic_ncols=True,
                                  position=1, leave=False)
        self._write("stage", stage=name, done=0, total=total, unit=unit)

    def advance(self, count: int = 1) -> None:
        """``count`` more units of the current stage are done."""
        self.stage_done += count
        if self.stage_done > self.stage_total:  # inversion went on past its planned steps, or sampling past a look
            self.stage_total = self.stage_done
            if self.stage_bar is not None:
                self.stage_bar.total = self.stage_total
        if self.stage_bar is not None:
            self.stage_bar.update(count)
        self._write("advance", stage=self.stage_name, done=self.stage_done, total=self.stage_total)

    def end_stage(self) -> None:
        if self.stage_bar is not None:
            self.stage_bar.close()
            self.stage_bar = None
        self.stage_name = None

    def close(self) -> None:
        self.end_stage()
        if self.images is not None:
            self.images.close()
            self.images = None
        self._write("end", seconds=round(time.time() - self.started, 2))
        if self.log is not None:
            self.log.close()
            self.log = None

