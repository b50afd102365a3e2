"""The dataset index: SQLite (WAL) through SQLAlchemy 2.

`samples` holds one row per usable image (id, object key, sha256 of the source bytes, size, aspect bucket, caption,
its role, where it came from and the source file's signature for incremental re-ingest); `skips` holds one row per
source file that was not used, with its reason. `meta` remembers the storage URL and bucket parameters the index was
built with, and each source's role.

WAL and short transactions let `swarm dataset serve` keep answering while `swarm ingest` writes to the same file.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from sqlalchemy import (
    BigInteger,
    Float,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from swarm_dataset.buckets import BucketParams, make_buckets, nearest_bucket

SQLITE_BUSY_TIMEOUT_MS = 30_000
# SQLite's bound-parameter limit is 32766 on current builds; stay far below it for old ones.
ID_QUERY_BATCH = 900

# What an image set is for (`swarm ingest --role`). Every sample of one source has its source's role.
TRAINING = "training"  # the instance set: chunks are cut from it, data epochs count it
REGULARIZATION = "regularization"  # DreamBooth class images, mixed into chunks at the run config's reg_ratio
ROLES = (TRAINING, REGULARIZATION)


class Base(DeclarativeBase):
    pass


class SampleRow(Base):
    __tablename__ = "samples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String, nullable=False)  # object key in storage (content-addressed)
    sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)  # of the source file's bytes
    width: Mapped[int] = mapped_column(Integer, nullable=False)  # of the stored (normalised) image
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    bucket_width: Mapped[int] = mapped_column(Integer, nullable=False, index=True)
    bucket_height: Mapped[int] = mapped_column(Integer, nullable=False)
    caption: Mapped[str] = mapped_column(Text, nullable=False)
    # The image already resized and centre-cropped to its bucket (JPEG, imaging.PREPARED_QUALITY), made at ingest so
    # the default stream is a pass-through. NULL when not made (yet) or when the sample moved to another bucket.
    bucket_key: Mapped[str | None] = mapped_column(String, nullable=True)
    source: Mapped[str] = mapped_column(String, nullable=False)  # the ingest SOURCE (folder URL or s3://bucket/prefix)
    source_key: Mapped[str] = mapped_column(String, nullable=False)  # the image's key within the source
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)  # bytes of the source image
    stored_size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    version: Mapped[str] = mapped_column(String, nullable=False)  # source mtime (ns) or ETag
    signature: Mapped[str] = mapped_column(String, nullable=False)  # image + caption file versions, for re-ingest
    ingested_at: Mapped[float] = mapped_column(Float, nullable=False)
    role: Mapped[str] = mapped_column(String, nullable=False, default=TRAINING, server_default=TRAINING)
    __table_args__ = (UniqueConstraint("source", "source_key", name="uq_sample_source"),)


class SkipRow(Base):
    __tablename__ = "skips"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String, nullable=False)
    source_key: Mapped[str] = mapped_column(String, nullable=False)
    reason: Mapped[str] = mapped_column(String, nullable=False, index=True)
    detail: Mapped[str] = mapped_column(Text, nullable=False, default="")
    signature: Mapped[str] = mapped_column(String, nullable=False)
    duplicate_of: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)  # the sample it duplicates
    ingested_at: Mapped[float] = mapped_column(Float, nullable=False)
    __table_args__ = (UniqueConstraint("source", "source_key", name="uq_skip_source"),)


class MetaRow(Base):
    __tablename__ = "meta"
    name: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


@dataclass(frozen=True)
class SampleInfo:
    """What the server needs to stream one sample (a plain value, usable after the session closes)."""

    id: int
    key: str
    width: int
    height: int
    bucket_width: int
    bucket_height: int
    caption: str
    bucket_key: str | None = None


@dataclass(frozen=True)
class IndexStats:
    samples: int
    buckets: dict[tuple[int, int], int]
    skipped: dict[str, int]
    roles: dict[str, int] = dataclasses.field(default_factory=dict)  # samples per role

    def as_dict(self) -> dict:
        return {"samples": self.samples, "roles": {role: self.roles.get(role, 0) for role in ROLES},
                "buckets": [{"width": w, "height": h, "count": n} for (w, h), n in sorted(self.buckets.items())],
                "skipped": dict(sorted(self.skipped.items()))}


def _sample_info(row: SampleRow) -> SampleInfo:
    return SampleInfo(id=row.id, key=row.key, width=row.width, height=row.height, bucket_width=row.bucket_width,
                      bucket_height=row.bucket_height, caption=row.caption, bucket_key=row.bucket_key)


class Index:
    def __init__(self, path: str | Path, *, create: bool = True):
        path = Path(path).expanduser()
        if not create and not path.is_file():
            raise FileNotFoundError(f"no dataset index at {path}: run `swarm ingest SOURCE --index {path}` first")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False,
                                                                       "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(self.engine, "connect")
        def _pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        Base.metadata.create_all(self.engine)
        self._migrate()

    def _migrate(self) -> None:
        """Columns added after the first release, so indexes written by an older version keep working."""
        with self.engine.begin() as conn:
            columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(samples)")}
            if "bucket_key" not in columns:
                conn.exec_driver_sql("ALTER TABLE samples ADD COLUMN bucket_key VARCHAR")
            if "role" not in columns:  # indexes from before regularization images: every sample was training
                conn.exec_driver_sql(f"ALTER TABLE samples ADD COLUMN role VARCHAR NOT NULL DEFAULT '{TRAINING}'")

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # --- meta -------------------------------------------------------------------------------------------------
    def get_meta(self, name: str) -> str | None:
        with self.session() as s:
            row = s.get(MetaRow, name)
            return row.value if row else None

    def set_meta(self, name: str, value: str) -> None:
        with self.session() as s, s.begin():
            s.merge(MetaRow(name=name, value=value))

    def source_role(self, source: str) -> str | None:
        """The role `source` was ingested with, None when it never was."""
        return self.get_meta(f"role:{source}")

    def set_source_role(self, source: str, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        self.set_meta(f"role:{source}", role)

    def bucket_params(self) -> BucketParams | None:
        raw = self.get_meta("bucket_params")
        return BucketParams(**json.loads(raw)) if raw else None

    def set_bucket_params(self, params: BucketParams) -> int:
        """Record the bucket parameters; when they changed, re-bucket every sample (sizes are known). Returns how
        many samples moved to another bucket."""
        old = self.bucket_params()
        self.set_meta("bucket_params", json.dumps(params.as_dict(), sort_keys=True))
        if old is None or old == params:
            return 0
        buckets = make_buckets(params)
        moved = 0
        with self.session() as s, s.begin():
            for sample_id, width, height, bw, bh in s.execute(
                    select(SampleRow.id, SampleRow.width, SampleRow.height, SampleRow.bucket_width,
                           SampleRow.bucket_height)).all():
                new = nearest_bucket(width, height, buckets)
                if new != (bw, bh):  # its prepared copy is for the old bucket: the next ingest makes a new one
                    s.execute(update(SampleRow).where(SampleRow.id == sample_id)
                              .values(bucket_width=new[0], bucket_height=new[1], bucket_key=None))
                    moved += 1
        return moved

    # --- ingest side ------------------------------------------------------------------------------------------
    def known_signatures(self, source: str) -> dict[str, str]:
        """source_key -> signature of every file of this source already processed (used or skipped)."""
        with self.session() as s:
            found = dict(s.execute(select(SkipRow.source_key, SkipRow.signature).where(SkipRow.source == source)).all())
            found.update(s.execute(select(SampleRow.source_key, SampleRow.signature)
                                   .where(SampleRow.source == source)).all())
            return found

    def sample_by_sha(self, sha256: str) -> SampleRow | None:
        with self.session() as s:
            return s.scalars(select(SampleRow).where(SampleRow.sha256 == sha256)).first()

    def upsert_sample(self, *, source: str, source_key: str, values: dict) -> tuple[int, bool]:
        """Insert or update the sample of (source, source_key); clears any earlier skip of that file.
        Returns (sample id, whether it was new)."""
        with self.session() as s, s.begin():
            s.execute(delete(SkipRow).filter_by(source=source, source_key=source_key))
            row = s.scalars(select(SampleRow).filter_by(source=source, source_key=source_key)).first()
            created = row is None
            if created:
                row = SampleRow(source=source, source_key=source_key, **values)
                s.add(row)
            else:
                for name, value in values.items():
                    setattr(row, name, value)
            row.ingested_at = time.time()
            s.flush()
            return row.id, created

    def has_sample(self, *, source: str, source_key: str) -> bool:
        with self.session() as s:
            return s.scalars(select(SampleRow.id).filter_by(source=source, source_key=source_key)).first() is not None

    def update_caption(self, *, source: str, source_key: str, caption: str, signature: str) -> None:
        with self.session() as s, s.begin():
            s.execute(update(SampleRow).filter_by(source=source, source_key=source_key)
                      .values(caption=caption, signature=signature, ingested_at=time.time()))

    def samples_without_prepared(self, *, source: str) -> list[SampleInfo]:
        with self.session() as s:
            rows = s.scalars(select(SampleRow).where(SampleRow.source == source, SampleRow.bucket_key.is_(None)))
            return [_sample_info(row) for row in rows]

    def set_prepared(self, *, sample_id: int, bucket: tuple[int, int], bucket_key: str) -> bool:
        """Record a prepared copy, unless the sample moved to another bucket meanwhile."""
        with self.session() as s, s.begin():
            return s.execute(update(SampleRow).where(SampleRow.id == sample_id, SampleRow.bucket_width == bucket[0],
                                                     SampleRow.bucket_height == bucket[1])
                             .values(bucket_key=bucket_key)).rowcount == 1

    def record_skip(self, *, source: str, source_key: str, reason: str, detail: str, signature: str,
                    duplicate_of: int | None = None) -> None:
        """Remember why a file was not used (replacing an earlier outcome for the same file)."""
        with self.session() as s, s.begin():
            s.execute(delete(SkipRow).filter_by(source=source, source_key=source_key))
            # A file that used to be a sample and is now bad: drop the sample, and forget the files skipped as its
            # duplicates so the next ingest takes one of them instead (their content is still good).
            stale = s.scalars(select(SampleRow).filter_by(source=source, source_key=source_key)).first()
            if stale is not None:
                s.execute(delete(SkipRow).filter_by(duplicate_of=stale.id))
                s.delete(stale)
            s.add(SkipRow(source=source, source_key=source_key, reason=reason, detail=detail[:2000],
                          signature=signature, duplicate_of=duplicate_of, ingested_at=time.time()))

    def forget(self, *, source: str, source_keys: Iterable[str]) -> int:
        """Drop samples and skips of files that no longer exist in the source."""
        keys = list(source_keys)
        removed = 0
        with self.session() as s, s.begin():
            for start in range(0, len(keys), ID_QUERY_BATCH):
                batch = keys[start:start + ID_QUERY_BATCH]
                removed += s.execute(delete(SkipRow).where(SkipRow.source == source,
                                                           SkipRow.source_key.in_(batch))).rowcount
                gone = list(s.scalars(select(SampleRow.id).where(SampleRow.source == source,
                                                                 SampleRow.source_key.in_(batch))))
                if gone:
                    s.execute(delete(SkipRow).where(SkipRow.duplicate_of.in_(gone)))
                    removed += s.execute(delete(SampleRow).where(SampleRow.id.in_(gone))).rowcount
        return removed

    # --- server side ------------------------------------------------------------------------------------------
    def samples_by_ids(self, ids: Iterable[int]) -> dict[int, SampleInfo]:
        wanted = sorted(set(ids))
        found: dict[int, SampleInfo] = {}
        columns = (SampleRow.id, SampleRow.key, SampleRow.width, SampleRow.height, SampleRow.bucket_width,
                   SampleRow.bucket_height, SampleRow.caption, SampleRow.bucket_key)
        with self.engine.connect() as conn:  # Core, not ORM objects: this runs for every streamed chunk
            for start in range(0, len(wanted), ID_QUERY_BATCH):
                batch = wanted[start:start + ID_QUERY_BATCH]
                for row in conn.execute(select(*columns).where(SampleRow.id.in_(batch))):
                    found[row.id] = SampleInfo(**row._mapping)
        return found

    def list_samples(self, *, after_id: int = 0, limit: int = 1000) -> list[SampleInfo]:
        with self.session() as s:
            rows = s.scalars(select(SampleRow).where(SampleRow.id > after_id).order_by(SampleRow.id).limit(limit))
            return [_sample_info(row) for row in rows]

    def list_refs(self, *, after_id: int = 0, limit: int = 1000) -> list[tuple[int, int, int, str]]:
        """(id, bucket_width, bucket_height, role) by id: what the coordinator pages through, without ORM objects."""
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(
                select(SampleRow.id, SampleRow.bucket_width, SampleRow.bucket_height, SampleRow.role)
                .where(SampleRow.id > after_id).order_by(SampleRow.id).limit(limit))]

    def count(self) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(SampleRow)) or 0

    def stats(self) -> IndexStats:
        with self.session() as s:
            buckets = {(w, h): n for w, h, n in s.execute(
                select(SampleRow.bucket_width, SampleRow.bucket_height, func.count())
                .group_by(SampleRow.bucket_width, SampleRow.bucket_height)).all()}
            skipped = dict(s.execute(select(SkipRow.reason, func.count()).group_by(SkipRow.reason)).all())
            roles = dict(s.execute(select(SampleRow.role, func.count()).group_by(SampleRow.role)).all())
        return IndexStats(samples=sum(buckets.values()), buckets=buckets, skipped=skipped, roles=roles)

    def skip_reasons(self, source: str | None = None) -> Counter:
        with self.session() as s:
            query = select(SkipRow.reason, func.count()).group_by(SkipRow.reason)
            if source is not None:
                query = query.where(SkipRow.source == source)
            return Counter(dict(s.execute(query).all()))

    def sources(self) -> Sequence[str]:
        with self.session() as s:
            return list(s.scalars(select(SampleRow.source).distinct()))
