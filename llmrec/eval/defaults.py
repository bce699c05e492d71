"""Defaults the ``llmrec eval --logged`` and ``llmrec replay`` options show, in a module that imports nothing:
the CLI's signatures need them when the command plugins register, and ``llmrec validate`` or ``llmrec run`` must
not pay for importing the off-policy estimators, the log readers or the replay machinery (issue 13: commands
import only what they need)."""

from __future__ import annotations

#: OPE estimators (llmrec/eval/ope.py) and the bootstrap's resamples
ESTIMATORS = ("ips", "snips", "dr", "sndr")
N_BOOTSTRAP = 1000
#: `llmrec eval --logged` (llmrec/eval/logged.py): the reward, the estimators shown, the weightings
DEFAULT_REWARD = "click"
DEFAULT_ESTIMATORS = ("ips", "snips", "dr")
WEIGHTS = ("position", "cascade")
#: `llmrec replay` (llmrec/eval/replay.py): its exit code when an answer changed, score tolerance, changes listed
EXIT_CHANGED = 5
TOLERANCE = 1e-6
SHOW = 10

__all__ = ["DEFAULT_ESTIMATORS", "DEFAULT_REWARD", "ESTIMATORS", "EXIT_CHANGED", "N_BOOTSTRAP", "SHOW", "TOLERANCE",
           "WEIGHTS"]
