"""``OUT_DIR/index.html`` of a batch: one card a scene, linking into its run folder.

A card shows the first generated frame, a held-out render of the fit, the headline numbers of ``run.json`` and
links to the run's report, viewer page and exports; a failed job shows its stage and message instead. Images and
links are relative, so the page opens from the file system (``file://``) and from any web server of ``OUT_DIR``.
Must not import torch or Ray.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from cvd_scene.runfolder import RunLayout, frame_name

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;background:#f6f7f9;color:#1d2329}
h1{font-size:22px} .grid{display:flex;flex-wrap:wrap;gap:16px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.1);padding:12px;width:300px}
.card h2{font-size:15px;margin:0 0 8px 0} .imgs{display:flex;gap:6px} .imgs img{width:144px;border-radius:4px}
.status-finished{color:#137333} .status-failed{color:#c5221f} .status-interrupted,.status-running{color:#b06000}
.card p{font-size:13px;margin:6px 0} .card a{margin-right:10px;font-size:13px} .err{color:#c5221f;font-size:12px}
"""


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _first(paths) -> Path | None:
    paths = sorted(paths)
    return paths[0] if paths else None


def _numbers(run_dir: Path) -> list[str]:
    try:
        state = json.loads(RunLayout(run_dir).run_json.read_text())
    except (OSError, ValueError):
        return []
    stages = state.get("stages") or {}
    out = []
    reg = (stages.get("register") or {}).get("summary") or {}
    if reg.get("total"):
        out.append(f"registered {reg.get('registered')}/{reg.get('total')} ({reg.get('mode', '?')})")
    fit = (stages.get("fit") or {}).get("summary") or {}
    if isinstance(fit.get("psnr"), (int, float)):
        out.append(f"held-out PSNR {fit['psnr']:.2f} dB")
    seconds = sum(float(s.get("seconds") or 0) for s in stages.values() if isinstance(s, dict))
    if seconds:
        out.append(f"{seconds / 60:.1f} min of stages")
    return out


def card(out_dir: Path, job: dict) -> str:
    """One scene's card (``job``: an entry of ``batch.json``)."""
    slug = str(job.get("slug", ""))
    run_dir = out_dir / slug
    status = str(job.get("status", "?"))
    run = RunLayout(run_dir)
    frame = _first(run.frames.glob(frame_name("*", 0)))  # the first frame of the first video
    render = _first(run.fit_eval.glob("*_pred.png"))
    imgs = "".join(
        f"<img src='{_esc(p.relative_to(out_dir).as_posix())}' alt='{_esc(alt)}' title='{_esc(alt)}'>"
        for p, alt in ((frame, "first generated frame"), (render, "fit: held-out render"))
        if p is not None
    )
    links = []
    for path, label in ((run.report_html, "report"), (run.export_file("viewer"), "viewer"), (run.export, "exports")):
        if path.exists():
            links.append(f"<a href='{_esc(slug)}/{run.relative(path, run_dir)}'>{label}</a>")
    links.append(f"<a href='{_esc(job.get('log', ''))}'>log</a>")
    numbers = "".join(f"<p>{_esc(n)}</p>" for n in _numbers(run_dir))
    error = ""
    if status == "failed":
        error = f"<p class='err'>stage {_esc(job.get('stage'))}: {_esc(job.get('message', ''))}</p>"
    return (
        f"<div class='card' data-slug='{_esc(slug)}' data-status='{_esc(status)}'>"
        f"<h2>{_esc(job.get('prompt', ''))}</h2><p class='status-{_esc(status)}'>{_esc(status)}</p>"
        f"<div class='imgs'>{imgs}</div>{numbers}{error}<p>{''.join(links)}</p></div>"
    )


def build_gallery(out_dir: str | Path, doc: dict) -> str:
    """The gallery page of a batch (``doc``: the ``batch.json`` document)."""
    out_dir = Path(out_dir)
    counts = doc.get("counts", {})
    head = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    cards = "".join(card(out_dir, job) for job in doc.get("jobs", []))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>cvd-scene batch</title>"
        f"<style>{STYLE}</style></head><body><h1>cvd-scene batch: {len(doc.get('jobs', []))} scenes</h1>"
        f"<p>{_esc(head)} · <a href='batch.json'>batch.json</a></p><div class='grid'>{cards}</div></body></html>"
    )


def write_gallery(out_dir: str | Path, doc: dict) -> Path:
    """Write ``OUT_DIR/index.html`` (atomically); returns its path."""
    out_dir = Path(out_dir)
    path = out_dir / "index.html"
    tmp = out_dir / ".index.html.tmp"
    tmp.write_text(build_gallery(out_dir, doc), encoding="utf-8")
    tmp.replace(path)
    return path
