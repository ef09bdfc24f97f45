"""viewer.html (the SuperSplat viewer page splat-transform writes, scene and flythrough inlined) and `cvd-scene
view` (the export folder over HTTP or HTTPS); in headless Chromium (SwiftShader WebGL) the page opens upright at
the first planned camera."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cvd_scene.export.config import ExportConfig
from cvd_scene.export.pipeline import export_gaussians
from cvd_scene.export.serve import make_server, server_url
from cvd_scene.gaussians import SH_C0, Gaussians
from tests.browser import chromium
from tests.test_export import cli, random_gaussians
from tests.test_export import splat_transform as require_splat_transform


def fetch(url: str, context: ssl.SSLContext | None = None) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return response.read(), response.headers.get("Content-Type", "")


def test_view_serves_the_export_folder_over_http_and_https(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "scene.ply").write_bytes(b"ply\n" + bytes(range(256)))
    (folder / "mesh.glb").write_bytes(b"glTF")
    for https in (False, True):
        server = make_server(folder, port=0, cert_dir=tmp_path / "cert" if https else None)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            context = None
            if https:  # the self-signed certificate names localhost; trust exactly it
                context = ssl.create_default_context(cafile=str(tmp_path / "cert" / "cert.pem"))
            base = server_url(server, https, "")
            assert base.startswith("https://localhost:" if https else "http://localhost:")
            body, kind = fetch(base + "scene.ply", context)
            assert body == (folder / "scene.ply").read_bytes() and kind == "application/octet-stream"
            assert fetch(base + "mesh.glb", context)[1] == "model/gltf-binary"
        finally:
            server.shutdown()
            server.server_close()
    assert cli("view", str(tmp_path / "no-run"), "--quiet") == 2


def test_viewer_html_inlines_the_scene_and_the_flythrough(tmp_path):
    from cvd_scene.export.camera_path import supersplat_viewer_settings
    from tests.test_export import look_around_cameras

    require_splat_transform()
    settings = supersplat_viewer_settings(look_around_cameras(num_videos=2, num_frames=4), fps=10.0)
    report = export_gaussians(
        random_gaussians(300, 3), tmp_path, ExportConfig(formats=("ply", "viewer")), viewer_settings=settings
    )
    page = (tmp_path / "viewer.html").read_text(errors="replace")
    assert report["files"]["viewer"]["frame"] == "readers" and report["files"]["viewer"]["bytes"] > 1_000_000
    assert "planned flythrough" in page and "immersive-vr" in page  # the path, and WebXR's VR session type
    assert "<script" in page and 'src="http' not in page  # self-contained: nothing fetched from elsewhere
    report = export_gaussians(random_gaussians(30, 0), tmp_path / "run", ExportConfig(formats=("viewer",), frame="run"))
    assert "readers' frame" in report["skipped"]["viewer"]


# ------------------------------------------------------------------------------------------- in Chromium


def screenshot(
    url: str, out: Path, size: int, wait_s: float, init_script: str = "", then: tuple[str, ...] = (),
    ready: str = "", console: list[str] | None = None,
) -> list:
    """Open ``url`` in headless Chromium with SwiftShader WebGL, wait ``wait_s`` real seconds (the viewer loads
    and sorts in workers, which --virtual-time-budget does not run), or less once the expression ``ready`` is
    true, save a PNG screenshot (DevTools protocol). ``init_script`` runs before the page's own scripts; each
    expression of ``then`` is evaluated afterwards, two seconds apart; returns their values. The page's console
    messages and uncaught errors are appended to ``console``."""
    from websockets.sync.client import connect

    port = 9300 + int(time.time() * 1000) % 500
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:  # Chromium's helpers may still write
        proc = subprocess.Popen(
            [chromium(), "--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             "--ignore-gpu-blocklist", "--no-first-run", "--disable-background-networking",
             f"--user-data-dir={profile}", f"--window-size={size},{size}", f"--remote-debugging-port={port}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(150):
                try:
                    targets = json.loads(fetch(f"http://127.0.0.1:{port}/json")[0])
                    break
                except OSError:
                    time.sleep(0.2)
            page = next(t for t in targets if t["type"] == "page")
            with connect(page["webSocketDebuggerUrl"], max_size=2**28) as ws:
                count = 0

                def call(method: str, **params):
                    nonlocal count
                    count += 1
                    ws.send(json.dumps({"id": count, "method": method, "params": params}))
                    while True:
                        message = json.loads(ws.recv())
                        if message.get("id") == count:
                            return message.get("result", {})
                        if console is not None and message.get("method") == "Runtime.consoleAPICalled":
                            args = message["params"]["args"]
                            console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
                        if console is not None and message.get("method") == "Runtime.exceptionThrown":
                            details = message["params"]["exceptionDetails"]
                            console.append(f"error: {details.get('exception', {}).get('description', details)}")

                call("Emulation.setDeviceMetricsOverride", width=size, height=size, deviceScaleFactor=1, mobile=False)
                call("Page.enable")
                if console is not None:
                    call("Runtime.enable")
                if init_script:
                    call("Page.addScriptToEvaluateOnNewDocument", source=init_script)
                call("Page.navigate", url=url)
                deadline = time.monotonic() + wait_s
                while time.monotonic() < deadline:
                    time.sleep(0.5)
                    if ready and call("Runtime.evaluate", expression=ready).get("result", {}).get("value") is True:
                        break
                out.write_bytes(base64.b64decode(call("Page.captureScreenshot", format="png")["data"]))
                values = []
                for i, expression in enumerate(then):
                    time.sleep(2 if i else 0)
                    result = call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
                    thrown = result.get("exceptionDetails")
                    values.append(f"error: {thrown.get('exception', {}).get('description', thrown)}" if thrown else
                                  result.get("result", {}).get("value"))  # fmt: skip
                return values
        finally:
            proc.terminate()
            proc.wait(timeout=30)


XR_STUB = """
window.xrRequests = []; window.xrFrames = 0; window.xrPoses = 0; window.xrDraws = 0; window.xrErrors = [];
let inXrFrame = false;
for (const ctx of [WebGLRenderingContext, WebGL2RenderingContext]) {
  ctx.prototype.makeXRCompatible = async () => {};
  for (const name of ["drawArrays", "drawElements", "drawArraysInstanced", "drawElementsInstanced"]) {
    const draw = ctx.prototype[name];
    if (draw) ctx.prototype[name] = function (...args) { if (inXrFrame) window.xrDraws++; return draw.apply(this, args); };
  }
}
const eye = (name, x) => {
  const m = new Float32Array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, x, 1.6, 0, 1]);
  const inv = new Float32Array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, -x, -1.6, 0, 1]);
  const transform = { position: { x, y: 1.6, z: 0, w: 1 }, orientation: { x: 0, y: 0, z: 0, w: 1 }, matrix: m,
                      inverse: { position: { x: -x, y: -1.6, z: 0, w: 1 }, orientation: { x: 0, y: 0, z: 0, w: 1 },
                                 matrix: inv } };
  const f = 1, near = 0.1, far = 1000;  // 90 degrees, as a headset's projection
  const projectionMatrix = new Float32Array([f, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) / (near - far), -1,
                                             0, 0, 2 * far * near / (near - far), 0]);
  return { eye: name, projectionMatrix, transform, recommendedViewportScale: null,
           requestViewportScale() {} };
};
const space = { getOffsetReferenceSpace() { return space; }, addEventListener() {}, removeEventListener() {} };
class StubLayer {
  constructor(session, gl) { this.framebuffer = null; this.framebufferWidth = innerWidth;
                             this.framebufferHeight = innerHeight; this.antialias = false; }
  getViewport(view) { const w = innerWidth / 2;
                      return { x: view.eye === "right" ? w : 0, y: 0, width: w, height: innerHeight }; }
  static getNativeFramebufferScaleFactor() { return 1; }
}
window.XRWebGLLayer = StubLayer;
window.XRRigidTransform ??= class { constructor(p, o) { this.position = p; this.orientation = o; } };
class StubSession extends EventTarget {
  renderState = { baseLayer: null, depthNear: 0.1, depthFar: 1000, inlineVerticalFieldOfView: null, layers: [] };
  inputSources = []; visibilityState = "visible"; enabledFeatures = ["local-floor"]; environmentBlendMode = "opaque";
  supportedFrameRates = null; frameRate = 72;
  updateRenderState(state) { Object.assign(this.renderState, state); }
  async requestReferenceSpace() { return space; }
  requestAnimationFrame(callback) {  // the headset's frame loop: a pose for two eyes every 1/72 s
    const frame = { session: this, getViewerPose: () => { window.xrPoses++;
      return { transform: eye("none", 0).transform, views: [eye("left", -0.032), eye("right", 0.032)],
               emulatedPosition: false }; },
      getPose: () => null, getHitTestResults: () => [], detectedPlanes: new Set(), trackedAnchors: new Set() };
    return setTimeout(() => { window.xrFrames++;
      inXrFrame = true;
      try { callback(performance.now(), frame); } catch (e) { window.xrErrors.push(String(e)); }
      inXrFrame = false; }, 14);
  }
  cancelAnimationFrame(id) { clearTimeout(id); }
  async end() { this.dispatchEvent(new Event("end")); }
}
const xr = new EventTarget();
xr.isSessionSupported = async (mode) => mode === "immersive-vr";
xr.requestSession = async (mode) => { window.xrRequests.push(mode); return new StubSession(); };
Object.defineProperty(navigator, "xr", { value: xr, configurable: true });
"""
"""A WebXR stand-in: offers immersive-vr, records the sessions a page requests and grants them a session whose
frame loop hands the page a two-eye viewer pose every 14 ms (counting the frames, the poses the page asks for, the
WebGL draw calls it makes inside the frame callbacks and the errors they throw)."""


def splats_from_depth(run: Path, scale: float = 0.6) -> Gaussians:
    """Isotropic splats on every ground-truth depth pixel of the run's frames, coloured by the frames."""
    import imageio.v3 as iio

    from cvd_scene.camera_io import read_cameras_json

    cams = read_cameras_json(run / "plan" / "cameras.json")
    means, colours, sizes = [], [], []
    for v, vid in enumerate(cams.video_ids):
        for f in range(cams.num_frames):
            depth = np.load(run / "generate" / "gt" / "depth" / vid / f"{f:04d}.npy")  # [H, W]
            image = iio.imread(run / "generate" / "frames" / vid / f"{f:04d}.png")[..., :3] / 255.0
            ys, xs = np.nonzero(depth > 0)
            z, K, T = depth[ys, xs], cams.K[v, f], cams.world_from_cam[v, f]
            cam = np.stack([(xs + 0.5 - K[0, 2]) / K[0, 0] * z, (ys + 0.5 - K[1, 2]) / K[1, 1] * z, z], axis=1)
            means.append(cam @ T[:3, :3].T + T[:3, 3])
            colours.append(image[ys, xs])
            sizes.append(z / K[0, 0] * scale)  # about a pixel's footprint
    n = sum(len(m) for m in means)
    return Gaussians(
        means=np.concatenate(means),
        log_scales=np.log(np.repeat(np.concatenate(sizes)[:, None], 3, axis=1)),
        quats_wxyz=np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)),
        opacity_logits=np.full(n, 4.0),
        sh_dc=(np.concatenate(colours) - 0.5) / SH_C0,
        sh_rest=np.zeros((n, 0, 3)),
    )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


@pytest.fixture(scope="module")
def depth_room(tmp_path_factory) -> Path:
    """The splats-on-depth room of the viewer tests (2 videos x 4 frames, 96 px) exported as scene.ply,
    scene.splat and scene.spz (v3) in the readers' frame."""
    from tests.fit_helpers import make_run

    root = tmp_path_factory.mktemp("viewers")
    make_run(root / "run", num_videos=2, num_frames=4, size=96, points_per_frame=10)
    options = ExportConfig(formats=("ply", "splat", "spz"), spz_versions=(3,))
    export_gaussians(splats_from_depth(root / "run"), root / "export", options)
    return root


@pytest.mark.slow  # about a minute: a reference room, SOG encoding, and the viewer loading in SwiftShader
def test_viewer_html_opens_upright_at_the_first_planned_camera(depth_room, tmp_path):
    import imageio.v3 as iio
    from PIL import Image

    from cvd_scene.camera_io import read_cameras_json
    from cvd_scene.export.camera_path import supersplat_viewer_settings

    if chromium() is None:
        pytest.skip("Chromium is not installed (scripts/install.sh installs it)")
    require_splat_transform()
    run = depth_room / "run"
    cams = read_cameras_json(run / "plan" / "cameras.json")
    export_gaussians(
        splats_from_depth(run), tmp_path / "export", ExportConfig(formats=("ply", "viewer")),
        viewer_settings=supersplat_viewer_settings(cams),
    )  # fmt: skip
    shot = tmp_path / "shot.png"
    # WebXR stubbed: the headset offers immersive-vr; pressing the page's VR button must request that session.
    console: list[str] = []
    button, before, after, xr_loop = screenshot(
        (tmp_path / "export" / "viewer.html").as_uri() + "?noanim", shot, 192, wait_s=25, init_script=XR_STUB,
        then=(
            "document.querySelector('.sse-vrMode').className", "window.xrRequests.length",
            "document.querySelector('.sse-vrMode').click() ?? window.xrRequests",
            "({frames: window.xrFrames, poses: window.xrPoses, draws: window.xrDraws, errors: window.xrErrors})",
        ),
        console=console,
    )  # fmt: skip
    assert "sse-hidden" not in button, button  # the page offers VR
    screenshot((tmp_path / "export" / "viewer.html").as_uri() + "?noui&noanim", shot, 192, wait_s=25)
    seen = np.asarray(Image.open(shot).convert("RGB").resize((96, 96), Image.BILINEAR)) / 255.0
    frame = iio.imread(run / "generate" / "frames" / cams.video_ids[0] / "0000.png")[..., :3] / 255.0
    straight, turned = psnr(seen, frame), psnr(seen, np.rot90(frame, 2))
    assert (before, after) == (0, ["immersive-vr"]), (before, after)  # and asks the headset for a VR session
    # and draws in it: the session's frame loop called the page back, which asked for the eyes' pose and drew
    print(f"viewer.html in the stubbed VR session: {xr_loop}")
    assert xr_loop["frames"] >= 1 and xr_loop["poses"] >= 1 and xr_loop["draws"] >= 1, (xr_loop, console)
    assert not xr_loop["errors"], (xr_loop, console)
    print(f"viewer.html from the first planned camera: {straight:.1f} dB, turned 180 degrees {turned:.1f} dB")
    assert straight > 18.0 and straight > turned + 3.0, (straight, turned)  # measured 20.0 and 15.0 dB


@pytest.mark.slow  # about two minutes: three pages, each SOG-encoded and loaded in SwiftShader
@pytest.mark.parametrize("name", ["scene.ply", "scene.splat", "scene.spz"])
def test_the_supersplat_viewer_shows_each_splat_file_upright(depth_room, tmp_path, name):
    """The SuperSplat viewer page made by splat-transform from scene.ply, scene.splat and scene.spz as they are
    (each read in its readers' frame), with viewer_settings.json: upright at the first planned camera."""
    import imageio.v3 as iio
    from PIL import Image

    from cvd_scene.camera_io import read_cameras_json, write_json
    from cvd_scene.export import splat_transform
    from cvd_scene.export.camera_path import supersplat_viewer_settings

    if chromium() is None:
        pytest.skip("Chromium is not installed (scripts/install.sh installs it)")
    require_splat_transform()
    run = depth_room / "run"
    cams = read_cameras_json(run / "plan" / "cameras.json")
    write_json(tmp_path / "viewer_settings.json", supersplat_viewer_settings(cams))
    page = splat_transform.convert(
        depth_room / "export" / name, tmp_path / "page.html", viewer_settings=tmp_path / "viewer_settings.json"
    )
    shot = tmp_path / "shot.png"
    screenshot(page.as_uri() + "?noui&noanim", shot, 192, wait_s=25)
    seen = np.asarray(Image.open(shot).convert("RGB").resize((96, 96), Image.BILINEAR)) / 255.0
    frame = iio.imread(run / "generate" / "frames" / cams.video_ids[0] / "0000.png")[..., :3] / 255.0
    straight, turned = psnr(seen, frame), psnr(seen, np.rot90(frame, 2))
    print(f"SuperSplat viewer, {name}: {straight:.1f} dB, turned 180 degrees {turned:.1f} dB")
    assert straight > 18.0 and straight > turned + 3.0, (straight, turned)


# ------------------------------------------------------------------ two more viewer libraries, each as documented

VIEWER_PAGES = {
    # page, the run's world as the page's scene shows it (x, y, z multiplied by these), npm package it needs
    "spark": ("spark_view.html", (-1.0, 1.0, -1.0), "@sparkjsdev/spark"),  # turn 180 deg about x of the +y-down file
    "babylon": ("babylon_view.html", (-1.0, 1.0, 1.0), "@babylonjs/loaders"),  # y negated, left-handed scene
}
"""Spark: the readers' frame (x, y, z of the run turned to -x, -y, z) turned 180 degrees about x as its README
turns a splat file shows the run's world as (-x, y, -z): upright, facing the other way. Babylon.js negates y of
every splat file in its left-handed scene: (-x, y, z), upright and, being left-handed, not mirrored."""


@pytest.mark.parametrize(
    ("viewer", "name"),
    [("babylon", "scene.spz")]  # the default suite: about 45 s with the room; the others 15-30 s each on 2 cores
    + [pytest.param(v, n, marks=pytest.mark.slow) for v in ("babylon", "spark")
       for n in ("scene.ply", "scene.splat", "scene.spz") if (v, n) != ("babylon", "scene.spz")],
)  # fmt: skip
def test_spark_and_babylon_show_each_splat_file_upright(depth_room, tmp_path, viewer, name):
    """Spark (three.js) and Babylon.js, each opening the file the way its documentation does, from the first
    planned camera expressed in the frame the library shows: the frame, not the frame turned 180 degrees."""
    import imageio.v3 as iio
    from PIL import Image

    from cvd_scene.camera_io import read_cameras_json
    from cvd_scene.export.camera_path import vertical_fov_deg
    from tests.test_export import NODE_MODULES, REPO

    page, axes, package = VIEWER_PAGES[viewer]
    if chromium() is None:
        pytest.skip("Chromium is not installed (scripts/install.sh installs it)")
    if not (NODE_MODULES / package / "package.json").is_file():
        pytest.skip(f"{NODE_MODULES / package} is missing (scripts/install.sh installs it)")
    site = tmp_path / "site"
    site.mkdir()
    (site / page).write_bytes((REPO / "tests" / "tools" / page).read_bytes())
    (site / name).symlink_to(depth_room / "export" / name)
    (site / "node_modules").symlink_to(NODE_MODULES)
    cams = read_cameras_json(depth_room / "run" / "plan" / "cameras.json")
    c2w = cams.world_from_cam[0, 0]  # OpenCV axes: looks along +z of the camera
    pos, look = np.multiply(axes, c2w[:3, 3]), np.multiply(axes, c2w[:3, 3] + c2w[:3, 2])
    fov = vertical_fov_deg(cams.K[0, 0, 1, 1], cams.height)
    server = make_server(site, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    console: list[str] = []
    try:
        url = (f"http://127.0.0.1:{server.server_address[1]}/{page}?file={name}&fov={fov}"
               f"&pos={','.join(map(str, pos))}&look={','.join(map(str, look))}")  # fmt: skip
        shot = tmp_path / "shot.png"
        (ready,) = screenshot(url, shot, 192, wait_s=40, then=("window.viewReady === true",), ready="window.viewReady",
                              console=console)  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert ready is True, console
    seen = np.asarray(Image.open(shot).convert("RGB").resize((96, 96), Image.BILINEAR)) / 255.0
    frame = iio.imread(depth_room / "run" / "generate" / "frames" / cams.video_ids[0] / "0000.png")[..., :3] / 255.0
    straight, turned = psnr(seen, frame), psnr(seen, np.rot90(frame, 2))
    print(f"{viewer}, {name}: {straight:.1f} dB, turned 180 degrees {turned:.1f} dB")
    # measured: Babylon.js 20.0 dB for each file, Spark 19.7/19.7/19.6 dB (PLY/.splat/SPZ); 15.0 dB turned
    assert straight > 18.0 and straight > turned + 3.0, (straight, turned, console)
