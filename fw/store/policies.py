"""Policy revisions in the store: load, list, find, activate (and roll back), diff.

How it works: a revision is the policy's own revision (the sha256 of its merged values, computed
by fw.policy), so loading the same policy twice stores it once. Its sources (each file's name and
text, in merge order) are stored, and `policy_of(record)` loads them again through
`fw.policy.load_policy_sources`: what runs is exactly what was checked. Activating a revision
adds an `Activation` row; the active revision is the newest activation's, so activating an older
revision is the rollback, and the history is kept. A revision is named by its hash or any unique
prefix of it, or `active`.

Every function takes an open SQLAlchemy session first (the caller owns its lifecycle) and records
what it did as an event (fw.store.records) in the same transaction.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from fw.store.database import NotFound, StoreError
from fw.store.models import Activation, PolicyRevision
from fw.store.records import add_event, policy_event

ACTIVE = "active"


def store_policy(session: Session, policy, origin: str) -> tuple[PolicyRevision, bool]:
    """Store a loaded Policy; (its record, True if it was not stored before)."""
    record = session.scalar(select(PolicyRevision).where(PolicyRevision.revision == policy.revision))
    new = record is None
    if new:
        record = PolicyRevision(
            revision=policy.revision, created=time.time(), origin=origin, summary=policy.summary(),
            rule_count=len(policy.rules), sources=[[name, text] for name, text in policy.sources],
        )
        session.add(record)
        session.flush()
    add_event(session, policy_event("load", policy.revision, origin=origin, new=new))
    return record, new


def revisions(session: Session) -> list[PolicyRevision]:
    """Every stored revision, newest first."""
    return list(session.scalars(select(PolicyRevision).order_by(PolicyRevision.id.desc())))


def active_revision(session: Session) -> PolicyRevision | None:
    activation = session.scalar(select(Activation).order_by(Activation.id.desc()).limit(1))
    return activation.policy if activation is not None else None


def find_revision(session: Session, name: str | None) -> PolicyRevision:
    """The revision named by a hash, a unique prefix, or `active` (also None); NotFound if none."""
    if name is None or name == ACTIVE:
        record = active_revision(session)
        if record is None:
            raise StoreError("no revision is active (fw policy activate REV)")
        return record
    name = name.strip().lower()
    if not name:
        raise NotFound("no revision named ''")
    escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    found = list(session.scalars(
        select(PolicyRevision).where(PolicyRevision.revision.like(escaped + "%", escape="\\")).limit(5)))
    if not found:
        raise NotFound(f"no revision {name!r} in the store (fw policy list shows them)")
    if len(found) > 1:
        raise NotFound(f"revision {name!r} is ambiguous: " + ", ".join(r.revision for r in found))
    return found[0]


def activate(session: Session, record: PolicyRevision) -> PolicyRevision | None:
    """Make `record` the active revision; returns the one active before (None: none was)."""
    previous = active_revision(session)
    session.add(Activation(policy=record, activated=time.time(),
                           previous=previous.revision if previous is not None else None))
    add_event(session, policy_event("activate", record.revision,
                                    previous=previous.revision if previous is not None else None))
    session.flush()
    return previous


def activations(session: Session, limit: int = 20) -> list[Activation]:
    """The latest activations, newest first."""
    return list(session.scalars(select(Activation).order_by(Activation.id.desc()).limit(limit)))


def policy_of(record: PolicyRevision):
    """The stored revision as a Policy, loaded from its sources (PolicyError if no longer valid)."""
    from fw.policy import load_policy_sources  # noqa: PLC0415

    return load_policy_sources([(name, text) for name, text in record.sources],
                               name=f"revision {record.revision}")


def source_text(record: PolicyRevision) -> str:
    """The stored sources: the file's text, or each file's under a `# ==> NAME <==` line."""
    sources = record.sources
    if len(sources) == 1:
        return sources[0][1]
    return "\n".join(f"# ==> {name} <==\n{text}" for name, text in sources)


@dataclass
class RevisionDiff:
    old: str
    new: str
    added: list[str] = field(default_factory=list)  # rule names
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)  # same rule, another place in the order
    text: str = ""  # a unified diff of the sources

    def to_dict(self) -> dict:
        return {"from": self.old, "to": self.new, "rules": {
            "added": self.added, "removed": self.removed, "changed": self.changed, "moved": self.moved},
            "diff": self.text}


def diff(old: PolicyRevision, new: PolicyRevision) -> RevisionDiff:
    """What changed from `old` to `new`: rules by name, and the sources line by line."""
    result = RevisionDiff(old.revision, new.revision)
    old_rules, new_rules = written_rules(old), written_rules(new)
    result.added = [name for name in new_rules if name not in old_rules]
    result.removed = [name for name in old_rules if name not in new_rules]
    kept = [name for name in new_rules if name in old_rules]
    result.changed = [name for name in kept if old_rules[name] != new_rules[name]]
    old_order = [name for name in old_rules if name in new_rules]
    matcher = difflib.SequenceMatcher(a=old_order, b=kept, autojunk=False)
    in_place = {kept[j + k] for _i, j, n in matcher.get_matching_blocks() for k in range(n)}
    result.moved = [name for name in kept if name not in in_place]
    lines = []
    for (old_name, old_text), (new_name, new_text) in _paired_files(old.sources, new.sources):
        lines += difflib.unified_diff(
            old_text.splitlines(keepends=True), new_text.splitlines(keepends=True),
            f"{old.revision}/{old_name}" if old_name else "/dev/null",
            f"{new.revision}/{new_name}" if new_name else "/dev/null")
    result.text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return result


def written_rules(record: PolicyRevision) -> dict:
    """The revision's rules as written (plain YAML values), by name, in policy order."""
    rules = {}
    for _name, text in record.sources:
        document = yaml.safe_load(text) or {}
        for rule in document.get("rules") or ():
            rules[rule.get("name")] = rule
    return rules


def _paired_files(old: list, new: list) -> list:
    """Files paired by base name (a folder's files), else by position; a missing side is ''."""
    def base(name: str) -> str:
        return name.rsplit("/", 1)[-1]

    if len(old) == 1 and len(new) == 1:
        return [(tuple(old[0]), tuple(new[0]))]
    old_by, new_by = {base(n): (n, t) for n, t in old}, {base(n): (n, t) for n, t in new}
    names = list(old_by) + [n for n in new_by if n not in old_by]
    return [(old_by.get(n, ("", "")), new_by.get(n, ("", ""))) for n in sorted(names)]
