"""Hermetic tests: no installed third-party plugin auto-loads unless a test asks for it."""

from __future__ import annotations

import os

os.environ["LLMREC_LOAD_PLUGINS"] = ""
os.environ.pop("LLMREC_MODEL", None)  # shipped specs run on their fallbacks unless a test sets a model
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
