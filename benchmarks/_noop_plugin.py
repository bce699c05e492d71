"""A no-op node type for the executor-overhead benchmark (copied beside the derived spec as a local plugin)."""

from typing import Any

from pydantic import BaseModel, ConfigDict

import llmrec


class NoopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Noop(llmrec.NodeType):
    name = "bench.noop"
    Config = NoopConfig
    inline = True  # like the quickstart's node types it stands in for

    async def run(self, **inputs: Any) -> Any:
        return None


@llmrec.hookimpl
def llmrec_register_node_types(register: Any) -> None:
    register(Noop)
