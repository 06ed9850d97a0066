"""Progress feedback for long fits and draws.

`progress=None` (the default everywhere) chooses by where the output goes:

- a terminal or a Jupyter notebook: a tqdm bar (`tqdm.auto`, a widget in notebooks);
- a log file or pipe: a plain line every 30 seconds (and a last one at the end if any was written);
- CI (the `CI` environment variable set) or `MSGM_PP_PROGRESS=0`: nothing.

`progress=True` forces the bar and `progress=False` silences it.
"""

import os
import sys
import time

LOG_INTERVAL_S = 30.0


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    ipython = getattr(shell, "get_ipython", lambda: None)() if shell else None
    return type(ipython).__name__ == "ZMQInteractiveShell"


def progress_mode(progress: bool | None) -> str:
    """The mode of a `progress` argument: "bar", "log" or "off" (see the module docstring)."""
    if progress is not None:
        return "bar" if progress else "off"
    if os.environ.get("MSGM_PP_PROGRESS") == "0" or os.environ.get("CI"):
        return "off"
    if sys.stderr.isatty() or _in_notebook():
        return "bar"
    return "log"


class _LogLine:
    """A tqdm-like counter that writes a plain line to stderr at most every 30 seconds."""

    def __init__(self, total: int, desc: str, interval: float):
        self.total, self.desc, self.interval = total, desc, interval
        self.done, self.written, self.postfix = 0, 0, ""
        self.start = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self.last >= self.interval:
            self._write()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{name}={value}" for name, value in values.items())

    def _write(self) -> None:
        self.last, self.written = time.monotonic(), self.done
        elapsed = self.last - self.start
        line = f"{self.desc}: {self.done}/{self.total} ({elapsed:.0f} s)"
        print(f"{line} {self.postfix}".rstrip(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.written and self.done > self.written:
            self._write()


class _Silent:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, progress: bool | None):
    """An object with update(n), set_postfix(**values) and close(), by `progress_mode`."""
    mode = progress_mode(progress)
    if mode == "bar":
        # tqdm.auto picks the notebook widget (or warns and falls back to text without ipywidgets)
        # when it is imported, so it is imported when a bar is first needed.
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False)
    if mode == "log":
        return _LogLine(total, desc, LOG_INTERVAL_S)
    return _Silent()
