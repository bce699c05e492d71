"""``llmrec plugin new NAME``: a plugin package that passes its own tests once installed (``pip install -e .``).

The package has what a published plugin needs and nothing more: a pyproject with the ``llmrec`` entry point, one
node type (a reranker over :class:`llmrec.Candidates` with a catalog input and a config), its tests with
``llmrec.testing``, an example spec and a README, as simonw/llm's plugin template does for llm.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


class ScaffoldError(ValueError):
    pass


def names(name: str) -> dict[str, str]:
    """The names derived from ``name`` (``price-cap``): distribution, module, entry point and node namespace."""
    if not NAME.match(name) or len(name) > 60:
        raise ScaffoldError(f"'{name[:80]}' is not a plugin name: lowercase letters and digits, words joined by '-' "
                            "or '_', starting with a letter (e.g. price-cap)")
    short = name.removeprefix("llmrec-").removeprefix("llmrec_").replace("-", "_")
    return {"dist": f"llmrec-{short.replace('_', '-')}", "module": f"llmrec_{short}", "ns": short}


PYPROJECT = '''[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "An llmrec plugin: node type {ns}.price_cap."
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["llmrec"]
classifiers = ["Framework :: llmrec"]

# llmrec finds the plugin through this entry point; its name ("{ns}") is what `llmrec plugins` shows and what
# LLMREC_LOAD_PLUGINS={ns} selects
[project.entry-points.llmrec]
{ns} = "{module}"

[project.optional-dependencies]
test = ["pytest>=8", "pytest-asyncio>=0.23"]

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
addopts = "-ra --import-mode=importlib -p no:cacheprovider"
'''

MODULE = '''"""{dist}: node type ``{ns}.price_cap``, registered through ``@llmrec.hookimpl``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

import llmrec

#: the llmrec plugin API this plugin supports (`llmrec plugins` shows it); another API's llmrec refuses the
#: plugin with a warning instead of failing
LLMREC_PLUGIN_API = ">=1,<2"


class PriceCapConfig(BaseModel):
    """The node's ``config:`` in a spec. ``extra="forbid"``: a misspelt key is a positioned error."""

    model_config = ConfigDict(extra="forbid")
    max_price: float = Field(ge=0, description="Drop candidates whose catalog price is above this.")
    keep_unpriced: bool = Field(True, description="Keep candidates whose item has no price.")


class PriceCap(llmrec.NodeType):
    """Keep the candidates a user can afford, in their order."""

    name = "{ns}.price_cap"  # node type names are namespace.name, lowercase; the namespace is the plugin's
    description = "Drop candidates whose catalog price is above max_price; the order is kept."
    Config = PriceCapConfig

    # run()'s parameters are the node's inputs (`inputs:` in a spec), checked against what feeds them
    async def run(self, candidates: llmrec.Candidates, catalog: llmrec.Catalog) -> llmrec.Candidates:
        kept = []
        for scored in candidates.items:
            item = catalog.get(scored.id)
            price = item.price if item is not None else None
            if price is None and self.config.keep_unpriced or price is not None and price <= self.config.max_price:
                kept.append(scored)
        return candidates.model_copy(update={{"items": kept, "source": "{ns}.price_cap"}})


@llmrec.hookimpl
def llmrec_register_node_types(register):
    register(PriceCap)
'''

TEST = '''"""The plugin's own tests: the node alone, then a spec that uses it through llmrec (the plugin installed)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import llmrec
from llmrec.testing import errors_of, run_spec
from {module} import PriceCap

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "spec.yaml"
CATALOG = llmrec.Catalog([llmrec.Item(id="a", title="A", price=10.0), llmrec.Item(id="b", title="B", price=99.0),
                          llmrec.Item(id="c", title="C")])


async def test_price_cap_keeps_what_fits_in_order() -> None:
    candidates = llmrec.Candidates(items=[llmrec.ScoredItem(id=i, score=s) for i, s in (("b", 3), ("c", 2), ("a", 1))])
    out = await PriceCap(PriceCap.Config(max_price=50)).run(candidates=candidates, catalog=CATALOG)
    assert out.ids == ["c", "a"]
    out = await PriceCap(PriceCap.Config(max_price=50, keep_unpriced=False)).run(candidates=candidates,
                                                                                catalog=CATALOG)
    assert out.ids == ["a"]


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed plugin, and only it (the entry point needs `pip install -e .` once)."""
    try:
        importlib.metadata.distribution("{dist}")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("{dist} is not installed: run `pip install -e .` in the plugin's folder first")
    monkeypatch.setenv("LLMREC_LOAD_PLUGINS", "{ns}")


def test_the_example_spec_validates(plugin: None) -> None:
    assert errors_of(EXAMPLE) == []


def test_a_misspelt_config_key_is_a_positioned_error(plugin: None, llmrec_spec) -> None:
    spec = llmrec_spec(EXAMPLE.read_text().replace("max_price:", "max_prise:"))
    errors = errors_of(spec)  # spec.yaml:LINE:COL: node 'affordable': ...
    assert any("unknown key 'max_prise'" in e and "Did you mean 'max_price'?" in e for e in errors), errors
    assert any("missing required key 'max_price'" in e for e in errors), errors


async def test_the_example_spec_runs(plugin: None) -> None:
    result = await run_spec(EXAMPLE, {{"user_id": "u1"}})
    prices = [item.price for item in result.outputs["recommendations"].items]
    assert prices and all(p is None or p <= 60 for p in prices)
'''

EXAMPLE = '''# Popular demo-shop items a user can afford: `llmrec run examples/spec.yaml -i user_id=u1`
version: 1
name: {ns}_example
inputs:
  user_id: {{type: string}}
resources:
  shop: {{type: dataset, config: {{name: demo, seed: 7}}}}
nodes:
  profile:
    type: user.profile
    inputs: {{catalog: "${{resources.shop.catalog}}", interactions: "${{resources.shop.train}}", user_id: "${{inputs.user_id}}"}}
  popular:
    type: retrieve.popular
    config: {{k: 100}}
    inputs: {{interactions: "${{resources.shop.train}}"}}
  affordable:
    type: {ns}.price_cap
    config:
      max_price: 60
    inputs: {{candidates: "${{popular}}", catalog: "${{resources.shop.catalog}}"}}
  result:
    type: present.items
    config: {{k: 5}}
    inputs: {{candidates: "${{affordable}}", catalog: "${{resources.shop.catalog}}", profile: "${{profile}}"}}
outputs:
  recommendations: ${{result}}
'''

README = '''# {dist}

An llmrec plugin: node type `{ns}.price_cap` keeps the candidates whose catalog price is at
most `max_price`, in their order.

```bash
pip install -e '.[test]'        # llmrec finds the plugin through its `llmrec` entry point
llmrec plugins                  # lists {ns}, with what it provides
llmrec run examples/spec.yaml -i user_id=u1
pytest                          # the plugin's own tests
```

In a spec:

```yaml
nodes:
  affordable:
    type: {ns}.price_cap
    config: {{max_price: 60}}
    inputs: {{candidates: "${{popular}}", catalog: "${{resources.shop.catalog}}"}}
```

Rename the node, change its config model and `run()`, and add node types, metrics or providers through the other
`llmrec_register_*` hooks (llmrec's docs/architecture.md lists them). Publish with `python -m build` and
`twine upload dist/*`: users then `pip install {dist}` and use it.
'''


def write(folder: Path, name: str, force: bool = False) -> list[Path]:
    """Write the plugin package ``llmrec-NAME`` under ``folder``; returns the files written."""
    n = names(name)
    root = folder / n["dist"]
    files = {
        root / "pyproject.toml": PYPROJECT.format(**n),
        root / "README.md": README.format(**n),
        root / "src" / n["module"] / "__init__.py": MODULE.format(**n),
        root / "tests" / f"test_{n['ns']}.py": TEST.format(**n),
        root / "examples" / "spec.yaml": EXAMPLE.format(**n),
    }
    existing = [p for p in files if p.exists()]
    if existing and not force:
        raise ScaffoldError(f"{root} already holds a plugin ({existing[0].name}); pass --force to overwrite")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return list(files)
