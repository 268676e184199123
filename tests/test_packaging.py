"""What can be checked about the packaging without building an image or a Google Cloud project (the
image is built and run by tests/test_container.py): the worker Dockerfile agrees with the installed
Beam / TensorFlow and with setup.py, metadata.json
declares every job flag with checks that accept the flag's own values, and setup.py keeps keras
below 3.16."""

from __future__ import annotations

import argparse
import ast
import json
import re
import shlex
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from beam_pipeline.options import EmbeddingOptions

ROOT = Path(__file__).resolve().parents[1]


def dockerfile(path: str = "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for raw in (ROOT / path).read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, f"{path} ends inside a continued line"
    return instructions


def instructions(keyword: str, path: str = "Dockerfile") -> list[str]:
    return [args for kw, args in dockerfile(path) if kw == keyword]


def build_args(path: str = "Dockerfile") -> dict[str, str]:
    """``ARG NAME=default`` of the file, unquoted (an ARG without default maps to None)."""
    out = {}
    for args in instructions("ARG", path):
        name, eq, value = args.partition("=")
        out[name] = shlex.split(value)[0] if eq else None
    return out


def env() -> dict[str, str]:
    out = {}
    for args in instructions("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            out[key] = value
    return out


def install_requires() -> dict[str, Requirement]:
    """setup.py's ``install_requires``, read from the file's syntax tree (setup.py is not run)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for keyword in node.keywords:
                if keyword.arg == "install_requires":
                    reqs = [Requirement(s) for s in ast.literal_eval(keyword.value)]
                    return {r.name: r for r in reqs}
    raise AssertionError("setup.py has no setup(install_requires=[...])")


def extras_require() -> dict[str, list[str]]:
    """setup.py's ``extras_require``, read from the file's syntax tree."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for keyword in node.keywords:
                if keyword.arg == "extras_require":
                    return ast.literal_eval(keyword.value)
    raise AssertionError("setup.py has no setup(extras_require={...})")


def python_requires() -> SpecifierSet:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "python_requires":
            return SpecifierSet(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no python_requires")


def job_flags() -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser()
    EmbeddingOptions._add_argparse_args(parser)
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


def metadata() -> dict:
    return json.loads((ROOT / "metadata.json").read_text())


# --- Dockerfile -------------------------------------------------------------------------------

def test_dockerfile_base_is_beams_sdk_image_of_the_installed_beam_and_python_311():
    """The base is a build argument (a stand-in can replace it), defaulting to Beam's SDK image of the
    Beam version the launcher has, for Python 3.11."""
    import apache_beam

    assert instructions("FROM") == ["${BEAM_SDK_IMAGE}"]
    match = re.fullmatch(r"apache/beam_python(\d+\.\d+)_sdk:(.+)", build_args()["BEAM_SDK_IMAGE"])
    assert match, build_args()
    python, beam_version = match.groups()
    assert beam_version == apache_beam.__version__
    assert python == "3.11"
    assert python_requires().contains(python)


def test_dockerfile_needs_no_image_from_outside_docker_hubs_beam_image():
    """No CUDA base and no PPA (neither reproducible without Docker Hub and Ubuntu's archives); the Flex
    Template launcher, published only on gcr.io, is in container/flex-template.Dockerfile."""
    text = (ROOT / "Dockerfile").read_text()
    for word in ("gcr.io", "nvidia/cuda", "deadsnakes", "add-apt-repository"):
        assert word not in "\n".join(args for _, args in dockerfile()), word
    assert "COPY --from" not in text


def test_dockerfile_entrypoint_is_the_beam_boot_in_exec_form():
    (entrypoint,) = instructions("ENTRYPOINT")
    assert json.loads(entrypoint) == ["/opt/apache/beam/boot"]
    assert dockerfile()[-1][0] == "ENTRYPOINT"


def test_dockerfile_runs_as_an_unprivileged_user():
    (user,) = instructions("USER")
    assert user not in ("root", "0")
    assert any(f"--uid {user}" in args for args in instructions("RUN"))


def test_dockerfile_installs_tensorflow_with_cuda_in_the_range_setup_py_pins():
    """The TENSORFLOW build argument defaults to the GPU build; CI passes the same version without CUDA."""
    import tensorflow as tf

    assert any('"${TENSORFLOW}"' in args for args in instructions("RUN"))
    pin = Requirement(build_args()["TENSORFLOW"])
    assert pin.name == "tensorflow" and pin.extras == {"and-cuda"}
    wanted = install_requires()["tensorflow"].specifier
    assert pin.specifier.contains(tf.__version__)
    assert wanted.contains(tf.__version__)
    assert str(pin.specifier) == "==2.21.*"
    build = (ROOT / "container" / "build.sh").read_text()
    ci_pin = Requirement(re.search(r'TENSORFLOW="\$\{BRE_TENSORFLOW:-([^}]+)\}"', build).group(1))
    assert (ci_pin.name, ci_pin.specifier) == (pin.name, pin.specifier)


def test_dockerfile_installs_this_package_and_keeps_the_sdk_in_its_environment():
    copies = [shlex.split(args) for args in instructions("COPY")]
    assert [".", "/app"] in copies
    installs = [w for args in instructions("RUN") for w in shlex.split(args) if w.startswith("/app")]
    assert installs == ["/app[dataflow]"], "the image needs the Dataflow runner's clients: the [dataflow] extra"
    assert env()["RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT"] == "1"
    assert any("pip check" in args for args in instructions("RUN"))


def test_flex_template_dockerfile_adds_the_launcher_to_the_worker_image():
    path = "container/flex-template.Dockerfile"
    args = build_args(path)
    assert args["LAUNCHER_IMAGE"].startswith("gcr.io/dataflow-templates-base/python311-template-launcher-base:")
    assert "WORKER_IMAGE" in args
    assert instructions("FROM", path) == ["${LAUNCHER_IMAGE} AS launcher", "${WORKER_IMAGE}"]
    (copy,) = instructions("COPY", path)
    assert shlex.split(copy) == ["--from=launcher", *["/opt/google/dataflow/python_template_launcher"] * 2]
    assert env()["FLEX_TEMPLATE_PYTHON_PY_FILE"] == "/template/main.py"


def test_stand_in_sdk_image_has_the_beam_version_of_the_dockerfiles_base():
    """container/standins.sh builds the stand-in for BEAM_SDK_IMAGE at the same Beam version."""
    version = build_args()["BEAM_SDK_IMAGE"].rpartition(":")[2]
    assert f"BEAM_VERSION={version}\n" in (ROOT / "container" / "standins.sh").read_text()
    assert build_args("container/standin-beam-sdk.Dockerfile")["BEAM_VERSION"] == version


# --- metadata.json ----------------------------------------------------------------------------

def test_metadata_declares_exactly_the_job_flags():
    doc = metadata()
    assert doc["name"] and doc["description"]
    names = [p["name"] for p in doc["parameters"]]
    assert len(names) == len(set(names))
    assert set(names) == set(job_flags())


def test_metadata_parameters_have_the_required_fields():
    for p in metadata()["parameters"]:
        assert p["label"] and p["helpText"], p["name"]
        assert isinstance(p["isOptional"], bool), p["name"]
        for regex in p.get("regexes", []):
            re.compile(regex)


@pytest.mark.parametrize("name", sorted(job_flags()))
def test_metadata_checks_accept_the_flags_own_values(name):
    action = job_flags()[name]
    param = {p["name"]: p for p in metadata()["parameters"]}[name]
    regexes = [re.compile(r) for r in param.get("regexes", [])]

    def accepted(value: str) -> bool:
        return all(r.fullmatch(value) for r in regexes)

    if action.default not in (None, False):
        assert param["isOptional"], f"--{name} has a default, so the parameter is optional"
        assert accepted(str(action.default)), f"default {action.default!r} of --{name} rejected"
    for choice in action.choices or ():
        assert accepted(choice), f"choice {choice!r} of --{name} rejected"
    if action.choices:
        assert not accepted("bogus")


def test_metadata_mode_regex():
    param = {p["name"]: p for p in metadata()["parameters"]}["mode"]
    assert param["regexes"] == ["^(final|sequence|states)$"]


# --- setup.py ---------------------------------------------------------------------------------

def test_base_install_leaves_beams_gcp_clients_to_the_dataflow_extra():
    """Local, Flink and gs:// runs need Beam's core and GCS's client only (README "Install")."""
    beam = install_requires()["apache-beam"]
    assert beam.extras == set()
    assert {"google-cloud-storage", "google-auth", "google-auth-httplib2"} <= set(install_requires())
    dataflow = [Requirement(r) for r in extras_require()["dataflow"]]
    assert [(r.name, r.extras, r.specifier) for r in dataflow] == [("apache-beam", {"gcp"}, beam.specifier)]


def test_setup_py_pins_keras_below_316():
    import keras

    keras_spec = install_requires()["keras"].specifier
    assert not keras_spec.contains("3.16.0")
    assert not keras_spec.contains("3.16.1")
    assert keras_spec.contains("3.15.1")
    assert keras_spec.contains(keras.__version__)
