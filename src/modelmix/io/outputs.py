"""Where a command may write: one check shared by every command that writes an output.

The README promises that inputs are never modified. Most ways of breaking that promise are not bugs in the
writer but in the choice of path: ``modelmix merge recipe.yml ./ft1 --overwrite`` where ``./ft1`` is one of
the recipe's models would replace that model with the merge, an output inside a model directory would be
written into it, and an output directory that *contains* an input would delete the input when replaced.
So every output path (model directory, report, plot) is compared with every input (models, LoRA adapters,
the tokenizer source, example files, the recipe) after resolving symlinks and ``..``, before any heavy work,
with or without ``--overwrite``. Only then come the ordinary checks (exists, parent writable).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modelmix.errors import OutputError

Inputs = Iterable[tuple[str, "str | Path"]]  # (what it is, e.g. "input model", path)


def real(path: str | Path) -> Path:
    """Absolute path with symlinks and ``..`` resolved (also for paths that do not exist yet)."""
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(str(path)))))


def _ids(path: Path) -> list[tuple[int, int]]:
    """(device, inode) of ``path`` and each existing ancestor, innermost first (empty where unreadable)."""
    out = []
    for p in (path, *path.parents):
        try:
            st = os.stat(p)
        except OSError:
            continue
        out.append((st.st_dev, st.st_ino))
    return out


def guard_inputs(target: str | Path, inputs: Inputs, *, what: str = "output", allow_contains: bool = False) -> None:
    """OutputError if ``target`` equals, lies inside or contains any input.

    Compared twice: as resolved paths (symlinks and ``..``; also for paths that do not exist yet) and by
    file identity (device and inode), which also catches what path strings cannot: another letter case on a
    case-insensitive file system, a bind mount, a hard-linked checkpoint file. ``allow_contains``: an output
    that only adds files to a directory (``--png-dir``) may sit above inputs.
    """
    t = real(target)
    t_ids = _ids(t)  # t (if it exists) and its existing ancestors
    t_exists = t.exists()
    for label, p in inputs:
        r = real(p)
        r_ids = _ids(r)
        r_id = r_ids[0] if r_ids and r.exists() else None
        r_anc = r_ids[1:] if r_id is not None else r_ids
        if t == r or (t_exists and r_id is not None and t_ids[0] == r_id):
            rel = "is"
        elif r in t.parents or (r_id is not None and r_id in t_ids[int(t_exists):]):
            rel = "lies inside"
        elif not allow_contains and (t in r.parents or (t_exists and t_ids[0] in r_anc)):
            rel = "contains"
        else:
            continue
        given = Path(target).expanduser().absolute()
        shown_t = f"{given}" + (f" (that is {t})" if str(t) != str(given) else "")
        raise OutputError(
            f"The {what} {shown_t} {rel} the {label} {r}. modelmix never writes over, into or around its "
            f"inputs, with or without --overwrite, so nothing was written; choose an output path outside "
            f"every input."
        )


def nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(target: str | Path, *, overwrite: bool, inputs: Inputs = (), create_parents: bool = True,
                     what: str = "output directory") -> Path:
    """Validate a directory output before any work; returns its absolute path (``~`` expanded).

    Refuses an output on, in or around an input; an existing path without ``overwrite`` (or one that is not a
    directory, or does not look like an earlier output); and a location whose parent cannot be created or
    written. Missing parent directories are allowed when ``create_parents`` (the writer creates them, as
    mergekit does).
    """
    try:
        return _check_output_dir(target, overwrite=overwrite, inputs=inputs, create_parents=create_parents,
                                 what=what)
    except OSError as e:  # e.g. EACCES from Path.exists() under a directory we may not search
        raise os_error(e, target, what=f"the {what}") from None


def _check_output_dir(target: str | Path, *, overwrite: bool, inputs: Inputs, create_parents: bool,
                      what: str) -> Path:
    out = Path(target).expanduser().absolute()
    guard_inputs(out, inputs, what=what)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputError(f"Output directory {out} already exists. Pass --overwrite (overwrite=True) to "
                              f"replace it (it is replaced only once the new output is complete).")
        if out.is_symlink() and not out.exists():
            pass  # a dangling link: replacing it loses nothing
        elif not out.is_dir():
            raise OutputError(f"Output path {out} exists and is not a directory.")
        else:
            _check_replaceable(out)
    parent = out.parent
    if not parent.is_dir():
        anc = nearest_existing(parent)
        if not create_parents or not anc.is_dir():
            why = "does not exist" if not parent.exists() else "is not a directory"
            raise OutputError(f"Cannot create {out}: its parent {parent} {why}.")
        parent = anc
    _check_writable(parent)
    return out


#: weights: --overwrite replaces only a directory holding some (or an empty one); a config.json alone is not
#: enough, project directories have those too
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def _check_replaceable(out: Path) -> None:
    """``--overwrite`` replaces an earlier output, not whatever happens to be there: never the current
    directory or one above it, never a directory that does not look like a model."""
    r, cwd = real(out), real(os.getcwd())
    if r == cwd or r in cwd.parents:
        raise OutputError(f"Refusing to replace {out}: it is the current directory or contains it. --overwrite "
                          f"replaces an earlier output directory; choose a new directory for the output.")
    if r == Path(r.anchor) or r == real(Path.home()):
        raise OutputError(f"Refusing to replace {out}: it is the root or home directory.")
    try:
        entries = list(r.iterdir())
    except OSError:
        return
    if entries and not any(e.suffix in _WEIGHT_SUFFIXES or e.name.endswith(".index.json") for e in entries):
        shown = ", ".join(sorted(e.name for e in entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise OutputError(f"Refusing to replace {out} with --overwrite: it does not look like a model directory "
                          f"(it holds {shown}, but no weights such as *.safetensors). Remove it yourself if "
                          f"that is what you want, or choose another output.")


def _check_writable(d: Path) -> None:
    if os.access(d, os.W_OK | os.X_OK):
        try:
            if not os.statvfs(d).f_flag & os.ST_RDONLY:
                return
        except (OSError, AttributeError):
            return
        raise OutputError(f"Cannot write to {d}: it is on a read-only file system. Choose a writable output "
                          f"location.")
    raise OutputError(f"Cannot write to {d}: permission denied. Choose a writable output location.")


def check_output_file(path: str | Path, *, overwrite: bool, inputs: Inputs = (),
                      suffix: str | tuple[str, ...] | None = None, what: str = "output file") -> Path:
    """Validate a single-file output (a report, a plot): the right suffix, not on or in an input, not a
    directory, an existing file only with ``overwrite`` (then replaced atomically by the caller), and its
    directory exists and is writable."""
    try:
        return _check_output_file(Path(path).expanduser(), overwrite=overwrite, inputs=inputs, suffix=suffix,
                                  what=what)
    except OSError as e:
        raise os_error(e, path, what=what) from None


def _check_output_file(p: Path, *, overwrite: bool, inputs: Inputs, suffix: str | tuple[str, ...] | None,
                       what: str) -> Path:
    suffixes = (suffix,) if isinstance(suffix, str) else suffix
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise OutputError(f"{what} {p}: give a file name ending in {' or '.join(suffixes)}.")
    guard_inputs(p, inputs, what=what)
    if p.is_dir():
        raise OutputError(f"Cannot write {what} {p}: it is a directory; give a file name.")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise OutputError(f"{what} {p} already exists. Pass --overwrite to replace it.")
    d = p.absolute().parent
    if not d.is_dir():
        raise OutputError(f"Cannot write {what} {p}: directory {d} does not exist.")
    _check_writable(d)
    return p


def write_file_atomic(path: str | Path, data: bytes | str, *, what: str = "output file") -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place: a failure (disk full)
    leaves the old file, or nothing, never a truncated one. Errors are OutputErrors naming ``path``."""
    import tempfile

    p = Path(path).expanduser()
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.absolute().parent)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        raise os_error(e, p, what=what) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return p


def check_png(path: str | Path, inputs: Inputs = (), *, overwrite: bool = True, what: str = "--png") -> Path:
    """A PNG target: a .png file in an existing directory, not on or inside an input, an existing file only
    with ``overwrite`` (the check every command runs before its evaluation, and again when writing)."""
    return check_output_file(path, inputs=inputs, suffix=".png", what=what, overwrite=overwrite)


def save_png(fig: Any, path: str | Path, *, dpi: int = 100, what: str = "plot") -> Path:
    """Render a matplotlib figure and write it atomically to ``path`` (checked by :func:`check_png`)."""
    import io

    p = check_png(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return write_file_atomic(p, buf.getvalue(), what=what)


def os_error(e: OSError, where: str | Path, *, what: str = "the output") -> OutputError:
    """An OSError met while writing ``where`` as an OutputError that names the output location."""
    import errno

    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return OutputError(f"No space left on the device while writing {what} {where}. Free some space or "
                           f"choose another output location; nothing was written there.")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"Cannot write {what} {where}: {e.strerror}. Choose a writable output location.")
    return OutputError(f"Writing {what} {where} failed: {e.strerror or e}.")


def human_bytes(n: float) -> str:
    """1234567 -> '1.23 MB' (decimal units, three significant digits, so small sizes stay readable)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"  # pragma: no cover - loop always returns


def umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def chmod_tree_umask(root: Path) -> None:
    """Give a directory built in a 0700 temporary dir the permissions the user's umask asks for."""
    mask = umask()
    os.chmod(root, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


def input_list(models: Iterable[str | Path] = (), files: Iterable[str | Path | None] = (),
               file_label: str = "examples file") -> list[tuple[str, Path]]:
    """``(label, path)`` pairs for :func:`guard_inputs`: input models and input files (None skipped)."""
    out = [("input model", Path(m)) for m in models]
    out += [(file_label, Path(f)) for f in files if f is not None]
    return out


def check_model_output(out_dir: str | Path | None, *, overwrite: bool, models: Iterable[str | Path] = (),
                       files: Iterable[str | Path | None] = ()) -> Path | None:
    """The check every command that writes a merged model runs before any evaluation (None: no output)."""
    if out_dir is None:
        return None
    return check_output_dir(out_dir, overwrite=overwrite, inputs=input_list(models, files))


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # renameat2 flags (linux/fs.h)


def rename2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``: True when done; False where the kernel, C library or file system
    lacks it (the caller falls back to plain renames). Other errors (EEXIST for NOREPLACE) are False too,
    so the caller re-checks the target."""
    fn = _renameat2()
    if fn is None:
        return False
    import ctypes

    if fn(-100, os.fsencode(src), -100, os.fsencode(dst), ctypes.c_uint(flags)) == 0:  # -100: AT_FDCWD
        return True
    return False


_RENAMEAT2: list = []


def _renameat2():
    if not _RENAMEAT2:
        fn = None
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
        except (OSError, AttributeError):
            fn = None
        _RENAMEAT2.append(fn)
    return _RENAMEAT2[0]
