"""LLM providers and the contract between them and the llm.* nodes (see provider.py)."""

from llmrec.llm.provider import Choices, Completion, CompletionRequest, Message, Provider, Usage

__all__ = ["Choices", "Completion", "CompletionRequest", "Message", "Provider", "Usage"]
