"""Checks on policy values that a reviewer relies on: names, paths, accounts, patterns.

Each check returns why a value is refused, phrased so a person can act on it,
or None. `policy_fields` attaches them to the fields.
"""

from __future__ import annotations

import fnmatch
import re
import urllib.parse

from .fields import toml_value

# A pattern uses the characters of project ids plus the wildcards * and ?, so
# every rule can match something and no character class or path sneaks in.
MATCH_PATTERN = r"^[A-Za-z0-9._*?-]+$"
MATCH_HELP = "use letters, digits, '.', '_', '-' (as in project ids) and the wildcards * and ?"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENV_NAME_HELP = "use letters, digits and '_', not starting with a digit"
ACCOUNT_PATTERN = r"^[a-z_][a-z0-9_-]{0,31}$"  # "dynamic" or a portable user name
ACCOUNT_HELP = (
    "use \"dynamic\" or an account name: lower-case letters, digits, '_' and '-',"
    " at most 32, starting with a letter or '_'"
)


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Environment names a policy may neither pass through nor set, with the reason.
RESERVED_ENV: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        # glibc's "unsecure envvars": ignored for setuid programs for this reason.
        _names(
            "LD_* GCONV_PATH GETCONF_DIR GLIBC_TUNABLES HOSTALIASES LOCALDOMAIN LOCPATH"
            " MALLOC_* NIS_PATH NLSPATH RESOLV_HOST_CONF RES_OPTIONS TZDIR"
        ),
        "it makes the C library load code or data from a path of the caller's choosing",
    ),
    (
        _names(
            "BASH_ENV ENV BASH_FUNC_* SHELLOPTS BASHOPTS PS4 IFS CDPATH GLOBIGNORE"
            " PROMPT_COMMAND BASH_XTRACEFD"
        ),
        "it makes the shell run code before the script or parse the script differently",
    ),
    (
        _names(
            "PYTHON* PERL5* PERLLIB PERL_* RUBYOPT RUBYLIB NODE_OPTIONS NODE_PATH"
            " PSModulePath DOTNET_STARTUP_HOOKS CORECLR_*"
        ),
        "it makes an interpreter load code before the script",
    ),
    (
        _names("HOME USER LOGNAME PATH TMPDIR"),
        "the sandbox sets it for each script",
    ),
    (
        _names("SHELL PWD OLDPWD"),
        "it describes the supervisor's own session, not the script's",
    ),
    (
        _names(
            "NOTIFY_SOCKET LISTEN_* WATCHDOG_* CREDENTIALS_DIRECTORY INVOCATION_ID"
            " SSH_AUTH_SOCK SANDWORKER_*"
        ),
        "it belongs to the supervisor and would hand its sockets or credentials to scripts",
    ),
)
# SSL_CERT_FILE, REQUESTS_CA_BUNDLE, http_proxy and the like stay allowed: they
# choose trust and routes, not code, and an administrator may need to set them.

# Never writable by a script: the system itself, kernel interfaces, the
# administrator's home, sockets of running services and the daemon's own state.
NEVER_WRITABLE = _names(
    "/ /etc /usr /bin /sbin /lib* /boot /proc /sys /dev /root /run /var/run"
    " /var/lib/sandworker /etc/sandworker /var/log/sandworker"
)
# Never visible at all: the sandbox mounts its own /proc, /sys and /dev (the
# host's would undo the pid namespace); a read-only /run still lets a script
# connect() to service sockets; the daemon's state holds other projects' files.
NEVER_VISIBLE = _names(
    "/proc /sys /dev /run /var/run /root /var/lib/sandworker /etc/sandworker /var/log/sandworker"
)


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def overlap(path: str, protected: str) -> str | None:
    """How `path` overlaps `protected`: "is inside /usr", "contains /proc", or None."""
    mine, theirs = _components(path), _components(protected)
    if not theirs:  # "/": only the root itself
        return "is a protected path" if not mine else None
    common = min(len(mine), len(theirs))
    if not all(
        fnmatch.fnmatchcase(a, b) for a, b in zip(mine[:common], theirs[:common], strict=True)
    ):
        return None
    if len(mine) < len(theirs):
        return f"contains {protected}"
    matched = "/" + "/".join(mine[: len(theirs)])  # "/lib64" for "/lib*"
    return "is a protected path" if len(mine) == len(theirs) else f"is inside {matched}"


def read_write_error(path: str) -> str | None:
    """Why a script may not write `path`, or None."""
    for root in NEVER_WRITABLE:
        how = overlap(path, root)
        if how:
            return (
                f"{toml_value(path)} {how}, which scripts may never write;"
                " grant a dedicated directory such as /srv/NAME instead"
            )
    return None


# Replaced by a private tmpfs in every sandbox: a host path below them would be covered.
PRIVATE = _names("/tmp /dev/shm")  # noqa: S108 - names, not files we create


def visible_error(path: str) -> str | None:
    """Why a script may not see `path` at all, or None."""
    for root in PRIVATE:
        how = overlap(path, root)
        if how and not how.startswith("contains"):
            return (
                f"{toml_value(path)} {how}, which every sandbox replaces with its own private"
                " tmpfs, so the host path would be hidden; use a path such as /srv/NAME"
            )
    for root in NEVER_VISIBLE:
        how = overlap(path, root)
        if how:
            return (
                f"{toml_value(path)} {how}, which scripts may never see (kernel interfaces,"
                " service sockets or sandworker's own state); list a narrower path"
            )
    return None


def read_write_check(path: str) -> str | None:
    """Checks for `filesystem.read_write`: visible and writable."""
    return read_write_error(path) or visible_error(path)


def env_name_error(name: str) -> str | None:
    """Why `name` may not be passed to or set for a script, or None."""
    for patterns, reason in RESERVED_ENV:
        for pattern in patterns:
            if fnmatch.fnmatchcase(name, pattern):
                how = "" if pattern == name else f" (matches {pattern})"
                return f"{toml_value(name)} is refused{how}: {reason}; remove it"
    return None


def env_values_error(values: dict[str, str]) -> str | None:
    for name, value in values.items():
        if "\0" in value:
            return (
                f"the value of {toml_value(name)} contains a NUL character, which exec cannot pass"
            )
    return None


def account_error(name: str) -> str | None:
    if name == "root":
        return (
            '"root" is never allowed: scripts must run unprivileged;'
            ' use "dynamic" or an unprivileged account'
        )
    return None


# --- package sources ------------------------------------------------------------------

_PORTS = {"https": 443, "http": 80}


def _url(text: str) -> tuple[str, str, int, str] | str:
    """(scheme, host, port, path) of a URL, or why it is unusable. Refused outright: what
    urlsplit would drop (tabs, newlines) or servers read differently (a backslash as '/',
    a double encoding such as %252e), spaces and control characters."""
    if re.search(r"[\x00-\x20\x7f\\]", text):
        return "has a space, a control character or a backslash"
    if "%25" in text:
        return "has an encoded '%' (a double encoding)"
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        return f"is not a URL: {exc}"
    path = parts.path or "/"
    segments = urllib.parse.unquote(path).split("/")
    problems = (
        (parts.scheme not in _PORTS or not parts.hostname,
         "must be an https:// or http:// URL with a host"),
        (parts.username is not None or parts.password is not None,
         "carries credentials; they do not belong in a URL"),
        (bool(parts.fragment), "has a #fragment"),
        (".." in segments or "." in segments or bool(re.search(r"%(2[ef]|5c)", path, re.I)),
         "has '.', '..' or an encoded '.', '/' or '\\' in its path"),
    )  # fmt: skip
    for wrong, why in problems:
        if wrong:
            return why
    assert parts.hostname is not None
    return parts.scheme, parts.hostname.lower(), port or _PORTS[parts.scheme], path


def source_error(source: str) -> str | None:
    """Why `packages.sources` may not list `source`, or None."""
    found = _url(source)
    if isinstance(found, str):
        shown = re.sub(r"//[^/@]*@", "//***@", source)  # never repeat a password
        return f"{toml_value(shown)} {found}"
    if urllib.parse.urlsplit(source).query:
        return f"{toml_value(source)} has a ?query; list a path prefix"
    if not found[3].endswith("/"):
        return (
            f"{toml_value(source)}: end the path with '/', so that a prefix such as /releases"
            " does not also allow /releases-other"
        )
    return None


def source_for(url: str, sources: tuple[str, ...]) -> str | None:
    """The first of `sources` that allows downloading `url`; raises ValueError for a URL
    that is unusable whatever the sources (the message says why)."""
    found = _url(url)
    if isinstance(found, str):
        raise ValueError(f"the URL {found}")
    scheme, host, port, path = found
    for source in sources:
        allowed = _url(source)
        if isinstance(allowed, str):
            continue
        if allowed[:3] == (scheme, host, port) and path.startswith(allowed[3]):
            return source
    return None
