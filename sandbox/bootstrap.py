"""Calamari's script helpers (notes/octopus.md section 4), loaded before the user script.

For bash, sh, python and PowerShell the run directory gets a bootstrap and the variables file, both
the project account's and 0600: the interpreter runs the bootstrap, which defines the
helpers and then runs the script in the same process (sourced, or run as `__main__`),
with the script's own arguments. Variables never travel on a command line.

The helpers speak in service messages, `##octopus[name attr='base64' ...]` lines on
stdout, which the supervisor reads (daemon/servicemessages.py): set_octopusvariable,
new_octopusartifact, fail_step, update_progress, write_verbose|highlight|wait|warning,
and, for values the script learns itself, `##octopus[mask value='...']`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

VARIABLES_SH = ".octopus.variables"  # "base64(name) base64(value)" lines
VARIABLES_PY = ".octopus.variables.json"
BOOTSTRAP = {"bash": ".octopus.bootstrap.sh", "sh": ".octopus.bootstrap.sh",
             "python": ".octopus.bootstrap.py", "powershell": ".octopus.bootstrap.ps1"}  # fmt: skip

Variable = tuple[str, str, bool]  # (name, value, sensitive)

# POSIX sh (dash runs it too). `base64` comes from the read-only system directories.
_SH = r"""# sandworker: Calamari's bash helpers, then the script (sourced, with its arguments).
__octopus_b64() { printf '%s' "$1" | base64 | tr -d '\n'; }
__octopus_dir=${0%/*}  # (the bootstrap is always named by its absolute path: no fork)
get_octopusvariable() {
  [ -f "$__octopus_dir/.octopus.variables" ] || return 0  # (a start without variables)
  __want=$(__octopus_b64 "$1")
  while read -r __n __v; do
    if [ "$__n" = "$__want" ]; then printf '%s' "$__v" | base64 -d; return 0; fi
  done < "$__octopus_dir/.octopus.variables"
  return 0
}
set_octopusvariable() {
  __s=""
  if [ "${3:-}" = "-sensitive" ]; then __s=" sensitive='$(__octopus_b64 True)'"; fi
  echo "##octopus[setVariable name='$(__octopus_b64 "$1")' value='$(__octopus_b64 "$2")'$__s]"
}
new_octopusartifact() {
  __p=$(realpath -m -- "$1"); __name=${2:-$(basename -- "$1")}
  __len=$(stat -c %s -- "$__p" 2>/dev/null || echo 0)
  __a="path='$(__octopus_b64 "$__p")' name='$(__octopus_b64 "$__name")'"
  echo "##octopus[createArtifact $__a length='$(__octopus_b64 "$__len")']"
}
fail_step() {
  if [ -n "${1:-}" ]; then echo "##octopus[resultMessage message='$(__octopus_b64 "$1")']"; fi
  exit 1
}
update_progress() {
  echo "##octopus[progress percentage='$(__octopus_b64 "$1")' message='$(__octopus_b64 "${2:-}")']"
}
__octopus_level() { echo "##octopus[stdout-$1]"; echo "$2"; echo "##octopus[stdout-default]"; }
write_verbose() { __octopus_level verbose "$1"; }
write_highlight() { __octopus_level highlight "$1"; }
write_wait() { __octopus_level wait "$1"; }
write_warning() { __octopus_level warning "$1"; }
__octopus_script=$1
shift
. "$__octopus_dir/$__octopus_script"
"""

_PY = r"""# sandworker: Calamari's python helpers, then the script as __main__, with its arguments.
import sys as _sys

_path0 = _sys.path.pop(0)  # the run directory: a package's json.py must not be what we import
import base64 as _b64
import json as _json
import os as _os
import runpy as _runpy

_here = _os.path.dirname(_os.path.abspath(__file__))
_variables = {}
if _os.path.exists(_os.path.join(_here, ".octopus.variables.json")):  # (none: no file)
    with open(_os.path.join(_here, ".octopus.variables.json"), encoding="utf-8") as _f:
        _variables = _json.load(_f)


def _enc(value):
    return _b64.b64encode(str(value).encode("utf-8")).decode("ascii")


def _message(kind, /, **attrs):
    inside = " ".join(f"{k}='{_enc(v)}'" for k, v in attrs.items())
    print(f"##octopus[{kind}{' ' if inside else ''}{inside}]", flush=True)


def get_octopusvariable(name):
    return _variables.get(name, "")


def set_octopusvariable(name, value, sensitive=False):
    if sensitive:
        _message("setVariable", name=name, value=value, sensitive="True")
    else:
        _message("setVariable", name=name, value=value)


def createartifact(path, name=None):
    path = _os.path.abspath(path)
    length = _os.path.getsize(path) if _os.path.exists(path) else 0
    _message("createArtifact", path=path, name=name or _os.path.basename(path), length=length)


def updateprogress(progress, message=None):
    _message("progress", percentage=progress, message=message or "")


def failstep(message=None):
    if message:
        _message("resultMessage", message=message)
    _sys.exit(1)


def _level(level, message):
    print(f"##octopus[stdout-{level}]", flush=True)
    print(message, flush=True)
    print("##octopus[stdout-default]", flush=True)


def printverbose(message):
    _level("verbose", message)


def printhighlight(message):
    _level("highlight", message)


def printwait(message):
    _level("wait", message)


def printwarning(message):
    _level("warning", message)


_helpers = {f.__name__: f for f in (get_octopusvariable, set_octopusvariable, createartifact,
            updateprogress, failstep, printverbose, printhighlight, printwait, printwarning)}
_script = _os.path.join(_here, _sys.argv[1])
_sys.argv = [_script, *_sys.argv[2:]]
_sys.path.insert(0, _path0)  # the script imports from beside it, as `python script.py` does
_runpy.run_path(_script, init_globals=_helpers, run_name="__main__")
"""


# PowerShell 7 (pwsh). Variables come as $OctopusParameters, as in Calamari.
_PS1 = r"""# sandworker: Calamari's PowerShell helpers, then the script (dot-sourced).
$ErrorActionPreference = 'Stop'
# "base64(name) base64(value)" lines: no JSON date guessing, names case-insensitive
$OctopusParameters = New-Object 'System.Collections.Generic.Dictionary[string,string]' (
  [System.StringComparer]::OrdinalIgnoreCase)
$__octopusVariables = Join-Path $PSScriptRoot '.octopus.variables'
if (Test-Path -LiteralPath $__octopusVariables) {
  foreach ($__line in [System.IO.File]::ReadAllLines($__octopusVariables)) {
    $__pair = $__line.Split(' ')
    $__name = [System.Text.Encoding]::UTF8.GetString([System.Convert]::FromBase64String($__pair[0]))
    $OctopusParameters[$__name] = [System.Text.Encoding]::UTF8.GetString(
      [System.Convert]::FromBase64String($__pair[1]))
  }
}
function Convert-ToServiceMessageParameter([string]$name, [string]$value) {
  $encoded = [System.Convert]::ToBase64String([System.Text.Encoding]::UTF8.GetBytes($value))
  return "$name='$encoded'"
}
function Write-OctopusServiceMessage([string]$kind, [hashtable]$attrs) {
  $inside = ($attrs.GetEnumerator() | Sort-Object Name |
    ForEach-Object { Convert-ToServiceMessageParameter $_.Name $_.Value }) -join ' '
  [Console]::Out.WriteLine("##octopus[$kind $inside]")
}
function Get-OctopusVariable([string]$name) {
  if ($OctopusParameters.ContainsKey($name)) { return $OctopusParameters[$name] }
  return ''
}
function Set-OctopusVariable([string]$name, [string]$value, [switch]$sensitive) {
  $attrs = @{ name = $name; value = $value }
  if ($sensitive) { $attrs.sensitive = 'True' }
  Write-OctopusServiceMessage 'setVariable' $attrs
}
function New-OctopusArtifact([Alias('fullpath')][string]$path, [string]$name) {
  $full = [System.IO.Path]::GetFullPath($path, (Get-Location).ProviderPath)
  if (-not $name) { $name = [System.IO.Path]::GetFileName($full) }
  $length = if (Test-Path -LiteralPath $full) { (Get-Item -LiteralPath $full).Length } else { 0 }
  Write-OctopusServiceMessage 'createArtifact' @{ path = $full; name = $name; length = "$length" }
}
function Fail-Step([string]$message) {
  if ($message) { Write-OctopusServiceMessage 'resultMessage' @{ message = $message } }
  exit -1  # as Calamari's (255 on Linux)
}
function Update-Progress([int]$percentage, [string]$message = '') {
  Write-OctopusServiceMessage 'progress' @{ percentage = "$percentage"; message = $message }
}
function Write-OctopusLevel([string]$level, [string]$message) {
  [Console]::Out.WriteLine("##octopus[stdout-$level]")
  [Console]::Out.WriteLine($message)
  [Console]::Out.WriteLine('##octopus[stdout-default]')
}
function Write-Highlight([string]$message) { Write-OctopusLevel 'highlight' $message }
function Write-Wait([string]$message) { Write-OctopusLevel 'wait' $message }
function Write-Verbose([string]$message) { Write-OctopusLevel 'verbose' $message }
function Write-Debug([string]$message) { Write-OctopusLevel 'verbose' $message }
function Write-Warning([string]$message) { Write-OctopusLevel 'warning' $message }
$__octopusScript = Join-Path $PSScriptRoot $args[0]
$__octopusArguments = @($args | Select-Object -Skip 1)
. $__octopusScript @__octopusArguments
if ((Test-Path variable:global:LASTEXITCODE) -and $global:LASTEXITCODE) {
  exit $global:LASTEXITCODE
}
exit 0
"""


def files_for(syntax: str, variables: Sequence[Variable]) -> dict[str, bytes]:
    """The bootstrap and variables file of a syntax (none for one without helpers; no
    variables file without variables: a file costs an inode on every run)."""
    if syntax in ("bash", "sh", "powershell"):
        files = {BOOTSTRAP[syntax]: (_PS1 if syntax == "powershell" else _SH).encode()}
        if variables:
            files[VARIABLES_SH] = b"".join(
                base64.b64encode(name.encode()) + b" " + base64.b64encode(value.encode()) + b"\n"
                for name, value, _sensitive in variables
            )
        return files
    if syntax == "python":
        files = {BOOTSTRAP[syntax]: _PY.encode()}
        if variables:
            doc = {name: value for name, value, _sensitive in variables}
            files[VARIABLES_PY] = json.dumps(doc).encode()
        return files
    return {}
