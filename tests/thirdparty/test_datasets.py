"""A third-party plugin's dataset is a dataset like the built-ins (issue 12): registered through
``llmrec_register_datasets`` with its plugin's name, accepted by a spec's ``dataset`` resource and by
``llmrec eval --dataset``, and a misspelt name gets a did-you-mean. The plugin (acme_datasets.py beside this file)
generates its data in memory, as a separate package would."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

import llmrec
from llmrec.cli import main
from llmrec.data.datasets import list_datasets, load_dataset
from llmrec.errors import DataError, PluginError
from llmrec.graph.build import build, check_graph
from llmrec.plugins import get_registry, make_registry
from llmrec.registry import Registry
from llmrec.testing import write_spec
from llmrec.trust import revoke

PLUGIN = Path(__file__).with_name("acme_datasets.py")

SPEC = """
version: 1
name: acme
inputs:
  user_id: {type: string}
resources:
  d: {type: dataset, config: {name: NAME, split: temporal}}
nodes:
  profile:
    type: user.profile
    inputs: {catalog: "${resources.d.catalog}", interactions: "${resources.d.train}", user_id: "${inputs.user_id}"}
  popular:
    type: retrieve.popular
    config: {k: 8}
    inputs: {interactions: "${resources.d.train}"}
  unseen:
    type: rerank.filter_seen
    inputs: {candidates: "${popular}", profile: "${profile}"}
outputs:
  top: ${unseen}
"""


def _spec(name: str) -> str:
    return SPEC.replace("NAME", name)


@pytest.fixture(scope="module")
def acme() -> ModuleType:
    spec = importlib.util.spec_from_file_location("acme_datasets", PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def registry(acme: ModuleType) -> Registry:
    return make_registry(acme)


def test_the_dataset_is_registered_under_its_plugin(registry: Registry, acme: ModuleType) -> None:
    entry = registry.datasets.entry("acme-tiny")
    assert entry is not None and entry.value is acme.TINY
    assert (entry.plugin.name, entry.plugin.source) == ("acme_datasets", "given")
    assert registry.provided_by("acme_datasets") == {"dataset": ["acme-tiny"]}
    assert acme.TINY in list_datasets(registry) and acme.TINY.options == ("n_users",)
    assert registry.datasets.entry("demo").plugin.name == "llmrec.nodes.data"  # built-ins: the same hook
    assert "acme-tiny" not in get_registry().datasets  # another registry in the same process lacks it


async def test_a_spec_validates_and_loads_it(tmp_path: Path, registry: Registry, acme: ModuleType) -> None:
    path = write_spec(tmp_path, _spec("acme-tiny"))
    with pytest.raises(llmrec.SpecErrors, match="unknown dataset 'acme-tiny'"):
        llmrec.validate(path)  # the process registry has no acme plugin
    graph = build(llmrec.load_spec(path), registry)
    assert graph.warnings == []
    runtime = llmrec.Runtime(graph)
    await runtime.start()
    try:
        data = runtime.resources["d"]
        assert data.name == "acme-tiny" and len(data.catalog) == acme.N_ITEMS and data.split == "temporal"
        result = await runtime.run({"user_id": "u0"})
    finally:
        await runtime.close()
    seen = data.train.seen("u0")
    expected = [i for i in data.train.popularity() if i not in seen]
    assert result.outputs["top"].ids == expected and result.outputs["top"].ids
    direct = load_dataset("acme-tiny", "temporal", registry=registry, n_users=3)
    assert sorted(c.id for c in direct.test_cases) == ["u0", "u1", "u2"]


def test_llmrec_eval_takes_the_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMREC_MODEL", raising=False)
    (tmp_path / "plugins").mkdir()
    shutil.copy(PLUGIN, tmp_path / "plugins" / PLUGIN.name)  # a plugin beside the spec, loaded with --trust
    spec = write_spec(tmp_path, _spec("demo"))
    try:
        code = main(["eval", str(spec), "--dataset", "acme-tiny", "--k", "3", "--json", "-", "--trust", "-q"])
    finally:
        revoke(tmp_path)
    out, err = capsys.readouterr()
    assert code == 0, err
    (result,) = json.loads(out)["results"]
    assert (result["dataset"], result["split"], result["n_cases"]) == ("acme-tiny", "temporal", 6)
    assert result["failures"]["count"] == 0 and "ndcg@3" in result["metrics"]


def test_an_unknown_name_gets_a_did_you_mean(tmp_path: Path, registry: Registry) -> None:
    _, errors, _ = check_graph(llmrec.load_spec(write_spec(tmp_path, _spec("acme-tiney"))), registry)
    (error,) = errors
    assert "unknown dataset 'acme-tiney'" in error.format()
    assert "Did you mean 'acme-tiny' (from acme_datasets)?" in error.format()
    with pytest.raises(DataError, match=r"Did you mean 'acme-tiny' \(from acme_datasets\)\?"):
        load_dataset("acme-tiney", registry=registry)


def test_bad_registrations_name_the_plugin(acme: ModuleType) -> None:
    def plugin(*infos: object) -> object:
        @llmrec.hookimpl
        def llmrec_register_datasets(register: object) -> None:
            for info in infos:
                register(info)  # type: ignore[operator]

        return type("bad_datasets", (), {"llmrec_register_datasets": staticmethod(llmrec_register_datasets)})

    duplicate = acme.TINY.__class__("demo", "mine", acme.load_tiny)
    with pytest.raises(PluginError, match="dataset 'demo', already registered by plugin 'llmrec.nodes.data'"):
        _ = make_registry(plugin(duplicate)).datasets
    with pytest.raises(PluginError, match="dataset name 'a/b' is invalid"):
        _ = make_registry(plugin(acme.TINY.__class__("a/b", "a path", acme.load_tiny))).datasets
    with pytest.raises(PluginError, match="expects a llmrec.data.datasets.DatasetInfo"):
        _ = make_registry(plugin({"name": "x"})).datasets
