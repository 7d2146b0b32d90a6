"""The cluster configs agree with each other and with the image: every node group runs the project image as its user,
HF_HOME points at a volume (KubeRay) or host directory (AWS) that user can write, the runtime envs name the same cache
path, and the dependency pins of pyproject.toml resolve together and carry the APIs the code uses."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"


def dockerfile() -> dict:
    """The image's user, HF_HOME and base, read from cluster/Dockerfile."""
    text = (CLUSTER / "Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    env = re.search(r"HF_HOME=(\S+)", text)
    base = re.search(r"^FROM\s+(\S+)", text, re.M)
    return {"user": user[-1] if user else None, "hf_home": env.group(1) if env else None,
            "base": base.group(1) if base else None, "text": text}


def pod_templates():
    for path in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
            yield f"{path.name}:head", spec["headGroupSpec"]["template"]
            for g in spec["workerGroupSpecs"]:
                yield f"{path.name}:{g['groupName']}", g["template"]


def test_the_image_runs_as_the_ray_user_with_a_cache_in_its_home():
    img = dockerfile()
    assert img["base"].startswith("rayproject/ray:2.60.0")
    assert img["user"] == "1000:100"  # the rayproject images' user ray (uid 1000, gid users=100)
    assert img["hf_home"] == "/home/ray/.cache/huggingface"
    assert "[${EXTRAS}]" in img["text"] and "ARG EXTRAS=gpu,cloud" in img["text"]  # the GPU extras baked in


# torch 2.13 on PyPI (vLLM 0.32's pin) requires cuda-toolkit==13.0.3 (its wheel's metadata, read with
# pip install --dry-run --no-deps --report torch==2.13.0): a CUDA 13.0 build, which needs an NVIDIA driver >= 580.
TORCH_CUDA = {"2.13": "13.0"}
DRIVER_FOR_CUDA_MAJOR = {12: 525, 13: 580}


def test_the_images_cuda_compiler_is_torchs_and_the_compiled_ops_are_prebuilt():
    """The -gpu Ray base has a CUDA 12 nvcc; DeepSpeed will not load an op compiled across CUDA majors. The image
    adds the compiler of torch's CUDA, checks it against torch at build time, prebuilds FusedAdam, turns vLLM's
    FlashInfer sampler JIT off, and the guide states the driver that CUDA needs."""
    text = dockerfile()["text"]
    arg = re.search(r"^ARG TORCH_CUDA=(\S+)", text, re.M)
    assert arg, "the image must name the CUDA of its torch"
    gpu = _spec(pyproject()["project"]["optional-dependencies"]["gpu"], "vllm")
    torch_of = {v: pins["torch"] for v, pins in VLLM_PINS.items() if v in gpu}
    assert {TORCH_CUDA[".".join(t.split(".")[:2])] for t in torch_of.values()} == {arg.group(1)}, torch_of
    assert "cuda-minimal-build-$(echo ${TORCH_CUDA} | tr . -)" in text and "CUDA_HOME=/usr/local/cuda-${TORCH_CUDA}" in text
    assert "torch.version.cuda" in text  # the build fails when torch's CUDA is not the compiler's
    assert "DS_BUILD_FUSED_ADAM=1" in text and "installed_ops" in text  # FusedAdam prebuilt and checked
    assert re.search(r"^ENV VLLM_USE_FLASHINFER_SAMPLER=0", text, re.M)
    guide = (CLUSTER / "README.md").read_text()
    major = int(arg.group(1).split(".")[0])
    assert f"CUDA {arg.group(1)}" in guide and f">= {DRIVER_FOR_CUDA_MAJOR[major]}" in guide
    assert "VLLM_USE_FLASHINFER_SAMPLER" in guide


def docker_context(dest: Path) -> Path:
    """The paths the Dockerfile COPYs into /home/ray/docrerank, copied from the repository to ``dest``."""
    import shutil

    text = dockerfile()["text"]
    for line in re.findall(r"^COPY\s+(.+)$", text, re.M):
        *srcs, target = [w for w in line.split() if not w.startswith("--")]
        assert target.startswith("/home/ray/docrerank"), line
        for src in srcs:
            where = dest / target.removeprefix("/home/ray/docrerank").strip("/")
            if (REPO / src).is_dir():
                shutil.copytree(REPO / src, where, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                where.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / src, where / Path(src).name)
    return dest


def test_a_wheel_built_from_the_image_context_carries_the_entry_points(tmp_path):
    """The image installs what the Dockerfile COPYs: a wheel built from exactly those paths holds jobs/ and its
    `docrerank` console script runs from an install of that wheel (no checkout on the path)."""
    import subprocess
    import sys
    import zipfile

    ctx = docker_context(tmp_path / "ctx")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ctx)], check=True, env=env, cwd=tmp_path, timeout=300)
    wheel = next((tmp_path / "dist").glob("docrerank-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "jobs/cli.py" in names and "jobs/build_dataset.py" in names and "docrerank/core/config.py" in names
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "docrerank = jobs.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, env=env, cwd=tmp_path, timeout=300)
    probe = ("import importlib.metadata as m, sys\n"
             f"dist = next(m.distributions(name='docrerank', path=[{str(target)!r}]))\n"
             "ep = next(e for e in dist.entry_points if e.name == 'docrerank' and e.group == 'console_scripts')\n"
             "main = ep.load()\n"
             "import jobs, docrerank\n"
             f"assert jobs.__file__.startswith({str(target)!r}), jobs.__file__\n"
             f"assert docrerank.__file__.startswith({str(target)!r}), docrerank.__file__\n"
             "sys.exit(main(['--help']))\n")
    out = subprocess.run([sys.executable, "-c", probe], env=dict(env, PYTHONPATH=str(target)), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "build_dataset" in out.stdout and "usage: docrerank" in out.stdout


@pytest.mark.parametrize("name, template", list(pod_templates()), ids=[n for n, _ in pod_templates()])
def test_every_kuberay_group_can_write_its_hf_cache(name, template):
    img = dockerfile()
    spec = template["spec"]
    sec = spec.get("securityContext") or {}
    uid, gid = (int(x) for x in img["user"].split(":"))
    assert sec.get("runAsUser") == uid and sec.get("runAsGroup") == gid, f"{name}: runs as {sec}, image user {img['user']}"
    assert sec.get("fsGroup") == gid, f"{name}: fsGroup {sec.get('fsGroup')} must be the user's group {gid}: volumes " \
                                      "are then group-writable by it"
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        assert c["image"].endswith(":0.1.0-gpu") and "docrerank" in c["image"], f"{name}: not the project image"
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        home = env.get("HF_HOME")
        assert home == img["hf_home"], f"{name}: HF_HOME {home!r}, the image's is {img['hf_home']!r}"
        mounts = [m for m in c.get("volumeMounts", []) if home == m["mountPath"] or home.startswith(m["mountPath"] + "/")]
        assert mounts, f"{name}: HF_HOME {home} is on no mounted volume"
        vol = volumes.get(mounts[0]["name"])
        assert vol is not None, f"{name}: volume {mounts[0]['name']!r} is mounted but not declared"
        assert "emptyDir" in vol or "persistentVolumeClaim" in vol, f"{name}: {vol}"
        assert not mounts[0].get("readOnly"), f"{name}: the cache is mounted read-only"
        assert not home.startswith("/mnt/"), f"{name}: a root-owned path"


def test_runtime_envs_name_the_images_cache_and_the_image_is_the_default():
    img = dockerfile()
    fast = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    slow = yaml.safe_load((CLUSTER / "runtime_env_pip.yaml").read_text())
    assert "pip" not in fast and "conda" not in fast  # the default installs nothing at job start
    assert fast["env_vars"]["HF_HOME"] == slow["env_vars"]["HF_HOME"] == img["hf_home"]
    assert slow["config"]["setup_timeout_seconds"] > 600  # the pip route outlasts Ray's default timeout
    for path in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == "RayJob":
                env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
                assert "pip" not in env and env["env_vars"]["HF_HOME"] == img["hf_home"], path.name


def test_aws_nodes_mount_a_cache_directory_owned_by_the_image_user():
    img = dockerfile()
    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    docker = cfg["docker"]
    assert docker["image"].endswith(":0.1.0-gpu") and not cfg["setup_commands"]
    mounts = [o.split()[1] for o in docker["run_options"] if o.startswith("-v ")]
    host = next(m.split(":")[0] for m in mounts if m.split(":")[1] == img["hf_home"])
    uid_gid = img["user"]
    assert any(f"chown {uid_gid} {host}" in c for c in cfg["initialization_commands"]), \
        f"{host} (mounted at HF_HOME) must be chowned to {uid_gid} before the container starts"
    assert any(o == f"-e HF_HOME={img['hf_home']}" for o in docker["run_options"])


def test_the_cluster_guide_matches_the_configs():
    guide = (CLUSTER / "README.md").read_text()
    img = dockerfile()
    for needle in ("cluster/Dockerfile", img["hf_home"], "runtime_env_pip.yaml", "setup_timeout_seconds", "--plan",
                   "fsGroup", "chown 1000:100"):
        assert needle in guide, needle
    assert "/mnt/cache/huggingface" not in guide


# ------------------------------------------------------------------------------------------------ dependencies
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _spec(reqs: list[str], name: str):
    from packaging.requirements import Requirement

    found = [Requirement(r) for r in reqs if Requirement(r).name.lower().replace("_", "-") == name]
    assert found, f"{name} is not in {reqs}"
    return found[0].specifier


def test_transformers_floor_has_the_apis_the_code_uses():
    import inspect

    import transformers
    from packaging.version import Version
    from transformers import Qwen2VLModel

    spec = _spec(pyproject()["project"]["dependencies"], "transformers")
    # 5.17 lacks mm_encoder_outputs (checked in its wheel): the floor must exclude it and admit 5.18
    assert "5.17.0" not in spec and "5.18.0" in spec and "5.24.0" in spec
    assert Version(transformers.__version__) in spec
    params = inspect.signature(Qwen2VLModel.forward).parameters
    assert "mm_encoder_outputs" in params and "mm_token_type_ids" in params


# Read from the packages' metadata (pip install --dry-run --no-deps --report): what each pins.
VLLM_PINS = {"0.32.0": {"torch": "2.13.0", "transformers": "<5.20.0,>=5.16.1"},
             "0.33.0": {"torch": "2.14.0", "transformers": "<5.21.0,>=5.16.1"}}
COLPALI_0_3_18 = {"torch": "<2.14.0,>=2.2.0", "peft": "<0.21.0,>=0.18.0", "transformers": "<6.0.0,>=5.3.0"}


def test_gpu_extras_resolve_together():
    from packaging.specifiers import SpecifierSet

    extras = pyproject()["project"]["optional-dependencies"]
    assert {"vllm", "colpali", "gpu", "cloud", "dev"} <= set(extras)
    deps = pyproject()["project"]["dependencies"]
    tf, peft = _spec(deps, "transformers"), _spec(deps, "peft")
    # `vllm` takes the newest vLLM; its transformers range must meet ours
    assert "0.33.0" in _spec(extras["vllm"], "vllm")
    for version, pins in VLLM_PINS.items():
        if version in _spec(extras["vllm"], "vllm"):
            both = [v for v in ("5.18.0", "5.19.0", "5.20.2") if v in tf and v in SpecifierSet(pins["transformers"])]
            assert both, f"vllm {version} and transformers{tf} share no version"
    # `gpu` = vLLM + colpali-engine: only vLLM versions whose exact torch colpali-engine admits
    gpu_vllm, gpu_colpali = _spec(extras["gpu"], "vllm"), _spec(extras["gpu"], "colpali-engine")
    assert "0.3.18" in gpu_colpali
    allowed = [v for v in VLLM_PINS if v in gpu_vllm]
    assert allowed and all(VLLM_PINS[v]["torch"] in SpecifierSet(COLPALI_0_3_18["torch"]) for v in allowed), allowed
    assert any(v in peft and v in SpecifierSet(COLPALI_0_3_18["peft"]) for v in ("0.20.0", "0.19.1"))


# EC2 instance types the KubeRay groups select (vCPUs, GiB, GPUs, the EKS AMI's max pods for the type).
INSTANCES = {"m6i.2xlarge": (8, 32, 0, 58), "m6i.4xlarge": (16, 64, 0, 234), "g6e.2xlarge": (8, 64, 1, 58),
             "g6e.12xlarge": (48, 384, 4, 234)}
DAEMONSETS = (0.3, 1.0)  # CPUs, GiB the node's daemonsets take (CNI, kube-proxy, GPU device plugin, log agent)


def allocatable(vcpus: int, gib: int, max_pods: int) -> tuple[float, float]:
    """(CPUs, GiB) a pod can request on the instance: its capacity less the kubelet's reserve as the EKS AMI sets it
    (CPU: 6% of the first core, 1% of the second, 0.5% of the next two, 0.25% of the rest; memory: 255 MiB + 11 MiB
    per pod + a 100 MiB eviction threshold), the kernel's share of memory (~3%, what the node reports as capacity
    below the instance's nominal GiB) and the daemonsets."""
    cores = [0.06, 0.01, 0.005, 0.005] + [0.0025] * max(0, vcpus - 4)
    cpu = vcpus - sum(cores[:vcpus]) - DAEMONSETS[0]
    mem = gib * 0.97 - (255 + 11 * max_pods + 100) / 1024 - DAEMONSETS[1]
    return cpu, mem


def _gib(q: str) -> float:
    return float(q[:-2]) * (1 if q.endswith("Gi") else 1 / 1024) if q.endswith(("Gi", "Mi")) else float(q) / 2**30


@pytest.mark.parametrize("name, template", list(pod_templates()), ids=[n for n, _ in pod_templates()])
def test_every_kuberay_pod_fits_the_allocatable_of_its_instance_type(name, template):
    """A pod requesting a whole instance (16 CPUs on a 16-vCPU node) stays Pending: allocatable is always less. Each
    group names its instance type, and its requests (= limits, = Ray's num-cpus) leave the reserve room."""
    spec = template["spec"]
    kind = (spec.get("nodeSelector") or {}).get("node.kubernetes.io/instance-type")
    assert kind in INSTANCES, f"{name}: nodeSelector names no known instance type ({kind!r})"
    vcpus, gib, gpus, pods = INSTANCES[kind]
    cpu_ok, mem_ok = allocatable(vcpus, gib, pods)
    req = spec["containers"][0]["resources"]["requests"]
    assert float(req["cpu"]) <= cpu_ok, f"{name}: requests {req['cpu']} CPUs, {kind} allocates about {cpu_ok:.2f}"
    assert _gib(req["memory"]) <= mem_ok, f"{name}: requests {req['memory']}, {kind} allocates about {mem_ok:.1f} GiB"
    assert int(req.get("nvidia.com/gpu", 0)) == gpus, f"{name}: {kind} has {gpus} GPU(s)"
    if not name.endswith(":head"):  # the head runs no tasks (num-cpus 0); a worker should use its node
        assert float(req["cpu"]) >= vcpus - 2, f"{name}: {req['cpu']} CPUs leaves most of a {vcpus}-vCPU {kind} idle"


def test_every_kuberay_group_gets_the_hub_token_from_an_optional_secret():
    for name, template in pod_templates():
        for c in template["spec"]["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            ref = env.get("HF_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
            assert ref.get("name") == "hf-token" and ref.get("optional") is True, f"{name}: {env.get('HF_TOKEN')}"
            assert "value" not in env["HF_TOKEN"], f"{name}: a token value in the manifest"


def test_token_auth_is_on_where_the_guide_says_the_launchers_enable_it():
    """The guide says the launcher and KubeRay start the cluster with token auth: aws.yaml's nodes run with
    RAY_AUTH_MODE=token and get the token file, the KubeRay clusters ask the operator for a token."""
    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    assert "-e RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    assert cfg["file_mounts"].get("/home/ray/.ray/auth_token") == "~/.ray/auth_token"
    for path in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
            assert spec.get("authOptions") == {"mode": "token"}, path.name
    guide = (CLUSTER / "README.md").read_text()
    assert "RAY_AUTH_MODE=token" in guide and "authOptions" in guide
