"""The image, built from the installed package alone: a wheel of the running distribution and the build step
(build-image.sh and the Dockerfile) shipped as package data, so no source checkout is needed."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as metadata
import platform
import re
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from ..store import write_atomic
from .runner import Runner

DISTRIBUTION = "mtproxy"
BUILD_STEP = ("templates", "docker", "build-image.sh")  # beside the Dockerfile
# Zip entries get one fixed time, so packing the same tree twice gives the same wheel.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def package_dir() -> Path:
    """The directory the running mtproxy package was imported from (site-packages, or a checkout's src/)."""
    return Path(str(resources.files(DISTRIBUTION)))


def _package_files(top: Path) -> list[Path]:
    """Every file of the package as it is installed, without bytecode caches."""
    return sorted(p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def wheel_tag(files: list[Path]) -> str:
    """py3-none-any, or py3-none-linux_<machine> when the native AES library is there: it is loaded through
    ctypes (no Python ABI in it), but it is built for this machine's architecture."""
    if any(p.suffix == ".so" for p in files):
        return f"py3-none-linux_{platform.machine()}"
    return "py3-none-any"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _distribution() -> metadata.Distribution:
    try:
        return metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ValueError("mtproxy runs without installed package metadata (not pip-installed): "
                         "install it with pip, or pass --image") from None


def pack_wheel(dest: Path) -> Path:
    """Write a wheel of the mtproxy package this process runs (its files as installed, its metadata and
    entry points) into `dest`; the image installs it as it would a wheel built from the source."""
    from .. import __version__

    dist = _distribution()
    top = package_dir()
    files = _package_files(top)
    tag = wheel_tag(files)
    info = f"{DISTRIBUTION}-{__version__}.dist-info"
    # A checkout's in-tree build leaves src/mtproxy.egg-info, whose metadata file is PKG-INFO.
    source_meta = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    meta, versions = re.subn(r"(?m)^Version: .*$", f"Version: {__version__}", source_meta, count=1)
    if versions != 1:
        raise ValueError(f"the installed metadata of mtproxy ({dist.locate_file('')}) has no version: reinstall it")
    extra = {
        f"{info}/METADATA": meta.encode(),
        f"{info}/entry_points.txt": (dist.read_text("entry_points.txt") or "").encode(),
        f"{info}/WHEEL": (f"Wheel-Version: 1.0\nGenerator: mtproxy.host.image\n"
                          f"Root-Is-Purelib: {'true' if tag.endswith('-any') else 'false'}\nTag: {tag}\n").encode(),
    }
    wheel = dest / f"{DISTRIBUTION}-{__version__}-{tag}.whl"
    record: list[str] = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            name = f"{DISTRIBUTION}/{path.relative_to(top).as_posix()}"
            data = path.read_bytes()
            entry = zipfile.ZipInfo(name, _EPOCH)
            entry.external_attr = (0o755 if path.stat().st_mode & 0o111 else 0o644) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)
            record.append(_record_line(name, data))
        for name, data in extra.items():
            archive.writestr(zipfile.ZipInfo(name, _EPOCH), data, zipfile.ZIP_DEFLATED)
            record.append(_record_line(name, data))
        record.append(f"{info}/RECORD,,")
        archive.writestr(zipfile.ZipInfo(f"{info}/RECORD", _EPOCH), "\n".join(record) + "\n", zipfile.ZIP_DEFLATED)
    return wheel


def installed_constraints() -> str:
    """`name==version` for every installed dependency of mtproxy, transitively (extras left out): the image
    gets the versions this host runs with."""
    pins: dict[str, str] = {}
    queue = [DISTRIBUTION]
    while queue:
        try:
            requirements = metadata.requires(queue.pop()) or []
        except metadata.PackageNotFoundError:
            continue
        for requirement in requirements:
            match = _NAME.match(requirement)
            if match is None or "extra ==" in requirement:
                continue
            name = match.group(0)
            key = name.lower().replace("_", "-")
            if key in pins:
                continue
            try:
                pins[key] = f"{name}=={metadata.version(name)}"
            except metadata.PackageNotFoundError:
                continue  # not for this platform (a marker), or not installed: pip resolves it
            queue.append(name)
    return "".join(f"{line}\n" for _, line in sorted(pins.items()))


@contextmanager
def build_step() -> Iterator[Path]:
    """The packaged build-image.sh as a file path (the Dockerfile sits beside it)."""
    # From the regular package mtproxy: templates/ has no __init__.py, and a namespace package's
    # MultiplexedPath joins only one name at a time.
    step = resources.files(DISTRIBUTION)
    for name in BUILD_STEP:
        step = step / name
    with resources.as_file(step) as script:
        yield script


def build_problem(runner: Runner, local_base: bool) -> str | None:
    """Why the image could not be built here, or None. Checked before setup asks anything."""
    if not runner.available("bash"):
        return "bash is not installed (the image build step is a bash script)"
    try:
        _distribution()
    except ValueError as exc:
        return str(exc)
    with build_step() as script:
        if not script.is_file() or not script.with_name("Dockerfile").is_file():
            return f"the image build step is missing from the installed package ({script.parent})"
    if local_base and not runner.available("debootstrap"):
        cached = runner.run(["docker", "image", "ls", "-q", "mtproxy-base"], check=False, mutates=False, timeout=30)
        if not cached.stdout.strip():
            return "--local-base needs debootstrap (apt-get install debootstrap) to make its base image once"
    return None


def build(runner: Runner, tag: str, local_base: bool, script: Path | None = None, timeout: float = 1800) -> None:
    """Build `tag`. Without `script`: the packaged build step with a wheel of the installed package and its
    installed dependency versions; with one (a checkout's deploy/docker/build-image.sh): that script, which
    builds its own checkout."""
    options = ["--tag", tag, *(["--local-base"] if local_base else [])]
    if script is not None:
        runner.run(["bash", str(script), *options], timeout=timeout)
        return
    with tempfile.TemporaryDirectory(prefix="mtproxy-build.") as tmp, build_step() as packaged:
        wheel = pack_wheel(Path(tmp))
        constraints = Path(tmp) / "constraints.txt"
        write_atomic(constraints, installed_constraints().encode(), 0o644)
        runner.run(["bash", str(packaged), "--wheel", str(wheel), "--constraints", str(constraints), *options],
                   timeout=timeout)
