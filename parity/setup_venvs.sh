#!/usr/bin/env bash
# Builds one isolated venv per original reward package under $PARITY_DIR (default .parity/), pinned to the
# versions those packages need. They cannot live in MIRO's environment (transformers 4.49 vs 5.x), which
# is why MIRO re-implements them and why parity has to be checked across two environments.
# Each venv is marked done by a .installed file, so a rerun only builds what is missing.
set -euo pipefail
PARITY_DIR=${PARITY_DIR:-.parity}
PYTHON_BASE=${PYTHON_BASE:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
COMMON="$HERE/requirements-common.txt"

make_venv() {  # name, then extra pip commands run inside it
  local name=$1; shift
  local venv="$PARITY_DIR/venv-$name"
  if [[ -f "$venv/.installed" ]]; then return; fi
  rm -rf "$venv"
  "$PYTHON_BASE" -m venv "$venv"
  "$venv/bin/python" -m pip install -q -r "$COMMON"
  "$@" "$venv"
  touch "$venv/.installed"
  echo "built $venv"
}

imagereward_extras() {  # ImageReward 1.5 (BLIP) and the LAION aesthetic MLP it ships, on OpenAI CLIP
  local py="$1/bin/python"
  # openai-clip imports pkg_resources, which setuptools 81 removed
  "$py" -m pip install -q setuptools==80.9.0
  "$py" -m pip install -q --no-deps timm==0.6.13 openai-clip==1.0.1 image-reward==1.5
  "$py" -m pip install -q --no-deps --no-build-isolation fairscale==0.4.13
}

hpsv2_extras() {  # hpsv2 1.2.0 vendors its own open_clip; its wheel lacks the BPE vocab, openai-clip has it
  local py="$1/bin/python"
  "$py" -m pip install -q --no-deps hpsv2==1.2.0 openai-clip==1.0.1
  local site; site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  cp "$site/clip/bpe_simple_vocab_16e6.txt.gz" "$site/hpsv2/src/open_clip/bpe_simple_vocab_16e6.txt.gz"
}

t2v_extras() {  # t2v-metrics 3.0 (CLIP-FlanT5 VQAScore); its mm_utils imports cv2
  local py="$1/bin/python"
  "$py" -m pip install -q --no-deps t2v-metrics==3.0
  "$py" -m pip install -q opencv-python-headless==4.11.0.86
}

add_torchvision_shim() {  # PyPI's torchvision is a CUDA build; next to CPU torch its ops need MIRO's shim
  local py="$1/bin/python"
  local site; site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  cp "$HERE/../miro/utils/torchvision_shim.py" "$site/parity_torchvision_shim.py"
  echo "import parity_torchvision_shim as _s; _s.activate()" > "$site/parity_torchvision_shim.pth"
  "$py" -c "import torchvision.transforms" || { echo "torchvision does not import in $1"; exit 1; }
}

PARITY_VENVS=${PARITY_VENVS:-imagereward hpsv2 t2v}
mkdir -p "$PARITY_DIR"
for name in $PARITY_VENVS; do
  make_venv "$name" "${name}_extras"
  add_torchvision_shim "$PARITY_DIR/venv-$name"
done
