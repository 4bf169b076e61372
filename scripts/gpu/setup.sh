# Sourced at the start of every device run: installs the carried wheels (the GPU image lacks hydra,
# pymunk, pygame, gymnasium) into /tmp/site and puts wmquant's source on the path.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src
export PYTHONUNBUFFERED=1
export PATH=$PATH:/tmp/site/bin
wmquant() { python3 -m wmquant "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, hydra, pymunk, pygame, gymnasium; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
