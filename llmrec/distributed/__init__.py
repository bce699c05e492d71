"""Batch work over files of requests and catalogs, on this machine or on a Ray cluster (docs/scaling.md).

- :mod:`llmrec.distributed.batch`: ``llmrec batch SPEC --input FILE --output OUT``, a spec run over every row of
  a JSONL, CSV or Parquet file, results streamed in input order, resumable;
- :mod:`llmrec.distributed.embedding`: ``llmrec embed SPEC|CATALOG --output DIR``, a catalog's vectors and a
  vector index;
- :mod:`llmrec.distributed.engine`: the optional Ray engine (``--engine ray``): Ray is imported only there, and
  only when asked for;
- :mod:`llmrec.distributed.eval_engine`: ``llmrec eval --engine ray``, the cases of an evaluation predicted by
  actors that start the spec once each (scoring, the resumable store and the report stay in llmrec.eval);
- :mod:`llmrec.distributed.commands`: the commands, registered as a default plugin.

Both engines run the same worker classes (:class:`~llmrec.distributed.batch.SpecWorker`,
:class:`~llmrec.distributed.embedding.EmbedWorker`) on the same batches, so their outputs are identical.
"""
