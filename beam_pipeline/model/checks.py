"""Is this file a readable model? Checked before Keras opens it, so that a truncated or mislabelled
file is reported as such (Keras says ``File not found`` about a truncated ``.keras`` archive that
exists, and h5py ``file signature not found``), on the launching machine, before any worker starts.
"""

from __future__ import annotations

import os
import zipfile

from beam_pipeline.recurrent import ModelError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class UnreadableModel(ModelError):
    """The file cannot be a loadable model; the message says what is wrong with it."""


def _check_keras_archive(path: str) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            damaged = archive.testzip()
    except zipfile.BadZipFile as e:
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK"):
            raise UnreadableModel(
                f"not a complete .keras archive ({e}): the zip file starts correctly but its end is missing, "
                f"so it was most likely cut short while copying ({os.path.getsize(path)} bytes). Copy it again."
            ) from e
        what = "an HDF5 file: name it .h5" if head == HDF5_SIGNATURE[:4] else "not a zip archive"
        raise UnreadableModel(f"a .keras file is a zip archive, and this one is {what}") from e
    except (OSError, RuntimeError, ValueError) as e:  # a member whose compressed data is damaged
        raise UnreadableModel(f"the .keras archive is damaged: {e}. Copy it again.") from e
    if damaged is not None:
        raise UnreadableModel(f"the .keras archive is damaged: member {damaged} fails its CRC check. Copy it again.")
    if "config.json" not in names:
        raise UnreadableModel("the zip archive holds no config.json: it is not a model saved by Keras 3 "
                              f"(it holds: {', '.join(sorted(names)[:5]) or 'nothing'})")


def _check_hdf5(path: str, weights_only: bool = False) -> None:
    import h5py

    if not h5py.is_hdf5(path):
        with open(path, "rb") as f:
            head = f.read(4)
        what = "a zip archive (a Keras 3 model?): name it .keras" if head.startswith(b"PK") else \
            f"not an HDF5 file (it starts with {head!r}, not the HDF5 signature)"
        raise UnreadableModel(f"an .h5 model is an HDF5 file, and this one is {what}")
    try:
        with h5py.File(path, "r") as f:
            if not weights_only and "model_config" not in f.attrs and "model_weights" not in f:
                raise UnreadableModel("the HDF5 file holds no model (no model_config): it holds weights only "
                                      "(save_weights): pass the code that builds the model with --model_fn, or save "
                                      "the whole model with model.save")
    except OSError as e:
        raise UnreadableModel(f"the HDF5 file cannot be read ({e}): it is probably cut short. Copy it again.") from e


def check_model_file(path: str, weights_only: bool = False) -> None:
    """Raises ``UnreadableModel`` saying what is wrong when the local file at ``path`` cannot be a
    ``.keras`` or ``.h5`` model (``weights_only``: an HDF5 weights file, whatever its name); returns
    quietly otherwise (Keras may still refuse its contents)."""
    if os.path.getsize(path) == 0:
        raise UnreadableModel("the file is empty")
    if weights_only:
        _check_hdf5(path, weights_only=True)
    elif path.endswith(".keras"):
        _check_keras_archive(path)
    elif path.endswith((".h5", ".hdf5")):
        _check_hdf5(path)
