"""``report.html``: one self-contained page (no network, no external file) for a run folder.

The page holds the run's data as JSON, the curves as base64 PNGs, and its own CSS and JavaScript
(``assets/``), so it can be mailed, attached to an issue or opened from a laptop's disk. It is
rewritten atomically, so a browser refreshing it during training never reads half a file.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import time
from importlib import resources
from pathlib import Path

from picorl.report.data import load_run

REPORT_FILE = "report.html"
CURVES_FILE = "training_curves.png"
_PLACEHOLDER = re.compile(r"\{\{([A-Z]+)\}\}")


def _asset(name: str) -> str:
    return resources.files("picorl.report").joinpath("assets", name).read_text(encoding="utf-8")


def _finite(value: object) -> object:
    """``value`` with NaN and infinities as None (JSON.parse rejects them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _script_json(data: object) -> str:
    """JSON that is safe inside a <script> element: no '<', '>' or '&' that could close or open a tag."""
    text = json.dumps(_finite(data), default=str, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _curves_html(run_dir: Path) -> str:
    pngs = sorted(run_dir.glob("*.png"), key=lambda p: (p.name != CURVES_FILE, p.name))
    if not pngs:
        return '<p class="empty">No training_curves.png yet.</p>'
    parts = []
    for png in pngs:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f'<img class="curves" alt="{html.escape(png.name)}" src="data:image/png;base64,{data}">')
    return "\n".join(parts)


def render_report(run_dir: Path) -> str:
    """The report page of ``run_dir`` as an HTML string."""
    run_dir = Path(run_dir)
    data = load_run(run_dir)
    total = data["updates_total"]
    meta = (
        f"model {data['model']} · algo {data['algo']} · update {data['updates_done']}"
        + (f" of {total}" if total is not None else "")
        + f" · {len(data['rollouts'])} rollout groups, {len(data['evals'])} eval tasks"
        + f" · written {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    values = {
        "TITLE": html.escape(f"picorl run {data['name']}"),
        "META": html.escape(meta),
        "CSS": _asset("report.css"),
        "JS": _asset("report.js"),
        "CURVES": _curves_html(run_dir),
        "DATA": _script_json(data),
    }
    # One pass, so text inserted for one placeholder is never scanned for another.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], _asset("report.html"))


def write_report(run_dir: Path, replot: bool = False) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path.

    ``replot=True`` redraws ``training_curves.png`` from ``metrics.jsonl`` first (the trainer has
    just drawn it when it refreshes the report, so it passes False).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir} is not a picorl run folder (no metrics.jsonl); pass runs/NAME")
    if replot:
        from picorl.logging.plots import plot_training_curves

        plot_training_curves(run_dir / "metrics.jsonl", run_dir / CURVES_FILE)
    out = run_dir / REPORT_FILE
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render_report(run_dir), encoding="utf-8")
    os.replace(tmp, out)
    return out


def refresh_report(run_dir: Path, warn=print) -> None:
    """Redraw the curves and rewrite the report during training. A report that fails to render is
    reported and skipped: it must never end the run it describes."""
    try:
        write_report(run_dir, replot=True)
    except Exception as e:  # any rendering bug; the run's own files are untouched
        warn(f"picorl: warning: report.html not refreshed ({type(e).__name__}: {e})")
