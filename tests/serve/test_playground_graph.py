"""The playground's graph in headless Chromium at 1280x800: laid out top-down at a readable size (labels of at
least 11 px as rendered, boxes apart and inside the scrolling graph area, edges from box to box), zoomable, with
a screenshot of each page in pytest's tmp_path. Only /v1/spec is needed, so the server runs without its lifespan
(no resources are loaded)."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmrec.testing import free_port

from .conftest import write

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 800}

# fourteen retrievers side by side: wider than the graph area at 100%, so it scrolls instead of shrinking
WIDE = """
name: wide
inputs:
  user_id: {type: string}
resources:
  shop:
    type: dataset
    config: {name: demo, seed: 7, split: user}
nodes:
%s  everything:
    type: fuse
    config: {method: rrf}
    inputs:
      lists: [%s]
outputs:
  items: ${everything}
""" % ("".join(f"  popular_{i:02d}:\n    type: retrieve.popular\n    config: {{k: {10 + i}}}\n"
               f"    inputs: {{interactions: \"${{resources.shop.train}}\"}}\n" for i in range(14)),
       ", ".join(f"\"${{popular_{i:02d}}}\"" for i in range(14)))

# what the page reports about its graph, in CSS pixels of the viewport
MEASURE = """() => {
  const host = document.getElementById("graph"), svg = host.querySelector("svg"), hr = host.getBoundingClientRect();
  const rect = (r) => ({left: r.left, top: r.top, right: r.right, bottom: r.bottom});
  const boxes = [...svg.querySelectorAll("g.node")].map((g) => ({
    id: g.dataset.node, ...rect(g.querySelector("rect").getBoundingClientRect()),
    texts: [...g.querySelectorAll("text")].map((t) => ({
      text: t.textContent, px: parseFloat(getComputedStyle(t).fontSize) * t.getScreenCTM().a,
      ...rect(t.getBoundingClientRect())}))}));
  const edges = [...svg.querySelectorAll("path.edge")].map((p) => {
    const m = p.getScreenCTM(), len = p.getTotalLength(), at = (l) => {
      const q = p.getPointAtLength(l).matrixTransform(m); return [q.x, q.y]; };
    const samples = [];
    for (let l = 0; l <= len; l += 4) samples.push(at(l));
    return {from: p.dataset.from, to: p.dataset.to, start: at(0), end: at(len), samples};
  });
  return {boxes, edges, scale: svg.getScreenCTM().a, svg: rect(svg.getBoundingClientRect()),
          host: {...rect(hr), clientWidth: host.clientWidth, clientHeight: host.clientHeight,
                 scrollWidth: host.scrollWidth, scrollHeight: host.scrollHeight,
                 contentLeft: hr.left + host.clientLeft - host.scrollLeft,
                 contentTop: hr.top + host.clientTop - host.scrollTop},
          pageWidth: document.documentElement.scrollWidth,
          zoomLabel: document.getElementById("zoom-level").textContent};
}"""


@pytest.fixture(scope="module")
def browser() -> Any:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's /usr/bin/chromium")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        try:
            yield b
        finally:
            b.close()


class Served:
    def __init__(self, spec: Path) -> None:
        import uvicorn

        from llmrec.serve.app import ServeOptions, create_app

        self.port = free_port()
        app = create_app(ServeOptions(spec=str(spec), reload_interval=0))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("server never answered /healthz")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _overlap(a: dict, b: dict, eps: float = 0.5) -> bool:
    return a["left"] < b["right"] - eps and b["left"] < a["right"] - eps and a["top"] < b["bottom"] - eps \
        and b["top"] < a["bottom"] - eps


def _inside(p: list[float], r: dict, margin: float) -> bool:
    return r["left"] + margin < p[0] < r["right"] - margin and r["top"] + margin < p[1] < r["bottom"] - margin


def check_readable(m: dict, graph: dict, min_px: float = 11.0) -> None:
    boxes = {b["id"]: b for b in m["boxes"]}
    expected = {"inputs"} | {n["id"] for n in graph["nodes"]} | {"out:" + o["name"] for o in graph["outputs"]}
    assert set(boxes) == expected and len(m["boxes"]) == len(expected)
    for b in m["boxes"]:
        for t in b["texts"]:
            what = f"{b['id']}: '{t['text']}'"
            assert t["px"] >= min_px, f"{what} is {t['px']:.1f} px"
            assert t["left"] >= b["left"] - 0.5 and t["right"] <= b["right"] + 0.5, f"{what} overflows its box"
            assert t["top"] >= b["top"] - 0.5 and t["bottom"] <= b["bottom"] + 0.5, f"{what} overflows its box"
    for a, b in itertools.combinations(m["boxes"], 2):
        assert not _overlap(a, b), f"{a['id']} and {b['id']} overlap"
    h = m["host"]
    for b in m["boxes"]:  # reachable by scrolling the graph area
        assert h["contentLeft"] - 0.5 <= b["left"] and b["right"] <= h["contentLeft"] + h["scrollWidth"] + 0.5, b["id"]
        assert h["contentTop"] - 0.5 <= b["top"] and b["bottom"] <= h["contentTop"] + h["scrollHeight"] + 0.5, b["id"]
    assert h["right"] <= VIEWPORT["width"] and m["pageWidth"] <= VIEWPORT["width"]  # the page itself never widens

    users = [n["id"] for n in graph["nodes"] if n["inputs"]]
    wanted = sorted([("inputs", u) for u in users] + [(e["from"], e["to"]) for e in graph["edges"]]
                    + [(s, "out:" + o["name"]) for o in graph["outputs"] for s in o["from"]])
    assert sorted((e["from"], e["to"]) for e in m["edges"]) == wanted
    for e in m["edges"]:
        src, dst = boxes[e["from"]], boxes[e["to"]]
        (x0, y0), (x1, y1) = e["start"], e["end"]
        assert src["left"] <= x0 <= src["right"] and abs(y0 - src["bottom"]) <= 1.5, f"{e['from']} -> {e['to']} start"
        assert dst["left"] <= x1 <= dst["right"] and abs(y1 - dst["top"]) <= 1.5, f"{e['from']} -> {e['to']} end"
        assert src["bottom"] < dst["top"], f"{e['from']} -> {e['to']} does not point down"
        for other in m["boxes"]:  # never drawn through a box it does not join
            if other["id"] not in (e["from"], e["to"]):
                crossed = any(_inside(p, other, 1.0) for p in e["samples"])
                assert not crossed, f"{e['from']} -> {e['to']} is drawn through {other['id']}"


def open_playground(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=10_000)
    assert not errors, errors
    return page


@pytest.mark.parametrize("name", ["quickstart", "movielens_llm", "news_ltr", "home_gym_plan"])
def test_the_graph_is_readable_at_1280x800(browser: Any, name: str, tmp_path: Path) -> None:
    with Served(ROOT / "specs" / f"{name}.yaml") as served:
        graph = httpx.get(served.url + "/v1/spec").json()["graph"]
        page = open_playground(browser, served.url)
        try:
            page.screenshot(path=str(tmp_path / f"playground-{name}.png"))
            page.locator("#graph").screenshot(path=str(tmp_path / f"graph-{name}.png"))
            m = page.evaluate(MEASURE)
            assert m["scale"] == pytest.approx(1.0, abs=1e-3) and m["zoomLabel"] == "100%"
            check_readable(m, graph)
            # the layers run top-down: inputs first, the outputs last
            tops = {b["id"]: b["top"] for b in m["boxes"]}
            assert all(tops["inputs"] < t for k, t in tops.items() if k != "inputs")
            assert max(t for k, t in tops.items() if not k.startswith("out:")) < min(
                t for k, t in tops.items() if k.startswith("out:"))

            page.click("#graph-tools [data-zoom=in]")
            zoomed = page.evaluate(MEASURE)
            assert zoomed["scale"] == pytest.approx(1.25, abs=1e-3) and zoomed["zoomLabel"] == "125%"
            check_readable(zoomed, graph, min_px=13.0)
            page.click("#graph-tools [data-zoom=fit]")  # the whole graph in view, without scrolling
            fit = page.evaluate(MEASURE)
            assert fit["scale"] <= 1.0
            assert fit["host"]["scrollWidth"] <= fit["host"]["clientWidth"] + 1
            assert fit["host"]["scrollHeight"] <= fit["host"]["clientHeight"] + 1
            page.screenshot(path=str(tmp_path / f"playground-{name}-fit.png"))
            page.click("#graph-tools [data-zoom='100']")
            assert page.evaluate(MEASURE)["scale"] == pytest.approx(1.0, abs=1e-3)
        finally:
            page.close()


def test_a_wide_graph_scrolls_at_full_size_and_zooms_with_ctrl_wheel(browser: Any, tmp_path: Path) -> None:
    with Served(write(tmp_path, WIDE)) as served:
        graph = httpx.get(served.url + "/v1/spec").json()["graph"]
        page = open_playground(browser, served.url)
        try:
            page.screenshot(path=str(tmp_path / "playground-wide.png"))
            m = page.evaluate(MEASURE)
            assert m["scale"] == pytest.approx(1.0, abs=1e-3)
            assert m["host"]["scrollWidth"] > m["host"]["clientWidth"]  # scrolls sideways instead of shrinking
            check_readable(m, graph)
            page.locator("#graph").scroll_into_view_if_needed()
            box = page.locator("#graph").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.keyboard.down("Control")
            page.mouse.wheel(0, 300)
            page.keyboard.up("Control")
            page.wait_for_function("document.querySelector('#graph svg').dataset.scale < 1", timeout=5_000)
            # a drag pans the graph area
            before = page.evaluate("document.getElementById('graph').scrollLeft")
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] / 2 - 120, box["y"] + box["height"] / 2, steps=5)
            page.mouse.up()
            assert page.evaluate("document.getElementById('graph').scrollLeft") > before
        finally:
            page.close()
