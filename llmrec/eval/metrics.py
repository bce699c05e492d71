"""The metrics ``llmrec eval`` computes, under the name plugin authors import them by
(``from llmrec.eval.metrics import list_metric``). They live in :mod:`llmrec.metrics`, below both the node types
(a ranker's validation NDCG) and evaluation, so that neither imports the other."""

from ..metrics import *  # noqa: F403 - this module is that one's public surface, re-exported
from ..metrics import __all__  # noqa: F401
