"""What can be checked about the packaging without a Docker engine or a Google Cloud project: the
worker Dockerfile agrees with the installed Beam / TensorFlow and with setup.py, metadata.json
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


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
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
    assert not current, "Dockerfile ends inside a continued line"
    return instructions


def instructions(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile() if kw == keyword]


def copy_from(image_prefix: str) -> tuple[str, list[str]]:
    """(image, [src, dest]) of the one ``COPY --from=IMAGE`` whose image starts with the prefix."""
    found = []
    for args in instructions("COPY"):
        words = shlex.split(args)
        if words[0].startswith("--from=") and words[0][len("--from="):].startswith(image_prefix):
            found.append((words[0][len("--from="):], words[1:]))
    assert len(found) == 1, f"expected one COPY --from={image_prefix}..., found {found}"
    return found[0]


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

def test_dockerfile_beam_sdk_image_matches_installed_beam_and_python_311():
    import apache_beam

    image, paths = copy_from("apache/beam_python")
    match = re.fullmatch(r"apache/beam_python(\d+\.\d+)_sdk:(.+)", image)
    assert match, image
    python, beam_version = match.groups()
    assert beam_version == apache_beam.__version__
    assert python == "3.11"
    assert python_requires().contains(python)
    assert paths == ["/opt/apache/beam", "/opt/apache/beam"]
    # The interpreter the image installs is the one the SDK image's boot was built for.
    assert any(f"python{python} -m venv" in args for args in instructions("RUN"))


def test_dockerfile_entrypoint_is_the_beam_boot_in_exec_form():
    (entrypoint,) = instructions("ENTRYPOINT")
    assert json.loads(entrypoint) == ["/opt/apache/beam/boot"]
    assert dockerfile()[-1][0] == "ENTRYPOINT"


def test_dockerfile_base_is_the_cuda_release_tensorflow_was_built_with():
    import tensorflow as tf

    (base,) = instructions("FROM")
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu(\d+\.\d+)", base)
    assert match, base
    built = tf.sysconfig.get_build_info()["cuda_version"].split(".")
    assert list(match.groups()[:2]) == built[:2]


def test_dockerfile_installs_tensorflow_with_cuda_in_the_range_setup_py_pins():
    import tensorflow as tf

    pins = [w for args in instructions("RUN") for w in shlex.split(args) if w.startswith("tensorflow[")]
    assert len(pins) == 1, pins
    pin = Requirement(pins[0])
    assert pin.extras == {"and-cuda"}
    wanted = install_requires()["tensorflow"].specifier
    assert pin.specifier.contains(tf.__version__)
    assert wanted.contains(tf.__version__)
    assert str(pin.specifier) == "==2.21.*"


def test_dockerfile_installs_this_package_and_keeps_the_sdk_in_its_environment():
    copies = [shlex.split(args) for args in instructions("COPY")]
    assert [".", "/app"] in copies
    installs = [w for args in instructions("RUN") for w in shlex.split(args) if w.startswith("/app")]
    assert installs == ["/app[dataflow]"], "the image needs the Dataflow runner's clients: the [dataflow] extra"
    variables = env()
    assert variables["RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT"] == "1"
    assert variables["PATH"].startswith("/opt/venv/bin:")


def test_dockerfile_can_serve_as_flex_template_image():
    _, paths = copy_from("gcr.io/dataflow-templates-base/python311-template-launcher-base")
    assert paths == ["/opt/google/dataflow/python_template_launcher"] * 2
    assert env()["FLEX_TEMPLATE_PYTHON_PY_FILE"] == "/template/main.py"


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
