"""Conversational recommendation (book chapters 5 and 8.4): dialogue state, clarify-or-recommend policies,
reward functions and simulated users. A library: it never imports ``llmrec.nodes``; the node types that wrap it
live in ``llmrec/nodes/``.
"""
