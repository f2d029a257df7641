"""What a script's service messages set on its ticket (servicemessages.py has the format).

`ScriptMessages.split` takes a batch of stdout lines: the plain ones come back in runs of
one log level, the messages become changes to the ticket's record (output variables,
artifacts, progress, result message) and, for `mask` and sensitive variables, new
secrets for the ticket's masker. A malformed message stays as text, with a debug note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from .servicemessages import KNOWN_OTHERS, LEVELS, PREFIX, Malformed, Masker, parse

MAX_OUTPUTS = 1000  # output variables (and artifacts) a ticket keeps; more are refused
MAX_VALUE = 64 * 1024  # characters of one output variable's value


@dataclass
class Split:
    runs: list[tuple[str, list[bytes]]] = field(default_factory=list)  # (level, plain lines)
    changes: dict[str, Any] = field(default_factory=dict)  # TicketRecord fields to replace
    notes: list[str] = field(default_factory=list)  # debug lines, after the run


class ScriptMessages:
    def __init__(self, masker: Masker) -> None:
        self.masker = masker
        self.level = "default"

    def wants(self, lines: list[bytes]) -> bool:
        """Whether `split` has anything to do (else the lines go out as they are)."""
        if self.level != "default":
            return True
        if b"#" not in b"".join(lines):  # one copy and memchr: 9x cheaper per line than below
            return False
        return any(map(bytes.startswith, lines, repeat(PREFIX)))

    def split(self, lines: list[bytes], record: Any) -> Split:
        out = Split()
        outputs = dict(record.outputs)
        artifacts = list(record.artifacts)
        for line in lines:
            if not line.startswith(PREFIX):
                if out.runs and out.runs[-1][0] == self.level:
                    out.runs[-1][1].append(line)
                else:
                    out.runs.append((self.level, [line]))
                continue
            try:
                self._apply(parse(line), outputs, artifacts, out)
            except Malformed as exc:
                out.runs.append((self.level, [line]))
                out.notes.append(f"the line above was printed as text: {exc}")
        if outputs != record.outputs:
            out.changes["outputs"] = outputs
        if artifacts != record.artifacts:
            out.changes["artifacts"] = artifacts
        return out

    def _apply(self, msg: Any, outputs: dict[str, Any], artifacts: list[Any], out: Split) -> None:
        a = msg.attrs
        if msg.name == "setVariable":
            name, value = a.get("name", ""), a.get("value", "")
            sensitive = a.get("sensitive", "").lower() == "true"
            if not name or len(value) > MAX_VALUE:
                raise Malformed(f"setVariable needs a name and a value of at most {MAX_VALUE}")
            if name not in outputs and len(outputs) >= MAX_OUTPUTS:
                raise Malformed(f"more than {MAX_OUTPUTS} output variables")
            if sensitive:
                self.masker.add(value)
            outputs[name] = {"value": value, "sensitive": sensitive}
        elif msg.name == "mask":
            self.masker.add(a.get("value", ""))
        elif msg.name == "createArtifact":
            if not a.get("path") or len(artifacts) >= MAX_OUTPUTS:
                raise Malformed("createArtifact needs a path (and at most 1000 artifacts)")
            length = a.get("length", "0")
            artifacts.append({
                "name": a.get("name") or a["path"].rsplit("/", 1)[-1],
                "path": a["path"],
                "length": int(length) if length.isdigit() else 0,
            })  # fmt: skip
        elif msg.name == "progress":
            pct = a.get("percentage", "0")
            out.changes["progress"] = {
                "percentage": max(0, min(100, int(pct))) if pct.isdigit() else 0,
                "message": self.masker.mask_text(a.get("message", "")),
            }
        elif msg.name == "resultMessage":
            out.changes["result_message"] = self.masker.mask_text(a.get("message", ""))
        elif msg.name.startswith("stdout-") and msg.name[7:] in LEVELS:
            self.level = msg.name[7:]
        elif msg.name in KNOWN_OTHERS or msg.name.startswith(("create-", "stderr-")):
            out.notes.append(f"service message {msg.name} is not used by this worker")
        else:
            raise Malformed(f"unknown service message {msg.name!r}")


def adopted(record: Any, doc: dict[str, Any]) -> dict[str, Any]:
    """A proxy: the fields of a worker's status page to copy into its own record."""
    changes: dict[str, Any] = {}
    for name, kind in (("outputs", dict), ("artifacts", list), ("progress", dict)):
        value = doc.get("output_variables" if name == "outputs" else name)
        if isinstance(value, kind) and value != getattr(record, name):
            changes[name] = value
    message = doc.get("result_message")
    if isinstance(message, str) and message != record.result_message:
        changes["result_message"] = message
    return changes
