#!/usr/bin/env bash
# The wheels scripts/gpu_check.sh needs on the GPU machine, downloaded (and DeepSpeed built) HERE, on a
# machine with PyPI access, into .whl/ at the repository root (ignored: /.whl/ in .gitignore).
#
#   scripts/gpu_wheels.sh          # then a device call with carry [".whl"] runs: bash scripts/gpu_check.sh
#   GPU_PY=3.11 GPU_WHL=/tmp/whl311 scripts/gpu_wheels.sh   # the same set for this machine's Python (tests)
#
# That machine (Python 3.12, x86-64, torch 2.11 + CUDA 13, transformers 5.17, no internet) lacks what
# the suite imports on the paths the check takes: pydantic, mlflow (and the SQLite store's
# sqlalchemy + alembic) and deepspeed. Only those and their own missing requirements travel: the
# packages already in its image (the list below, from the device's KINDS.md) stay as they are, since
# a carried copy would shadow them. The pins are the versions this suite is tested with here.
# Not carried: datasets (Hub data only; the check uses --data-dir bundled), submitit (SLURM only),
# mlflow's server requirements (flask, graphene, gunicorn, huey, docker, skops: `bench ui` only).
# DeepSpeed is an sdist on PyPI: it is built here into a pure-Python wheel with DS_BUILD_OPS=0 (ops are
# JIT-built when used; the suite's ZeRO-2 with torch's AdamW uses none).
# At the end: every carried wheel's requirements (for Python 3.12 on Linux x86-64) are checked against
# the carried set and the image's list, and the total size is printed (the tree that travels, tracked
# files included, must stay under 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${GPU_WHL:-.whl}
py=${GPU_PY:-3.12}
rm -rf "$dest" && mkdir -p "$dest"

WHEELS=(
  # the suite's own requirements missing there
  pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
  typing-extensions==4.16.0  # in the image, of an unknown version; pydantic 2.13 needs >= 4.14.1
  mlflow==3.17.2  # the whole of mlflow-skinny and mlflow-tracing is inside it: those two wheels stay behind
  # mlflow-skinny's and mlflow-tracing's requirements missing there
  cachetools==7.3.3 databricks-sdk==0.162.0 google-auth==2.63.0 pyasn1-modules==0.4.2 pyasn1==0.6.3 rsa==4.7.2
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3
  importlib-metadata==9.1.0 opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
  opentelemetry-semantic-conventions==0.66b2 python-dotenv==1.2.2 sqlparse==0.6.1
  # the SQLite tracking store (runs go to sqlite:///.../mlflow.db)
  sqlalchemy==2.1.9 greenlet==3.2.4 alembic==1.20.1 mako==1.4.3
  cryptography==48.0.0 cffi==2.0.0 pycparser==3.0  # the store's model-registry tables import Fernet
  # deepspeed's requirement missing there (deepspeed itself is built below)
  hjson==3.1.0
)
DEEPSPEED=deepspeed==0.19.8

platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  "${platforms[@]}" -d "$dest" "${WHEELS[@]}"

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
python3 -m pip download -q --no-deps --no-binary=:all: -d "$build" "$DEEPSPEED"
# --no-build-isolation: setup.py imports torch (this machine's CPU build; nothing of it is compiled in)
DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps --no-build-isolation -w "$dest" "$build"/deepspeed-*.tar.gz

python3 - "$dest" "$py" <<'EOF'
"""Check the carried wheels' requirements against the carried set and the image's packages."""
import re
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
# mlflow's server side (flask, ...) is not carried: the check never starts `mlflow server` / `bench ui`
SERVER_ONLY = {"flask", "flask-cors", "docker", "graphene", "gunicorn", "huey", "skops", "waitress"}
# every file of these two wheels is in the mlflow wheel (same version): only their metadata stays behind
INSIDE_MLFLOW = {"mlflow-skinny", "mlflow-tracing"}
ENV = {"python_version": sys.argv[2], "python_full_version": sys.argv[2] + ".0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}

dest = Path(sys.argv[1])
wheels = sorted(dest.glob("*.whl"))
carried = {}
for wheel in wheels:
    name, version, _, _ = parse_wheel_filename(wheel.name)
    carried[canonicalize_name(name)] = version
image = {canonicalize_name(n) for n in IMAGE}
problems = []
for wheel in wheels:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        lines = zf.read(meta).decode().splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(ENV):
            continue
        key = canonicalize_name(req.name)
        if key in carried:
            if req.specifier and not req.specifier.contains(carried[key], prereleases=True):
                problems.append(f"{wheel.name}: needs {req}, carried {carried[key]}")
        elif key not in image | SERVER_ONLY | INSIDE_MLFLOW:
            problems.append(f"{wheel.name}: needs {req}: neither carried nor in the image")
shadowed = sorted(set(carried) & image)
total = sum(w.stat().st_size for w in wheels)
for wheel in wheels:
    print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {dest}/")
if shadowed:
    print("carried although the image has them (another version):", ", ".join(shadowed))
for problem in problems:
    print("UNMET:", problem)
if len(carried) != len(wheels):
    print("ERROR: two versions of one package"); sys.exit(1)
sys.exit(1 if problems else 0)
EOF
tracked=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
wheels=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
echo "the tree that travels: tracked files $((tracked / 1048576)) MiB + .whl $((wheels / 1048576)) MiB" \
  "= $(((tracked + wheels) / 1048576)) MiB of 64 (plus untracked files that git does not ignore)"
