"""The chaos tools' optional dependencies (the `chaos` extra), and what to say when one is missing.

Why a module of its own: raftq installs without its extras, yet `raftq chaos` can reach
toxiproxy-python (the run talks to the fault proxy through it) and matplotlib (the timeline
picture). A missing one must give one line naming the package and the install command,
checked before a run starts, never a stack trace or a verdict that depends on it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class OptionalDependency:
    """One optional module: its import name, its pip name, the extra that brings it."""

    module: str
    package: str
    needed_for: str
    extra: str = "chaos"

    @property
    def install_hint(self) -> str:
        return f"pip install 'raftq[{self.extra}]'"

    def missing(self) -> str | None:
        """None when the module can be found, else a one-line reason with the install hint.

        `find_spec` looks without importing (matplotlib takes a second to import); an
        `ImportError` from a finder, or a `None` left in sys.modules, also counts as missing.
        """
        try:
            found = importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            found = False
        return None if found else self.unavailable()

    def unavailable(self, error: BaseException | None = None) -> str:
        """The one-line reason: not installed, or (given the import's error) not importable."""
        what = "is not installed" if error is None else f"could not be imported ({error})"
        return f"{self.package} {what}, needed for {self.needed_for}: {self.install_hint}"


MATPLOTLIB = OptionalDependency("matplotlib", "matplotlib", "timeline.png")
TOXIPROXY = OptionalDependency(
    "toxiproxy", "toxiproxy-python", "any chaos run (it drives the fault proxy)"
)
