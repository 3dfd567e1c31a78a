"""The store's tables as SQLAlchemy 2 models. The schema itself is made by the migrations.

How it works: plain declarative classes, one per table. Times are wall-clock seconds since the
epoch (floats): they sort and compare alike in SQLite and PostgreSQL and need no time-zone care.
`PolicyRevision` keeps the policy's sources (file name and text of each file, in merge order), so
a stored revision is loaded again exactly as it was checked; the active revision is the one of the
newest `Activation` (activating an older revision is a rollback; the history stays). `Event` rows
carry the EVE record whole (`record`) plus the columns `fw log` filters on. `RuleCounter` holds
per-rule totals the daemon adds to. Alembic's revision 0001 creates exactly these tables (a test
compares them).
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class PolicyRevision(Base):
    __tablename__ = "policy_revisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[str] = mapped_column(String(64), unique=True)  # Policy.revision (content hash)
    created: Mapped[float] = mapped_column(Float)
    origin: Mapped[str] = mapped_column(Text)  # the path it was loaded from
    summary: Mapped[str] = mapped_column(Text)
    rule_count: Mapped[int] = mapped_column(Integer)
    sources: Mapped[list] = mapped_column(JSON)  # [[file name, text], ...] in merge order

    activations: Mapped[list[Activation]] = relationship(back_populates="policy")

    def __repr__(self) -> str:
        return f"PolicyRevision({self.revision}, {self.rule_count} rules)"


class Activation(Base):
    __tablename__ = "policy_activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("policy_revisions.id"), index=True)
    activated: Mapped[float] = mapped_column(Float)
    previous: Mapped[str | None] = mapped_column(String(64))  # the revision active before

    policy: Mapped[PolicyRevision] = relationship(back_populates="activations")


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    event_type: Mapped[str] = mapped_column(String(32), index=True)  # EVE: flow, drop, policy, ...
    action: Mapped[str | None] = mapped_column(String(32))  # new, end, load, activate, reload, ...
    verdict: Mapped[str | None] = mapped_column(String(8), index=True)  # accept | drop
    reason: Mapped[str | None] = mapped_column(String(64))
    rule: Mapped[str | None] = mapped_column(String(255), index=True)
    proto: Mapped[str | None] = mapped_column(String(16))
    src_ip: Mapped[str | None] = mapped_column(String(45))
    src_port: Mapped[int | None] = mapped_column(Integer)
    dest_ip: Mapped[str | None] = mapped_column(String(45))
    dest_port: Mapped[int | None] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer, default=1)  # drops aggregated into this row
    record: Mapped[dict] = mapped_column(JSON)  # the EVE record, as the JSON-lines log has it


class RuleCounter(Base):
    __tablename__ = "rule_counters"

    rule: Mapped[str] = mapped_column(String(255), primary_key=True)
    packets: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sessions: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hit: Mapped[float | None] = mapped_column(Float)
