"""Remove one directory tree; run as the tree's owner (never root) by workspace.py.

Usage: python -I -S remover.py DIR. Symlinks are removed, never followed;
directories the owner made unwritable are made writable first.
"""

import os
import shutil
import stat
import sys


def _retry(func, path, _exc):  # type: ignore[no-untyped-def]
    parent = os.path.dirname(path)
    st = os.lstat(parent)
    os.chmod(parent, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, stat.S_IRWXU)
    func(path)


def main() -> int:
    target = sys.argv[1]
    if not os.path.lexists(target):
        return 0
    if os.path.islink(target) or not os.path.isdir(target):
        print(f"{target} is not a directory; refusing", file=sys.stderr)
        return 1
    shutil.rmtree(target, onerror=_retry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
