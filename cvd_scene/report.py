"""``report.html``: one self-contained page (works offline, opened as a file) showing a whole run.

Everything a person looks at is embedded (images and videos as data URIs); links to the exported assets are
relative, so the page keeps working when the run folder is moved. Sections appear for the stages that ran.
Imports matplotlib (Agg) lazily; must not import torch or any stage implementation.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from pathlib import Path

from cvd_scene.evaluate.paper import PAPER_CROSS_VIDEO, PAPER_PER_VIDEO
from cvd_scene.runfolder import RunLayout

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d232a}
header{background:#1d232a;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px 0;font-size:22px} header p{margin:0;color:#c8d0d8}
main{padding:8px 28px 40px 28px;max-width:1400px}
section{background:#fff;border-radius:8px;padding:14px 20px;margin:16px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:18px;margin:4px 0 10px 0} h3{font-size:15px;margin:14px 0 6px 0}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #dde2e7;padding:4px 9px;text-align:right} th{background:#eef1f4}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;image-rendering:auto} .row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0} figcaption{font-size:12px;color:#58636e;text-align:center}
.status-finished{color:#137333} .status-partial{color:#b06000} .status-failed{color:#c5221f}
.muted{color:#6b7680;font-size:13px} pre{background:#f1f3f5;padding:10px;overflow:auto;font-size:12px}
video{border-radius:4px;background:#000}
.banner{background:#fff3cd;border:1px solid #e0b000;padding:8px 12px}
"""


def _esc(x: object) -> str:
    return html.escape(str(x))


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _img(path: Path, alt: str, width: int | None = None) -> str:
    if not path.is_file():
        return ""
    w = f' width="{width}"' if width else ""
    return f'<img src="{_data_uri(path, "image/png")}" alt="{_esc(alt)}"{w}>'


def _fig_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(v: object, digits: int = 2) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if 0 < abs(v) < 0.1 else f"{v:.{digits}f}"
    if v is None:
        return "–"
    return str(v)


def _table(headers: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# -------------------------------------------------------------------------------------------- sections


def _section_overview(run_dir: Path, state: dict) -> str:
    cfg = state.get("config", {})
    rows = []
    for name, rec in state.get("stages", {}).items():
        status = rec.get("status", "?")
        rows.append(
            f'<tr><td>{_esc(name)}</td><td class="status-{_esc(status)}">{_esc(status)}</td>'
            f"<td>{_esc(_fmt(rec.get('seconds'), 1))}</td><td style='text-align:left'>{_esc(rec.get('message', ''))}</td></tr>"
        )
    stages = (
        "<table><thead><tr><th>stage</th><th>status</th><th>seconds</th><th>message</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else "<p class='muted'>No stage has run yet.</p>"
    )
    versions = ", ".join(f"{k} {v}" for k, v in state.get("versions", {}).items() if v)
    return (
        "<section><h2>Run</h2>"
        f"<p><b>Prompt:</b> {_esc(cfg.get('prompt', ''))} &nbsp; <b>Preset:</b> {_esc(state.get('preset'))} &nbsp; "
        f"<b>Seed:</b> {_esc(cfg.get('seed'))}</p>{stages}"
        f"<details><summary>Config</summary><pre>{_esc(json.dumps(cfg, indent=1))}</pre></details>"
        f"<p class='muted'>{_esc(versions)}</p></section>"
    )


def _covisibility_plot(cov: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    M = np.asarray(cov["covisibility"], dtype=float).mean(axis=-1)  # [V, V] mean over frames
    ids = cov.get("videos", [str(i) for i in range(len(M))])
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(ids), 1.0 + 0.45 * len(ids)))
    im = ax.imshow(M, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(ids)), ids, rotation=90)
    ax.set_yticks(range(len(ids)), ids)
    for i in range(len(ids)):
        for j in range(len(ids)):
            ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w" if M[i, j] < 0.6 else "k")
    ax.set_title("co-visibility (mean over frames)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _fig_png(fig)


def _section_plan(run_dir: Path) -> str:
    run = RunLayout(run_dir)
    if not run.stage("plan").is_dir():
        return ""
    parts = [_img(run.trajectories_png, "trajectories")]
    cov = _read_json(run.covisibility)
    extra = ""
    if cov and cov.get("covisibility"):
        parts.append(f'<img src="{_covisibility_plot(cov)}" alt="co-visibility matrix">')
        extra = f"<p>Coverage of the plan: <b>{_fmt(cov.get('coverage'))}</b></p>"
    cams = _read_json(run.cameras) or {}
    vids = cams.get("videos", [])
    if vids:
        fr = vids[0]["frames"][0]
        extra += (
            f"<p class='muted'>{len(vids)} videos × {len(vids[0]['frames'])} frames at "
            f"{fr['width']}×{fr['height']}</p>"
        )
    if cams.get("poses") == "unknown":
        extra += "<p>Pictures imported without poses: the registration stage estimates the cameras.</p>"
    return f"<section><h2>Plan</h2>{extra}<div class='row'>{''.join(p for p in parts if p)}</div></section>"


def _section_generate(run_dir: Path) -> str:
    run = RunLayout(run_dir)
    if not run.stage("generate").is_dir():
        return ""
    rep = _read_json(run.generate_report) or {}
    summary = ", ".join(
        f"{k}: {_fmt(rep[k])}" for k in ("generator", "source", "model", "seed", "unet_calls", "wall_time_s", "peak_memory_mb") if k in rep
    )
    videos = []
    for mp4 in sorted(run.videos.glob("*.mp4")):
        videos.append(
            f"<figure><video controls loop muted playsinline width='220' src='{_data_uri(mp4, 'video/mp4')}'></video>"
            f"<figcaption>{_esc(mp4.stem)}</figcaption></figure>"
        )
    sheet = _img(run.contact_sheet, "contact sheet")
    picture = _input_picture(run.stage("generate"), rep)
    return (
        f"<section><h2>Generated videos</h2><p class='muted'>{_esc(summary)}</p>{picture}"
        f"<div class='row'>{''.join(videos)}</div><h3>Contact sheet</h3>{sheet}</section>"
    )


def _input_picture(d: Path, rep: dict) -> str:
    """The picture every video started from (``generate --image``), as the model got it, with where it came from."""
    image = rep.get("image")
    if not isinstance(image, dict):
        return ""
    crop = d / str(image.get("crop_file", "input_crop.png"))
    fov = image.get("fov_x_deg_exif")
    lens = (
        f"EXIF focal length {_fmt(image.get('focal_35mm_mm'))} mm (35 mm equivalent): {_fmt(fov, 1)}° field of view"
        if fov is not None
        else "no EXIF focal length"
    )
    size = image.get("size") or ["?", "?"]
    caption = (
        f"Input picture {Path(str(image.get('source', ''))).name} ({size[0]}×{size[1]}, kept as generate/"
        f"{image.get('file', '')}), cropped as the model got it; {lens}; plan {_fmt(image.get('fov_x_deg_plan'), 1)}°"
    )
    return f"<h3>Input picture</h3><figure>{_img(crop, 'input picture', 192)}<figcaption>{_esc(caption)}</figcaption></figure>"


def _med(d: object) -> object:
    return d.get("median") if isinstance(d, dict) else None


def _section_register(run_dir: Path) -> str:
    rep = _read_json(RunLayout(run_dir).register_report)
    if rep is None:
        return ""
    rows = []
    for vid, v in sorted((rep.get("videos") or {}).items()):
        if not isinstance(v, dict):
            continue
        rows.append(
            [
                vid,
                f"{v.get('registered', '?')}/{v.get('total', '?')}",
                _med(v.get("rotation_error_deg")),
                _med(v.get("position_error_m")),
                v.get("status", ""),
                v.get("reason", ""),
            ]
        )
    table = _table(
        ["video", "registered", "rotation err. median (°)", "position err. median (m)", "status", "reason"], rows
    )
    overall = [
        [
            rep.get("mode"),
            f"{rep.get('registered', '?')}/{rep.get('total', '?')}",
            _med(rep.get("rotation_error_deg")),
            _med(rep.get("position_error_m")),
            None if _med(rep.get("position_error_fraction_of_extent")) is None
            else f"{100 * _med(rep.get('position_error_fraction_of_extent')):.2f} %",
            _med(rep.get("translation_direction_error_deg")),
            rep.get("reprojection_error_px"),
            rep.get("num_points"),
        ]
    ]
    head = _table(
        ["mode", "registered", "rotation err. (°)", "position err. (m)", "… of plan extent", "translation dir. err. (°)",
         "reprojection (px)", "points"],
        overall,
    )
    problems = "".join(f"<li>{_esc(p)}</li>" for p in rep.get("problems") or [])
    banner = ""
    if rep.get("poses") == "planned":
        why = (
            "registration failed, so the fit uses the planned cameras (the ones the generator was conditioned on)"
            if rep.get("fallback")
            else "register.mode is planned: the fit uses the planned cameras, not poses estimated from the frames"
        )
        banner = f"<p class='banner'><b>Planned cameras:</b> {_esc(why)}.</p>"
    align = rep.get("alignment") or {}
    if str(rep.get("poses", "")).startswith("estimated (no known poses)"):
        fov = (align.get("intrinsics") or {}).get("fov_x_deg")
        banner = (
            "<p class='banner'><b>Pictures without poses:</b> nothing to compare with; the world is levelled from the "
            f"cameras themselves. Up: {_esc(align.get('up', '?'))}. Scale: {_esc(align.get('scale_from', '?'))}. "
            f"Field of view after refinement: {_fmt(fov)}°.</p>"
        )
    return (
        f"<section><h2>Registration</h2>{banner}<p>{_esc(rep.get('message', ''))}</p>"
        f"<p class='muted'>medians against the plan, after a similarity alignment</p>{head}{table}"
        f"{'<ul>' + problems + '</ul>' if problems else ''}{_pose_error_plot(rep)}</section>"
    )


def _pose_error_plot(rep: dict) -> str:
    per_frame = rep.get("per_frame")
    if not isinstance(per_frame, list) or not per_frame:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
    by_vid: dict[str, list[dict]] = {}
    for row in per_frame:
        by_vid.setdefault(str(row.get("video")), []).append(row)
    for vid, rows in sorted(by_vid.items()):
        rows = sorted(rows, key=lambda r: r.get("frame", 0))
        f = [r.get("frame", i) for i, r in enumerate(rows)]
        axes[0].plot(f, [r.get("rotation_error_deg") for r in rows], marker=".", label=vid)
        axes[1].plot(f, [r.get("position_error_m") for r in rows], marker=".", label=vid)
    axes[0].set_ylabel("rotation error (°)")
    axes[1].set_ylabel("position error (m)")
    for ax in axes:
        ax.set_xlabel("frame")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    return f'<h3>Pose error against the plan</h3><img src="{_fig_png(fig)}" alt="pose errors">'


def _section_fit(run_dir: Path) -> str:
    run = RunLayout(run_dir)
    metrics = _read_json(run.fit_metrics)
    if metrics is None:
        return ""
    keys = [k for k in metrics if not isinstance(metrics[k], (dict, list))]
    table = _table(keys, [[metrics[k] for k in keys]])
    figs = []
    for pred in sorted(run.fit_eval.glob("*_pred.png"))[:8]:
        gt = pred.with_name(pred.name.replace("_pred.png", "_gt.png"))
        figs.append(
            f"<figure>{_img(gt, 'ground truth', 192)}{_img(pred, 'render', 192)}"
            f"<figcaption>{_esc(pred.name.replace('_pred.png', ''))}: ground truth | render</figcaption></figure>"
        )
    return (
        f"<section><h2>Fit</h2>{table}<h3>Held-out views</h3><div class='row'>{''.join(figs)}</div></section>"
    )


def _auc_row(name: str, m: dict) -> list[object]:
    r = list(m.get("rot_auc", (None,) * 3))
    t = list(m.get("trans_auc", (None,) * 3))
    return [name, *r, *t, m.get("precision"), m.get("matching_score")]


def _section_evaluate(run_dir: Path) -> str:
    cons = _read_json(RunLayout(run_dir).consistency)
    if cons is None:
        return ""
    if cons.get("skipped"):
        return f"<section><h2>Geometric consistency</h2><p>{_esc(cons['skipped'])}.</p></section>"
    headers = ["", "rot AUC@5", "@10", "@20", "trans AUC@5", "@10", "@20", "precision", "matching score"]
    out = ["<section><h2>Geometric consistency (the CVD paper's protocol, SIFT matches)</h2>"]
    for key, title, paper in (
        ("cross_video", "Across videos (corresponding frames)", PAPER_CROSS_VIDEO),
        ("within_video", "Within each video (first frame vs later frames)", PAPER_PER_VIDEO),
    ):
        ours = cons.get(key)
        if not isinstance(ours, dict):
            continue
        rows = [_auc_row("this run", ours)] + [_auc_row(n, m) for n, m in paper.items()]
        skipped = {k: v for k, v in ours.items() if k.startswith(("pairs", "skipped"))}
        out.append(f"<h3>{_esc(title)}</h3>{_table(headers, rows)}")
        if skipped:
            out.append(f"<p class='muted'>{_esc(', '.join(f'{k}: {v}' for k, v in skipped.items()))}</p>")
    warp = cons.get("warp")
    if isinstance(warp, dict) and warp.get("psnr") is not None:
        out.append(_warp_table(warp))
    cross = cons.get("cross_video_reconstruction")
    if isinstance(cross, dict) and cross.get("per_video"):
        out.append(_cross_video_table(cross))
    out.append("</section>")
    return "".join(out)


def _warp_table(warp: dict) -> str:
    """The warp measure (ground-truth depth), with its ceiling and floor when the run scored them."""
    rows = [["these videos", warp.get("psnr"), warp.get("ssim"), warp.get("kept_fraction")]]
    for arm, name in (("ceiling", "ceiling: ground-truth renders"), ("floor", "floor: same model, cross-view off")):
        m = warp.get(arm)
        if isinstance(m, dict):
            rows.append([name, m.get("psnr"), m.get("ssim"), m.get("kept_fraction")])
    scene = warp.get("known_scene")
    note = (
        f"<p class='muted'>Generated again on the reference {_esc(scene.get('scene_kind', '?'))} scene of the prompt, "
        "its ground-truth first frame held (evaluate/warp_known_scene.png).</p>"
        if isinstance(scene, dict)
        else ""
    )
    return (
        "<h3>Warp measure (ground-truth depth; any sharpness)</h3>"
        + _table(["", "PSNR (dB)", "SSIM", "kept fraction"], rows)
        + note
    )


def _cross_video_table(cross: dict) -> str:
    """Cross-video reconstruction: per video, the fit of the other videos scored at its cameras."""
    rows = [
        [vid, m.get("psnr"), m.get("flat_psnr"), m.get("ssim"), m.get("frames"), m.get("train_frames")]
        for vid, m in cross["per_video"].items()
    ]
    rows.append(["mean", cross.get("psnr"), cross.get("flat_psnr"), cross.get("ssim"), None, None])
    headers = ["held-out video", "PSNR (dB)", "flat: own mean colour (dB)", "SSIM", "frames", "training frames"]
    return (
        "<h3>Cross-video reconstruction (each video from a fit of the others)</h3>"
        + _table(headers, rows)
        + f"<p class='muted'>{_esc(cross.get('method', '?'))}, {_esc(cross.get('iterations', '?'))} iterations per fit, "
        f"{_esc(cross.get('poses', '?'))} poses (evaluate/cross_video.png).</p>"
    )


def _section_export(run_dir: Path) -> str:
    run = RunLayout(run_dir)
    d = run.export
    if not d.is_dir():
        return ""
    rows = []
    for p in sorted(d.iterdir()):
        if p.is_file():
            rel = os.path.relpath(p, run_dir)
            rows.append(f"<tr><td><a href='{_esc(rel)}'>{_esc(p.name)}</a></td><td>{_human_size(p.stat().st_size)}</td></tr>")
    rep = _read_json(run.export_file("report")) or {}
    counts = rep.get("splats") if isinstance(rep.get("splats"), dict) else {}
    note = ", ".join(f"{k}: {v}" for k, v in counts.items())
    skipped = rep.get("skipped") if isinstance(rep.get("skipped"), dict) else {}
    skipped_note = "Not written: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) if skipped else ""
    return (
        f"<section><h2>Exports</h2><p>{_esc(_export_source(rep.get('source')))}</p>"
        f"<table><thead><tr><th>file</th><th>size</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"<p class='muted'>{_esc(note)}</p><p class='muted'>{_esc(skipped_note)}</p></section>"
    )


def _export_source(source: object) -> str:
    """What the export was made from, as the export's report.json says (a splat fit is never called a NeRF)."""
    if not isinstance(source, dict):
        return ""
    method = f" (method {source['fit_method']})" if source.get("fit_method") else ""
    if source.get("kind") == "gaussians":
        return f"From the Gaussian splat fit{method}: {source.get('path', '?')}, {source.get('splats', '?')} splats."
    if source.get("kind") == "views":
        return f"From the NeRF fit{method}: {source.get('views', '?')} depth and colour views in {source.get('path', '?')}."
    return ""


def build_report(run_dir: str | os.PathLike) -> str:
    """The HTML text of the report of ``run_dir``."""
    run_dir = Path(run_dir)
    state = _read_json(RunLayout(run_dir).run_json) or {}
    sections = [
        _section_overview(run_dir, state),
        _section_plan(run_dir),
        _section_generate(run_dir),
        _section_register(run_dir),
        _section_fit(run_dir),
        _section_evaluate(run_dir),
        _section_export(run_dir),
    ]
    title = f"cvd-scene · {state.get('config', {}).get('prompt', run_dir.name)}"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_esc(title)}</title>"
        f"<style>{CSS}</style></head><body><header><h1>{_esc(title)}</h1>"
        f"<p>{_esc(run_dir.resolve())} · cvd-scene {_esc(state.get('cvd_scene_version', ''))} · "
        f"updated {_esc(state.get('updated', ''))}</p></header><main>{''.join(s for s in sections if s)}</main></body></html>"
    )


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``RUN_DIR/report.html`` atomically and return its path."""
    run_dir = Path(run_dir)
    text = build_report(run_dir)
    out = RunLayout(run_dir).report_html
    tmp = out.with_name(f".report.html.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, out)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    log.info("report: %s", out)
    return out
