"""What a plugin that adds commands (``llmrec_register_commands``) uses, so that its command behaves like llmrec's
own: the same spec loading and error printing as ``llmrec validate``, the same ``--trust`` option, the same exit
codes and the same way of writing to the terminal.

    from llmrec.commands import EXIT_FAILED, Exit, TrustOption, load_graph, out, say

    @llmrec.hookimpl
    def llmrec_register_commands(cli):
        @cli.command(name="count")
        def count(spec: Path, trust: TrustOption = False) -> None:
            graph = load_graph(spec, trust)     # prints every spec error and exits 1 when the spec is invalid
            out(str(len(graph.nodes)))

llmrec's built-in commands (eval, serve, train, finetune, distill) are written this way.
"""

from __future__ import annotations

from .cli import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_SPEC,
    EXIT_USAGE,
    Exit,
    TrustOption,
    load_graph,
    out,
    say,
)

__all__ = ["EXIT_FAILED", "EXIT_INPUT", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_SPEC", "EXIT_USAGE", "Exit",
           "TrustOption", "load_graph", "out", "say"]
