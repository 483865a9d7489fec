"""The test session's XLA:CPU compile flags (tests/conftest.py): added to XLA_FLAGS, the user's
own flags kept and winning over them."""

import os

import conftest


def _names(flags: str) -> list[str]:
    return [flag.lstrip("-").partition("=")[0] for flag in flags.split()]


def test_session_has_the_flags():
    """The session (and so its workers and study subprocesses) runs with every flag set."""
    assert set(conftest._FAST_COMPILE_FLAGS) <= set(_names(os.environ.get("XLA_FLAGS", "")))


def test_flags_appended_to_nothing(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    conftest._add_fast_compile_flags()
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_cpu_use_fusion_emitters=false",
        "--xla_cpu_parallel_codegen_split_count=1",
    ]


def test_user_flags_kept_and_win(monkeypatch):
    user = "--xla_dump_to=/tmp/dump --xla_cpu_use_fusion_emitters=true"
    monkeypatch.setenv("XLA_FLAGS", user)
    conftest._add_fast_compile_flags()
    assert os.environ["XLA_FLAGS"].split() == [
        *user.split(),
        "--xla_cpu_parallel_codegen_split_count=1",
    ]
    conftest._add_fast_compile_flags()  # twice (an xdist worker inherits them): no duplicates
    assert len(os.environ["XLA_FLAGS"].split()) == 3
