"""Remove one run directory; run by workspace.py as the tree's owner, never as root.

Usage: python -I -S remover.py DIRFD NAME (workspace.py passes the source with -c, so
the account never needs to read the installed file). Deletes NAME relative to the
directory open on DIRFD. Symlinks are removed, never followed; directories the
owner made unwritable are made writable first.
"""

import os
import shutil
import stat
import sys


def _retry(func, path, _exc):  # type: ignore[no-untyped-def]
    parent = os.path.dirname(path) or "."
    os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IRWXU)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, stat.S_IRWXU)
    func(path)


def main() -> int:
    os.fchdir(int(sys.argv[1]))
    name = sys.argv[2]
    if "/" in name or name in (".", ".."):
        print(f"{name!r} is not a plain name; refusing", file=sys.stderr)
        return 1
    if not os.path.lexists(name):
        return 0
    if os.path.islink(name) or not os.path.isdir(name):
        os.unlink(name)
        return 0
    shutil.rmtree(name, onerror=_retry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
