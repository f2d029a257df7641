"""A package step, run inside the sandbox as the project's account: extract, substitute, run.

`runner.py` writes this file into a fresh run directory as `.octopus.deploy.py`, with
its settings in `.octopus.deploy.json`, and starts it as the script (python -I -S) with
the package, opened by the supervisor, as standard input. So the hostile part, parsing
an archive somebody uploaded, happens with the project's uid, in its namespaces, under
its Landlock rules and cgroup limits, never as root. Standard library only.

1. Extract (zip, tar.gz, nupkg) into the working directory. Refused, with the entry and
   the reason: absolute names, `..`, backslashes, names of sandworker's own files,
   entries that appear twice or pass through a link, symbolic links that could point
   outside, hard links to anything but a file already extracted, device files, FIFOs,
   sockets, encrypted entries, more than `limits.package_files` entries or
   `limits.package` bytes (counted as written, not as the archive claims). Files get
   0644, or 0755 if any execute bit was set: never setuid, setgid or sticky.
2. Run PreDeploy, substitute `#{Name}` in the files the start lists, then Deploy, the
   start's own script (if any), PostDeploy; on a failure, DeployFailed. A stage script
   is `<Stage>.<ext>` at the package's top, matched case-insensitively, `.sh` before
   `.py` before `.ps1` (Calamari's order on Linux), run through the helpers' bootstrap.
   The step ends with the failing stage's exit code, or 0.
"""

from __future__ import annotations

import base64
import io
import json
import lzma
import os
import re
import stat
import subprocess
import sys
import tarfile
import urllib.parse
import zipfile
import zlib
from collections.abc import Iterator
from typing import IO, Any

CONFIG = ".octopus.deploy.json"
VARIABLES = ".octopus.variables.json"
RESERVED = ".octopus."
STAGES = ("PreDeploy", "Deploy", "PostDeploy")
EXTENSIONS = (("sh", ("bash", "sh")), ("py", ("python",)), ("ps1", ("powershell",)))
NUPKG_METADATA = ("[Content_Types].xml", "_rels/", "package/")
CHUNK = 1 << 20
MAX_NAME, MAX_DEPTH, MAX_LINK = 4096, 64, 4096
MAX_HEADER = 64 << 10  # a tar long-name or pax header read into memory
INODE_BYTES = 4096  # what a directory or a link costs on disk, counted toward limits.package
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_VARIABLE = re.compile(r"(#?)#\{([^{}#\r\n]{1,200})\}")


class Refused(Exception):
    """The archive holds something this extractor will not write; the message says what."""


def _say(message: str) -> None:
    print(f"sandworker: {message}", flush=True)


def _service(name: str, **attrs: str) -> None:
    inside = " ".join(
        f"{key}='{base64.b64encode(value.encode()).decode()}'" for key, value in attrs.items()
    )
    print(f"##octopus[{name} {inside}]", flush=True)


class Extractor:
    """Writes archive entries below the directory open on `root_fd`, trusting none of them."""

    def __init__(self, root_fd: int, max_bytes: int, max_files: int) -> None:
        self.root_fd, self.max_bytes, self.max_files = root_fd, max_bytes, max_files
        self.written = 0
        self.entries = 0
        self.files: set[tuple[str, ...]] = set()  # regular files extracted, for hard links

    # --- names --------------------------------------------------------------------------

    @staticmethod
    def parts(name: str) -> tuple[str, ...]:
        """The checked components of an entry's name; () for the top directory itself."""
        if "\0" in name:
            raise Refused(f"entry {name!r} has a NUL character in its name")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused(f"entry {name!r} has a name that is not UTF-8") from None
        if "\\" in name:
            raise Refused(f"entry {name!r} uses a backslash; archives must use '/' separators")
        if name.startswith("/"):
            raise Refused(f"entry {name!r} is an absolute path")
        parts = tuple(part for part in name.split("/") if part not in ("", "."))
        if ".." in parts:
            raise Refused(f"entry {name!r} climbs out of the working directory with '..'")
        if len(name) > MAX_NAME or len(parts) > MAX_DEPTH:
            raise Refused(f"entry {name[:80]!r}... is nested too deep or named too long")
        if any(len(part.encode()) > 255 for part in parts):
            raise Refused(f"entry {name[:80]!r}... has a name component over 255 bytes")
        if parts and parts[0].startswith(RESERVED):
            raise Refused(f"entry {name!r} uses a name reserved for sandworker's own files")
        return parts

    def _count(self, name: str, size: int = INODE_BYTES) -> None:
        """One more entry (files pass 0: their contents are counted as written)."""
        self.entries += 1
        if self.entries > self.max_files:
            raise Refused(
                f"the package has more than {self.max_files} entries (limits.package_files);"
                f" stopped at {name!r}"
            )
        self._add_bytes(size, name)

    def _add_bytes(self, size: int, name: str) -> None:
        self.written += size
        if self.written > self.max_bytes:
            raise Refused(
                f"the package unpacks to more than {self.max_bytes} bytes (limits.package);"
                f" stopped in {name!r}"
            )

    def _parent(self, parts: tuple[str, ...], name: str) -> int:
        """A descriptor of the entry's directory: real directories only, made as needed."""
        fd = os.dup(self.root_fd)
        try:
            for i, part in enumerate(parts[:-1]):
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    self._count("/".join(parts[: i + 1]))  # made for it: counted too
                except FileExistsError:
                    pass
                try:
                    child = os.open(part, _DIR, dir_fd=fd)
                except OSError:
                    where = "/".join(parts[: i + 1])
                    raise Refused(
                        f"entry {name!r} passes through {where!r}, which is not a directory"
                        " (a link or a file)"
                    ) from None
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    # --- entries ------------------------------------------------------------------------

    def directory(self, name: str) -> None:
        parts = self.parts(name)
        self._count(name)
        if not parts:
            return
        parent = self._parent(parts, name)
        try:
            try:
                os.mkdir(parts[-1], 0o755, dir_fd=parent)
            except FileExistsError:  # made before as some file's parent: fine if a directory
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise Refused(f"entry {name!r} appears twice in the archive") from None
        finally:
            os.close(parent)

    def file(self, name: str, mode: int, data: IO[bytes]) -> None:
        parts = self.parts(name)
        self._count(name, 0)
        if not parts:
            raise Refused(f"entry {name!r} names the top directory as a file")
        parent = self._parent(parts, name)
        try:
            try:
                fd = os.open(parts[-1], _NEW, 0o600, dir_fd=parent)
            except FileExistsError:
                raise Refused(f"entry {name!r} appears twice in the archive") from None
            try:
                while chunk := _read(data, name):
                    self._add_bytes(len(chunk), name)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                os.fchmod(fd, 0o755 if mode & 0o111 else 0o644)
            finally:
                os.close(fd)
        finally:
            os.close(parent)
        self.files.add(parts)

    def symlink(self, name: str, target: str) -> None:
        """Only relative targets of leading `..` (no deeper than the link) then plain names:
        each link then resolves inside, whatever the other links are."""
        parts = self.parts(name)
        self._count(name)
        if not parts:
            raise Refused(f"entry {name!r} names the top directory as a link")
        if not target or "\0" in target or len(target) > MAX_LINK:
            raise Refused(f"entry {name!r} is a link with an unusable target")
        if target.startswith("/"):
            raise Refused(f"entry {name!r} is a link to the absolute path {target!r}")
        steps = [step for step in target.split("/") if step not in ("", ".")]
        up = 0
        while up < len(steps) and steps[up] == "..":
            up += 1
        if up > len(parts) - 1:
            raise Refused(f"entry {name!r} is a link pointing outside the working directory")
        if ".." in steps[up:]:
            raise Refused(
                f"entry {name!r} is a link whose target {target!r} has '..' after a name"
                " (it could leave the directory through another link)"
            )
        parent = self._parent(parts, name)
        try:
            os.symlink(target, parts[-1], dir_fd=parent)
        except FileExistsError:
            raise Refused(f"entry {name!r} appears twice in the archive") from None
        finally:
            os.close(parent)

    def hardlink(self, name: str, target: str) -> None:
        parts = self.parts(name)
        try:
            source = self.parts(target)
        except Refused:
            raise Refused(
                f"entry {name!r} is a hard link to {target!r}, outside the package"
            ) from None
        self._count(name)
        if source not in self.files:
            raise Refused(
                f"entry {name!r} is a hard link to {target!r}, which is not a file extracted"
                " before it"
            )
        src_parent = self._parent(source, target)
        try:
            dst_parent = self._parent(parts, name)
        except BaseException:
            os.close(src_parent)
            raise
        try:
            os.link(source[-1], parts[-1], src_dir_fd=src_parent, dst_dir_fd=dst_parent,
                    follow_symlinks=False)  # fmt: skip
        except FileExistsError:
            raise Refused(f"entry {name!r} appears twice in the archive") from None
        finally:
            os.close(src_parent)
            os.close(dst_parent)
        self.files.add(parts)


def _read(data: IO[bytes], name: str) -> bytes:
    """A chunk of an entry: anything going wrong while decompressing is the archive's."""
    try:
        return data.read(CHUNK)
    except Refused:
        raise
    except Exception as exc:  # zlib, bz2 and lzma errors, CRC mismatches, truncation
        raise Refused(f"entry {name!r} is damaged: {exc}") from None


def _kind(mode: int) -> str | None:
    for test, kind in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return kind
    return None


def extract_zip(stream: IO[bytes], out: Extractor, *, nupkg: bool) -> None:
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise Refused(f"it is not a valid zip archive: {exc}") from None
    with archive:
        members = archive.infolist()
        if len(members) > out.max_files:
            raise Refused(
                f"the package has {len(members)} entries, more than {out.max_files}"
                " (limits.package_files)"
            )
        for info in members:
            name = info.filename
            if nupkg:
                if name == NUPKG_METADATA[0] or name.startswith(NUPKG_METADATA[1:]):
                    continue
                name = urllib.parse.unquote(name)
            if info.flag_bits & 0x1:
                raise Refused(f"entry {name!r} is encrypted")
            mode = info.external_attr >> 16 if info.create_system == 3 else 0
            kind = _kind(mode)
            try:
                if kind is not None:
                    raise Refused(f"entry {name!r} is {kind}")
                if stat.S_ISLNK(mode):
                    if info.file_size > MAX_LINK:
                        raise Refused(f"entry {name!r} is a link with an unusable target")
                    out.symlink(name, archive.read(info).decode("utf-8", "replace"))
                elif info.is_dir() or stat.S_ISDIR(mode):
                    out.directory(name)
                else:
                    with archive.open(info) as data:
                        out.file(name, mode, data)
            except (zipfile.BadZipFile, EOFError, RuntimeError, zlib.error, lzma.LZMAError,
                    NotImplementedError) as exc:  # fmt: skip
                raise Refused(
                    f"entry {name!r} is damaged or uses an unknown method: {exc}"
                ) from None


class _BoundedInfo(tarfile.TarInfo):
    """tarfile reads a long-name or pax header whole into memory: refuse a large one first
    (these are tarfile's own hooks for those headers)."""

    def _proc_gnulong(self, tarfile: Any) -> Any:
        self._bounded()
        return super()._proc_gnulong(tarfile)  # type: ignore[misc]

    def _proc_pax(self, tarfile: Any) -> Any:
        self._bounded()
        return super()._proc_pax(tarfile)  # type: ignore[misc]

    def _proc_sparse(self, tarfile: Any) -> Any:
        raise Refused(f"entry {self.name!r} is a sparse file, which is not extracted")

    def _bounded(self) -> None:
        if self.size > MAX_HEADER:
            raise Refused(f"the archive has a {self.size}-byte tar header (at most {MAX_HEADER})")


def extract_tar(stream: IO[bytes], out: Extractor) -> None:
    try:
        archive = tarfile.open(fileobj=stream, mode="r|gz", tarinfo=_BoundedInfo)  # noqa: SIM115
    except (tarfile.TarError, OSError, EOFError, RecursionError) as exc:
        raise Refused(f"it is not a valid tar.gz archive: {exc}") from None
    with archive:
        members: Iterator[tarfile.TarInfo] = iter(archive)
        while True:
            try:
                member = next(members)
            except StopIteration:
                break
            except (tarfile.TarError, OSError, EOFError, zlib.error, RecursionError) as exc:
                raise Refused(f"the tar.gz archive is damaged: {exc!r}") from None
            name = member.name
            try:
                if member.ischr() or member.isblk():
                    raise Refused(f"entry {name!r} is a device file")
                if member.isfifo():
                    raise Refused(f"entry {name!r} is a FIFO")
                if member.issym():
                    out.symlink(name, member.linkname)
                elif member.islnk():
                    out.hardlink(name, member.linkname)
                elif member.isdir():
                    out.directory(name)
                elif member.isreg() and member.type != tarfile.GNUTYPE_SPARSE:
                    data = archive.extractfile(member)
                    out.file(name, member.mode, data if data is not None else io.BytesIO())
                else:
                    raise Refused(f"entry {name!r} has a tar type ({member.type!r}) not extracted")
            except (tarfile.TarError, EOFError, zlib.error) as exc:
                raise Refused(f"entry {name!r} is damaged: {exc}") from None


def extract(package: str, stream: IO[bytes], out: Extractor) -> None:
    if package.endswith((".zip", ".nupkg")):
        extract_zip(stream, out, nupkg=package.endswith(".nupkg"))
    elif package.endswith((".tar.gz", ".tgz")):
        extract_tar(stream, out)
    else:
        raise Refused("its name says neither zip, tar.gz nor nupkg")


# --- substitution ---------------------------------------------------------------------


def substitute(text: str, variables: dict[str, str]) -> str:
    """Octostache's simplest form: `#{Name}` becomes the value, `##{Name}` stays `#{Name}`,
    and an unknown name is left as written."""

    def one(match: re.Match[str]) -> str:
        if match.group(1):
            return match.group(0)[1:]
        name = match.group(2).strip()
        return variables.get(name, match.group(0))

    return _VARIABLE.sub(one, text)


def _top_files() -> Iterator[str]:
    for folder, dirs, files in os.walk(".", followlinks=False):
        if folder == ".":
            dirs[:] = [d for d in dirs if not d.startswith(RESERVED)]
        for name in files:
            if folder == "." and name.startswith(RESERVED):
                continue
            yield os.path.relpath(os.path.join(folder, name), ".")


def glob(pattern: str) -> re.Pattern[str]:
    """A file glob relative to the package's top: `*` and `?` stay inside one directory,
    `**/` matches any number of directories (none included), a final `**` anything."""
    out, parts = [], pattern.strip("/").split("/")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]*/)*")
            continue
        text = "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part)
        out.append(text if last else text + "/")
    return re.compile("".join(out))


def substitute_files(patterns: list[str], variables: dict[str, str]) -> None:
    found = sorted(_top_files())
    for pattern in patterns:
        wanted = glob(pattern)
        matched = [path for path in found if wanted.fullmatch(path)]
        if not matched:
            _say(f"warning: no file matches the substitution pattern {pattern!r}")
        for path in matched:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                _say(f"warning: {path} is not a regular file (a link?); not substituted")
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as handle:
                raw = handle.read()
                mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise Refused(
                    f"{path} is not UTF-8 text, so #{{...}} cannot be substituted"
                ) from None
            new = substitute(text, variables)
            if new != text:
                temporary = f"{path}.sandworker-substitute"
                fd = os.open(temporary, _NEW, mode)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(new.encode("utf-8"))
                os.rename(temporary, path)
            _say(f"substituted variables in {path}")


# --- stages ---------------------------------------------------------------------------


def stage_script(stage: str, syntaxes: dict[str, list[str]]) -> tuple[str, list[str]] | None:
    """The stage's script at the package's top and the argv prefix to run it with."""
    names = {name.lower(): name for name in os.listdir(".")}
    refused = []
    for extension, candidates in EXTENSIONS:
        name = names.get(f"{stage.lower()}.{extension}")
        if name is None or not stat.S_ISREG(os.lstat(name).st_mode):
            continue
        for syntax in candidates:
            if syntax in syntaxes:
                return name, syntaxes[syntax]
        refused.append(f"{name} ({'/'.join(candidates)})")
    if refused:
        raise Refused(
            f"{', '.join(refused)}: not a syntax this project may run (policy syntaxes), or"
            " no interpreter for it on this worker"
        )
    return None


def run(name: str, prefix: list[str], arguments: list[str]) -> int:
    _say(f"running {name}")
    bootstrap = os.path.abspath(prefix[-1])  # the helpers find their files beside it
    code = subprocess.run([*prefix[:-1], bootstrap, name, *arguments], stdin=subprocess.DEVNULL,
                          check=False).returncode  # fmt: skip
    return 128 - code if code < 0 else code


def _complain(message: str) -> None:
    print(f"sandworker: {message}", file=sys.stderr, flush=True)


def _fail(message: str) -> None:
    _complain(message)
    _service("resultMessage", message=message)


def unpack(config: dict[str, Any]) -> bool:
    """Extract the package given on standard input into the working directory."""
    package = config["package"]
    root = os.open(".", _DIR)
    out = Extractor(root, config["max_bytes"], config["max_files"])
    try:
        with open(0, "rb", closefd=False) as stream:
            extract(package, stream, out)
    except Refused as exc:
        _fail(f"the package {package} was refused: {exc}")
        return False
    except OSError as exc:  # the disk or a limit (file_size), not the archive
        _fail(f"the package {package} could not be extracted: {exc.strerror or exc}")
        return False
    finally:
        os.close(root)
    _say(f"extracted {package}: {out.entries} entries, {out.written} bytes")
    return True


def steps(config: dict[str, Any], run_packaged: bool) -> list[str]:
    """The step's parts in order: stage names, "substitute", and "script"."""
    order = ["PreDeploy", "substitute", "Deploy", "script", "PostDeploy"]
    return [
        part
        for part in order
        if (part not in STAGES or run_packaged) and (part != "script" or config["script"])
    ]


def run_step(part: str, config: dict[str, Any], variables: dict[str, str]) -> int:
    syntaxes: dict[str, list[str]] = config["syntaxes"]
    if part == "substitute":
        if config["substitute"]:
            substitute_files(config["substitute"], variables)
        return 0
    if part == "script":
        found: tuple[str, list[str]] | None = (
            config["script"], syntaxes[config["script_syntax"]]
        )  # fmt: skip
    else:
        found = stage_script(part, syntaxes)
    if found is None:
        return 0
    code = run(found[0], found[1], config["arguments"])
    if code:
        _complain(f"{found[0]} failed with exit code {code}")
    return code


def main() -> int:
    with open(CONFIG, encoding="utf-8") as handle:
        config: dict[str, Any] = json.load(handle)
    variables: dict[str, str] = {}
    if os.path.exists(VARIABLES):
        with open(VARIABLES, encoding="utf-8") as handle:
            variables = json.load(handle)
    if not unpack(config):
        return 1
    run_packaged = variables.get("Octopus.Action.Package.RunScripts", "True").lower() != "false"
    failed = 0
    for part in steps(config, run_packaged):
        try:
            failed = run_step(part, config, variables)
        except (Refused, OSError) as exc:
            _fail(str(exc))
            failed = 1
        if failed:
            break
    if failed and run_packaged:
        try:
            run_step("DeployFailed", config, variables)
        except (Refused, OSError) as exc:
            _complain(str(exc))
    return failed


if __name__ == "__main__":
    sys.exit(main())
