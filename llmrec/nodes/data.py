"""Data resources: a catalog file, an interaction log file, or a whole dataset (registered as a default plugin).

    resources:
      ml:
        type: dataset              # ${resources.ml.catalog}, ${resources.ml.train} (alias: interactions)
        config: {name: movielens-100k, split: temporal}
      items:
        type: catalog              # a Catalog
        config: {path: data/items.csv, text: "{{title}}. {{summary}}", metadata: [brand]}
      log:
        type: interactions         # an Interactions log
        config: {path: data/events.jsonl, rating: stars, catalog_check: data/items.csv}

Validation reads no data: it checks names, options, templates and formats, and *warns* when files are not
there yet (the spec is right; the data is missing). Loading happens in a worker thread when the runtime starts;
bad or missing data is a :class:`~llmrec.errors.DataError` that says which file, row and column.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..data import bbc, datasets, demo, movielens
from ..data.catalog import Catalog, Interactions
from ..data.dataset import Dataset
from ..data.files import detect_format, read_catalog, read_interactions, read_item_ids
from ..errors import DataError
from ..hookspecs import hookimpl
from ..node import CheckContext, LoadContext, Problem, ResourceType, SpecPath
from ..paths import confine
from ..templates import TemplateProblem, variables

Format = Literal["csv", "jsonl", "parquet"]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _file_problems(path: Path, format: str | None, field: str = "path") -> list[Problem]:
    problems = []
    try:
        detect_format(path, format)
    except DataError as exc:
        problems.append(Problem(exc.message, field=field, hint=exc.hint))
    if not path.exists():
        problems.append(Problem(f"file {path} does not exist (yet)", field=field, warning=True,
                                hint="The spec is valid, but loading it will fail until the file is there"))
    return problems


# -- catalog ---------------------------------------------------------------------------------------------------


class CatalogConfig(_Config):
    path: SpecPath = Field(description="A CSV, JSONL or Parquet file, one item per row (relative to the spec).")
    format: Format | None = Field(None, description="File format; default: from the suffix.")
    id: str = Field("id", description="Column holding item ids.")
    title: str = Field("title", description="Column holding titles.")
    description: str | None = Field(None, description="Column holding descriptions.")
    category: str | None = Field(None, description="Column holding categories.")
    price: str | None = Field(None, description="Column holding prices (empty cell: no price).")
    text: str | None = Field(
        None, description="Jinja template over the row giving the text to embed and search, "
                          "e.g. '{{title}}. {{summary}}'."
    )
    metadata: list[str] = Field(default_factory=list, description="Columns kept as item attributes.")


class CatalogResource(ResourceType):
    """Items read from a file with :func:`llmrec.data.files.read_catalog`."""

    name = "catalog"
    description = "A catalog read from a CSV, JSONL or Parquet file (columns named in the config)."
    Config = CatalogConfig
    provides = Catalog

    @classmethod
    def check(cls, config: CatalogConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        problems: list[str | tuple[str, str] | Problem] = list(_file_problems(config.path, config.format))
        if config.text is not None:
            try:
                variables(config.text)
            except TemplateProblem as exc:
                problems.append(("text", str(exc)))
        return problems

    async def load(self) -> Catalog:
        c = self.config
        return await asyncio.to_thread(read_catalog, c.path, id=c.id, title=c.title, description=c.description,
                                category=c.category, price=c.price, text=c.text, metadata=tuple(c.metadata),
                                format=c.format)


# -- interactions ----------------------------------------------------------------------------------------------


class InteractionsConfig(_Config):
    path: SpecPath = Field(description="A CSV, JSONL or Parquet file, one event per row (relative to the spec).")
    format: Format | None = Field(None, description="File format; default: from the suffix.")
    user: str = Field("user_id", description="Column holding user ids.")
    item: str = Field("item_id", description="Column holding item ids.")
    event: str | None = Field(
        None, description="Column holding event types (view, click, purchase, rating); default: 'rating' for rows "
                          "with a rating, else 'view'.",
    )
    rating: str | None = Field(None, description="Column holding ratings (empty cell: none).")
    timestamp: str | None = Field(
        "timestamp", description="Column holding Unix seconds or ISO 8601 dates; null: the file order."
    )
    catalog_check: SpecPath | None = Field(
        None, description="A catalog file whose ids every event's item must be among (checked at load)."
    )
    catalog_id: str = Field("id", description="The id column of catalog_check.")
    catalog_format: Format | None = Field(None, description="Format of catalog_check; default: from the suffix.")


class InteractionsResource(ResourceType):
    """An interaction log read from a file with :func:`llmrec.data.files.read_interactions`."""

    name = "interactions"
    description = "An interaction log read from a CSV, JSONL or Parquet file (columns named in the config)."
    Config = InteractionsConfig
    provides = Interactions

    @classmethod
    def check(cls, config: InteractionsConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        problems: list[str | tuple[str, str] | Problem] = list(_file_problems(config.path, config.format))
        if config.catalog_check is not None:
            problems.extend(_file_problems(config.catalog_check, config.catalog_format, "catalog_check"))
        return problems

    def _read(self) -> Interactions:
        c = self.config
        known = None
        if c.catalog_check is not None:
            known = read_item_ids(c.catalog_check, id=c.catalog_id, format=c.catalog_format)
        return read_interactions(c.path, user=c.user, item=c.item, event=c.event, rating=c.rating,
                                 timestamp=c.timestamp, catalog=known, format=c.format)

    async def load(self) -> Interactions:
        return await asyncio.to_thread(self._read)


# -- dataset ---------------------------------------------------------------------------------------------------


class DatasetConfig(_Config):
    name: str = Field(
        description="A registered dataset (llmrec plugins: movielens-100k, movielens-1m, bbc-news, "
                    "bbc-news-profiles, demo, and plugins' own) or a folder holding catalog.* and interactions.* "
                    "(relative to the spec).",
        min_length=1,
    )
    split: Literal["temporal", "user", "leave-last", "none"] = Field(
        "none", description="How to hold out test interactions (see llmrec.data.splits)."
    )
    seed: int = Field(0, description="Seed of every random choice (user split, queries, synthetic users).")
    test_fraction: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="Held-out share: events per user (temporal, default 0.1) or users (user, 0.2).",
    )
    data_dir: SpecPath | None = Field(
        None, description="Folder holding the dataset files; default: $LLMREC_DATA_DIR, else ~/.cache/llmrec/data."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="The dataset's own options, e.g. {n_users: 200}.")

    @field_validator("name")
    @classmethod
    def _resolve_folder(cls, value: str, info: ValidationInfo) -> str:
        """A path (``./shop``, ``data/shop``), or a bare name that is no registered dataset but a folder beside the
        spec, is a folder relative to the spec and confined like every path in a spec (an untrusted spec cannot
        read a folder outside the ones it may use); any other name must be registered (the registry and base dir
        come from the graph builder's validation context)."""
        if len(value) > 4096 or any(len(part) > 255 for part in value.replace("\\", "/").split("/")):
            raise ValueError("is too long for a dataset name or folder (a path part may have at most 255 "
                             "characters)")
        context = info.context or {}
        base, registry = context.get("base_dir"), context.get("registry")
        if base is None:  # a config built in Python, not from a spec
            return value
        beside = registry is not None and value not in registry.datasets and _is_dir(base, value)
        if datasets.looks_like_path(value) or os.path.isabs(value) or beside:
            # a folder is a path like any other in a spec: it stays inside the folders a spec may use
            return str(confine(Path(base), Path(value), "name"))
        return value


def _is_dir(base: str | Path, name: str) -> bool:
    try:
        return (Path(base) / name).is_dir()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a folder
        return False


class DatasetResource(ResourceType):
    """A whole dataset from :func:`llmrec.data.datasets.load_dataset`: catalog, training log and eval cases."""

    name = "dataset"
    description = "A named dataset or a folder of files, split for evaluation (catalog, train, test cases)."
    Config = DatasetConfig
    provides = Dataset

    @classmethod
    def check(cls, config: DatasetConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        registry = ctx.registry if ctx is not None else None
        found: list[str | tuple[str, str] | Problem] = [
            Problem(message, field=field, hint=hint) for field, message, hint in
            datasets.problems(config.name, config.split, config.options, registry)
        ]
        if found:
            return found
        missing = datasets.missing_files(config.name, config.data_dir, registry)
        if missing:
            env = datasets.ENV_VAR
            where = "the folder" if config.data_dir is not None else (
                f"{env} ({os.environ[env]})" if os.environ.get(env) else f"{env} (unset, so {datasets.data_dir()})")
            hint = f"Set {env} to the folder holding the data" if config.data_dir is None else "Check data_dir"
            if config.options.get("download") is True:
                hint = "It will be downloaded when the spec runs (options: {download: true})"
            found.append(Problem(
                f"data for dataset '{config.name}' not found: {missing[0]} is missing (looked in {where})",
                field="name", hint=hint, warning=True,
            ))
        return found

    async def load(self, ctx: LoadContext | None = None) -> Dataset:
        """The dataset, its name resolved against the graph's registry (without a context: the process's)."""
        c = self.config
        return await asyncio.to_thread(datasets.load_dataset, c.name, c.split, seed=c.seed,
                                       test_fraction=c.test_fraction, data_dir=c.data_dir,
                                       registry=ctx.registry if ctx is not None else None,
                                       **c.options)


RESOURCE_TYPES: tuple[type[ResourceType], ...] = (CatalogResource, InteractionsResource, DatasetResource)


#: the built-in named datasets, registered below through the same hook as a plugin's
DATASETS: tuple[datasets.DatasetInfo, ...] = (*movielens.DATASETS, *bbc.DATASETS, *demo.DATASETS)


@hookimpl
def llmrec_register_resource_types(register: Any) -> None:
    for cls in RESOURCE_TYPES:
        register(cls)


@hookimpl
def llmrec_register_datasets(register: Any) -> None:
    for info in DATASETS:
        register(info)


__all__ = ["CatalogResource", "DATASETS", "DatasetResource", "InteractionsResource", "RESOURCE_TYPES"]
