"""Hermetic tests: no installed third-party plugin auto-loads unless a test asks for it."""

from __future__ import annotations

import os

os.environ["LLMREC_LOAD_PLUGINS"] = ""
os.environ.pop("LLMREC_MODEL", None)  # shipped specs run on their fallbacks unless a test sets a model
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _trust_the_suites_own_folders(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The specs and plugins under tests/ and in pytest's temporary folders are the suite's own code, so it
    trusts them (llmrec/trust.py) as a user trusts a folder they wrote; tests/test_trust_code.py removes this
    to check that code in an untrusted folder is never imported. The user's own trust file is not read."""
    from pathlib import Path

    config = tmp_path_factory.mktemp("xdg-config")
    os.environ["XDG_CONFIG_HOME"] = str(config)
    os.environ["LLMREC_TRUST"] = os.pathsep.join(
        [str(Path(__file__).parent.resolve()), str(tmp_path_factory.getbasetemp().resolve())])
