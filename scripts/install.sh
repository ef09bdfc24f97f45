#!/usr/bin/env bash
# Installs cvd-scene and everything its tests and demo need, on Debian/Ubuntu with Python >= 3.10:
#   system packages: libusb-1.0-0 (open3d), chromium (report test), nodejs/npm (independent format readers)
#   .venv/          : torch 2.14.1 + torchvision 0.29.1, nerfstudio 1.1.5, gsplat 1.4.0, diffusers, pycolmap, open3d ...
#                     and .venv/bin/ffmpeg (imageio-ffmpeg's binary) for ns-render when there is no system ffmpeg
#   .tools/         : npm gltf-validator, @playcanvas/splat-transform (SOG, compressed PLY, viewer.html), three
#                     (the export tests draw mesh.glb with it), and the viewers the tests open splat files in:
#                     @sparkjsdev/spark (on three), @babylonjs/core + @babylonjs/loaders (+ @adobe/spz, its SPZ
#                     reader); used when present
# Idempotent: a second run only checks. Set CVD_SCENE_PYTHON to choose the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

need_apt=()
[ -e /usr/lib/x86_64-linux-gnu/libusb-1.0.so.0 ] || [ -e /usr/lib/aarch64-linux-gnu/libusb-1.0.so.0 ] || need_apt+=(libusb-1.0-0)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: system packages: ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
      || echo "install.sh: warning: could not install ${need_apt[*]} (tests that need them will skip)"
  else
    echo "install.sh: warning: no apt-get; install ${need_apt[*]} yourself (open3d needs libusb-1.0)"
  fi
fi

PY="${CVD_SCENE_PYTHON:-python3}"
stamp=".venv/.cvd-scene-installed"
want="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  # torch and torchvision first, as the pair nerfstudio needs (a CUDA build that also runs on the CPU).
  .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, torchvision, nerfstudio, gsplat, diffusers, pycolmap, trimesh, ray" \
    || { echo "install.sh: the Python install failed"; exit 1; }
  # rfc3987-syntax (an optional extra of jsonschema, pulled in by jupyter-events) compiles a grammar on import: 6 s
  # in every process that imports jsonschema, Ray's agents included, enough to time out a local Ray's start on a
  # busy 2-core machine. Nothing requires it; without it jsonschema skips only the "iri" format checks.
  .venv/bin/pip uninstall -y -q rfc3987-syntax 2>/dev/null || true
  .venv/bin/pip check
  echo "$want" > "$stamp"
fi

# nerfstudio shells out to `ffmpeg` (ns-render, even for image sequences): without a system ffmpeg, link the
# binary imageio-ffmpeg ships (pinned by its wheel) into the venv's bin, which is on PATH when the venv is used.
if ! command -v ffmpeg >/dev/null 2>&1 && [ ! -x .venv/bin/ffmpeg ]; then
  ff="$(.venv/bin/python -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')" \
    && ln -sf "$ff" .venv/bin/ffmpeg \
    || echo "install.sh: warning: no ffmpeg for nerfstudio (ns-render will fail; install the ffmpeg package)"
fi

if command -v npm >/dev/null 2>&1; then
  if [ ! -d .tools/node_modules/gltf-validator ] || [ ! -x .tools/node_modules/.bin/splat-transform ] \
     || [ ! -f .tools/node_modules/three/build/three.module.js ] \
     || ! grep -q '"version": "0.180.0"' .tools/node_modules/three/package.json \
     || [ ! -f .tools/node_modules/@sparkjsdev/spark/dist/spark.module.js ] \
     || [ ! -f .tools/node_modules/@babylonjs/loaders/SPLAT/index.js ] \
     || [ ! -f .tools/node_modules/@babylonjs/core/Engines/engine.js ] \
     || [ ! -f .tools/node_modules/@adobe/spz/dist/spz.js ]; then
    mkdir -p .tools
    (cd .tools && [ -f package.json ] || echo '{"private": true}' > package.json
     npm install --silent --no-audit --no-fund gltf-validator@2.0.0-dev.3.10 @playcanvas/splat-transform@3.7.0 \
       three@0.180.0 @sparkjsdev/spark@2.2.0 @babylonjs/core@9.28.0 @babylonjs/loaders@9.28.0 @adobe/spz@0.2.3 \
       >/dev/null 2>&1) \
      || echo "install.sh: warning: npm tools not installed (export reader tests will skip)"
  fi
fi
echo "install.sh: ready (.venv/bin/cvd-scene)"
