"""chaos/optional.py: an optional module is missing when it cannot be found or is blocked."""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec

import pytest

from chaos.optional import MATPLOTLIB, TOXIPROXY, OptionalDependency


class RefuseImport:
    """A meta-path finder that refuses one module the way an absent one is refused."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> ModuleSpec | None:
        if fullname.split(".")[0] == self.name:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None  # not ours: the next finder decides


def test_an_installed_module_is_not_missing() -> None:
    assert OptionalDependency("json", "json", "a test").missing() is None
    assert TOXIPROXY.missing() is None  # the test extra installs toxiproxy-python


def test_a_module_that_does_not_exist_names_its_package_and_the_extra() -> None:
    dep = OptionalDependency("raftq_no_such_module", "no-such-dist", "a test")
    assert dep.missing() == (
        "no-such-dist is not installed, needed for a test: pip install 'raftq[chaos]'"
    )


def test_none_in_sys_modules_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    reason = MATPLOTLIB.missing()
    assert reason is not None
    assert reason.startswith("matplotlib is not installed")
    assert reason.endswith("pip install 'raftq[chaos]'") and "\n" not in reason


def test_a_finder_refusing_the_import_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "toxiproxy", raising=False)
    monkeypatch.setattr(sys, "meta_path", [RefuseImport("toxiproxy"), *sys.meta_path])
    reason = TOXIPROXY.missing()
    assert reason is not None and reason.startswith("toxiproxy-python is not installed")


def test_a_module_found_but_not_importable_says_so() -> None:
    reason = MATPLOTLIB.unavailable(ImportError("libfreetype.so.6: cannot open"))
    assert reason.startswith("matplotlib could not be imported (libfreetype.so.6")
    assert reason.endswith("pip install 'raftq[chaos]'")
