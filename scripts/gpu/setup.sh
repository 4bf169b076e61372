# Sourced at the start of every device run: installs the carried wheels (the GPU image lacks hydra,
# pymunk, pygame, gymnasium) into /tmp/site and puts wmquant's source on the path.
# WHEELS names another carried folder of wheels: the Wall scripts need neither pygame nor pymunk
# (PushT only), and leaving pygame's 14 MB behind keeps the working tree under the device's 64 MiB.
# It also defines `log` and `wmquant` for the scripts.
set -e
# a time-stamped progress line, also appended to $LOG_FILE where a script names one
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a ${LOG_FILE:-/dev/null}; }
if [ -n "${WMQ_LOCAL:-}" ]; then  # a local smoke run at tiny sizes: the installed wmquant, no wheels, no GPU
  export PYTHONUNBUFFERED=1; OUT=${OUT:-/tmp/wmq_out}; mkdir -p $OUT
  wmquant() { python3 -m wmquant "$@"; }
  return 0
fi
WHEELS=${WHEELS:-.whl}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $WHEELS/*.whl
export PYTHONPATH=/tmp/site:$PWD/src
export PYTHONUNBUFFERED=1
export PATH=$PATH:/tmp/site/bin
wmquant() { python3 -m wmquant "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, hydra, gymnasium; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if ls $WHEELS/pygame-*.whl >/dev/null 2>&1; then python3 -c "import pymunk, pygame"; fi
