"""In CI a missing test dependency fails; on a developer's machine it skips with the reason."""

from __future__ import annotations

import pytest

import requires


def test_missing_dependency_skips_locally(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="CI=true makes this a failure"):
        requires.module("trtq_no_such_package")


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_missing_dependency_fails_in_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="the README's test command installs it"):
        requires.module("trtq_no_such_package")
    assert requires.module("numpy").__name__ == "numpy"


def test_ci_script_sets_ci():
    from pathlib import Path

    assert "export CI=true" in (Path(__file__).parent.parent / ".ci" / "run").read_text()
