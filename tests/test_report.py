"""trtq report: the HTML page parsed back: every section, numbers equal to the sidecar and to compare,
images inlined as PNG, nothing fetched from outside; tables without matplotlib; same bytes twice."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import trtq
from trtq.cli import main
from trtq.config import QuantConfig
from trtq.reporting import SECTIONS, plots
from trtq.targets import TARGETS

import graphs


class Page(HTMLParser):
    """Sections, tables (by class, as rows of cell texts), image sources and every URL-bearing attribute."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.urls: list[str] = []
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "data") and v]
        if tag == "section":
            self.sections.append(a["id"])
        elif tag == "table":
            self._table = self.tables.setdefault(a.get("class") or f"table{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag == "td":  # header cells (th) are not kept
            self._cell = []
        elif tag == "img":
            self.images.append(a["src"])
        elif tag in ("link", "script"):
            self.urls.append(f"<{tag}>")

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None and self._table is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, cls: str) -> dict[str, list[str]]:
        """Body rows of a table keyed by their first cell."""
        return {r[0]: r[1:] for r in self.tables[cls] if r}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("report")
    fp32, calib, evaluation = d / "conv.onnx", d / "calib.npz", d / "eval.npz"
    import onnx

    onnx.save(graphs.conv_block(), str(fp32))
    np.savez(calib, **graphs.conv_data(24))
    np.savez(evaluation, **graphs.conv_data(12, seed=5))
    trtq.quantize(fp32, calib, d / "conv.int8.onnx", config=QuantConfig(fallback_budget=1), progress=False)
    return d / "conv.int8.onnx", fp32, evaluation


def test_report_sections_numbers_and_inlined_images(quantized, tmp_path):
    qdq, fp32, evaluation = quantized
    out = trtq.report(qdq, tmp_path / "r.html", data=evaluation, progress=False)
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    side = json.loads(qdq.with_name("conv.int8.trtq.json").read_text())

    assert page.sections == list(SECTIONS)
    assert all(u.startswith(("data:image/png;base64,", "#")) for u in page.urls), page.urls
    assert "http://" not in text and "https://" not in text
    assert len(page.images) >= 4  # SQNR bars, histograms, precision shares, sensitivity
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")

    summary = page.rows("summary")
    assert summary["ops quantized"] == [str(side["summary"]["quantized_nodes"])]
    assert summary["calibration samples"] == [str(side["summary"]["calibration_samples"])]
    # per-layer rows: compare's numbers and the sidecar's range of each tensor, worst first
    want = trtq.compare(fp32, qdq, evaluation)
    layers = [r for r in page.tables["layers"] if r]
    assert [r[0] for r in layers] == [t.name for t in want.tensors]
    for row, t in zip(layers, want.tensors, strict=True):
        assert float(row[2]) == pytest.approx(t.sqnr_db, abs=0.006)
        assert float(row[3]) == pytest.approx(t.local_sqnr_db, abs=0.006)
        assert float(row[4]) == pytest.approx(side["tensors"][t.name]["amax"], abs=0.006)
        assert float(row[5]) == pytest.approx(side["tensors"][t.name]["scale"], rel=1e-3)
    ranges = page.rows("ranges")
    assert set(ranges) <= {t.name for t in want.tensors} and ranges
    for name, row in ranges.items():
        assert float(row[1]) == pytest.approx(side["tensors"][name]["amax"], abs=1e-4)
    fallback = page.rows("fallback")
    assert fallback["kept in floating point"] == [", ".join(side["fallback"]["kept_float"])]
    assert float(fallback["output SQNR dB, after fallback"][0]) == pytest.approx(side["fallback"]["final_sqnr_db"],
                                                                                 abs=0.006)
    bias = page.rows("pass pass-bias_correction")
    assert bias["samples"] == [str(side["passes"]["bias_correction"]["samples"])]
    assert set(page.rows("check")) == set(TARGETS)
    assert page.rows("versions")["trtq"][0] == side["versions"]["trtq"]
    assert trtq.report(qdq, tmp_path / "again.html", data=evaluation, progress=False).read_bytes() == text.encode()


def test_report_without_matplotlib_or_data_keeps_its_tables(quantized, tmp_path, monkeypatch):
    qdq, _, _ = quantized
    monkeypatch.setattr(plots, "matplotlib_version", lambda: None)
    page = Page(trtq.report(qdq, tmp_path / "r.html").read_text(encoding="utf-8"))
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.images == [] and "matplotlib is not installed" in text
    assert page.sections == list(SECTIONS)
    side = json.loads(qdq.with_name("conv.int8.trtq.json").read_text())
    noisiest = {t["tensor"]: t for t in side["fidelity"]["noisiest"]}
    assert set(page.rows("layers") if noisiest else ()) == set(noisiest)
    assert "--data EVAL.npz" in text
    assert {"precision", "fallback", "check", "ranges"} <= set(page.tables)


def test_cli_report_and_quantize_report(quantized, tmp_path, capsys):
    qdq, fp32, evaluation = quantized
    assert main(["report", str(qdq), "-o", str(tmp_path / "a.html"), "--data", str(evaluation), "--quiet"]) == 0
    assert Page((tmp_path / "a.html").read_text()).sections == list(SECTIONS)
    calib = fp32.with_name("calib.npz")
    assert main(["quantize", str(fp32), "-o", str(tmp_path / "b.onnx"), "--calib-data", str(calib), "--quiet",
                 "--report", str(tmp_path / "b.html")]) == 0
    page = Page((tmp_path / "b.html").read_text())
    assert "calibration data" in (tmp_path / "b.html").read_text() and page.tables["layers"]
    # no sidecar beside the model: one message, exit status 2, no page
    assert main(["report", str(fp32), "-o", str(tmp_path / "c.html")]) == 2
    assert "trtq quantize" in capsys.readouterr().err and not (tmp_path / "c.html").exists()


def test_robustness_table_per_degradation_on_an_image_folder(tmp_path):
    import onnx
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    onnx.save(graphs.pooled_classifier(), str(tmp_path / "m.onnx"))
    flags = ["--image-size", "16"]
    assert main(["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "--calib-data",
                 str(tmp_path / "images"), *flags, "--quiet"]) == 0
    assert main(["report", str(tmp_path / "q.onnx"), "-o", str(tmp_path / "r.html"), "--data",
                 str(tmp_path / "images"), *flags, "--degrade", "noise,blur", "--quiet"]) == 0
    rows = [r for r in Page((tmp_path / "r.html").read_text()).tables["robustness"] if r]
    assert [r[0] for r in rows] == ["clean", "noise:mild", "blur:mild"]
    assert all(float(r[2]) > 0 for r in rows)


def test_report_lists_the_groups_the_automatic_fallback_screened_out(tmp_path):
    import onnx
    from test_sensitivity import _mlp_data, deep_mlp

    fp32, calib = tmp_path / "deep.onnx", tmp_path / "calib.npz"
    onnx.save(deep_mlp(), str(fp32))
    np.savez(calib, **_mlp_data(32))
    trtq.quantize(fp32, calib, tmp_path / "deep.int8.onnx", progress=False)  # automatic fallback: the default
    side = json.loads((tmp_path / "deep.int8.trtq.json").read_text())["fallback"]
    assert side["auto"] and side["kept_float"] == ["fc17"] and side["screened"]
    page = Page(trtq.report(tmp_path / "deep.int8.onnx", tmp_path / "r.html").read_text(encoding="utf-8"))
    rows = page.tables["screened"]
    assert [r[0] for r in rows if r] == [g["units"][0] for g in side["screened"]]
    assert sum(int(r[2]) for r in rows if r) == sum(len(g["units"]) for g in side["screened"])
