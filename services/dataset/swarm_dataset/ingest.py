"""`swarm ingest`: a folder or bucket of images + captions -> normalised objects in storage and rows in the index.

Per image file: fetch it and its caption, sha256 the bytes (identical content is stored once; later copies are skipped
as duplicates), validate and normalise to RGB (validate.py), store the normalised bytes content-addressed, assign the
aspect bucket. Plain RGB JPEGs are stored as they are (no generation loss); everything else is re-encoded
(JPEG quality 95 with full chroma by default, or lossless PNG), so streaming never has to validate again.

Incremental: each file's signature (size + mtime/ETag of the image and of its caption file) is remembered, used or
skipped, and unchanged files are not fetched again; a changed caption alone only re-reads the caption.
Each source has one role (index.ROLES): the training set by default, or `regularization` (DreamBooth class images);
it is remembered, so a re-ingest keeps it, and a different role for a source already ingested is refused.
Nothing stops an ingest: every bad file becomes a counted reason. Index writes are short transactions on a WAL
database, so the dataset service keeps serving from the same index meanwhile.
"""
from __future__ import annotations

import hashlib
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from swarm.logs import get_logger
from swarm_dataset import imaging
from swarm_dataset.buckets import BucketParams, make_buckets, nearest_bucket
from swarm_dataset.index import ROLES, TRAINING, Index, SampleInfo
from swarm_dataset.pairing import (
    NO_CAPTION,
    CaptionError,
    CaptionOptions,
    Pair,
    check_caption_file_size,
    image_signature,
    join_signature,
    pair_files,
    read_caption,
    split_signature,
)
from swarm_dataset.storage import (
    BadKeyError,
    LinkOutsideError,
    LocalStorage,
    S3Storage,
    StorageError,
    content_key,
)
from swarm_dataset.validate import Rejection, ValidationLimits, check_image

logger = get_logger(__name__)

READ_ERROR = "read_error"
BAD_KEY = "bad_key"
LINK_OUTSIDE = "link_outside_source"  # a symbolic link out of the source folder
DUPLICATE = "duplicate"
INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class IngestOptions:
    captions: CaptionOptions = CaptionOptions()
    limits: ValidationLimits = ValidationLimits()
    store_encoding: str = "jpeg"  # for images that must be re-encoded; plain RGB JPEGs are kept as they are
    store_quality: int = imaging.DEFAULT_QUALITY
    # Also store each image resized and centre-cropped to its bucket, so the default stream needs no CPU.
    prepare_buckets: bool = True
    workers: int = 4

    def __post_init__(self):
        imaging.check_encoding(self.store_encoding, self.store_quality)
        if not 1 <= self.workers <= 64:
            raise ValueError(f"workers must be between 1 and 64, got {self.workers}")


class RoleError(ValueError):
    """An unknown role, or a source ingested before with another role."""


def resolve_role(asked: str | None, *, recorded: str | None, ingested_before: bool) -> str:
    """The role a source is ingested with: the one asked, else the one recorded for it, else training.

    A source keeps its role for good: the coordinator may already hold its samples in chunks (training) or in its
    regularization pool, so asking another role for a source ingested before is refused. Indexes from before roles
    existed recorded none: their sources are training.
    """
    if asked is not None and asked not in ROLES:
        raise RoleError(f"unknown role {asked!r}: use one of {', '.join(ROLES)} (default {TRAINING})")
    before = recorded or (TRAINING if ingested_before else None)
    if asked is None:
        return before or TRAINING
    if before is not None and before != asked:
        raise RoleError(f"this source was ingested with role {before}; a source keeps its role (the coordinator may "
                        f"already have its samples): ingest it again with --role {before}, or build a new index "
                        f"to use it as {asked}")
    return asked


@dataclass
class IngestReport:
    source: str
    role: str = TRAINING
    files: int = 0  # every file listed under the source
    images: int = 0  # image files among them
    added: int = 0
    updated: int = 0  # a changed file (or only its caption) re-read
    unchanged: int = 0  # files seen before with the same signature (used or skipped then): not fetched again
    skipped: Counter = field(default_factory=Counter)  # reason -> files skipped in this run
    normalised: Counter = field(default_factory=Counter)  # what normalisation did -> images
    rebucketed: int = 0
    prepared: int = 0  # bucket copies made for samples that had none (older index, or moved bucket)
    missing: int = 0  # ingested before, gone from the source now
    seconds: float = 0.0
    index_samples: int = 0
    index_skipped: dict = field(default_factory=dict)
    index_roles: dict = field(default_factory=dict)  # samples per role in the whole index

    def as_dict(self) -> dict:
        return {"source": self.source, "role": self.role, "files": self.files, "images": self.images,
                "added": self.added, "updated": self.updated, "unchanged": self.unchanged,
                "skipped": dict(sorted(self.skipped.items())),
                "skipped_total": sum(self.skipped.values()), "normalised": dict(sorted(self.normalised.items())),
                "rebucketed": self.rebucketed, "prepared": self.prepared, "missing": self.missing,
                "seconds": round(self.seconds, 3),
                "index": {"samples": self.index_samples, "roles": self.index_roles, "skipped": self.index_skipped}}

    def summary(self) -> str:
        lines = [f"ingested {self.source} ({self.role} set): {self.files} files, {self.images} images in "
                 f"{self.seconds:.1f} s",
                 f"  added {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
                 f"skipped {sum(self.skipped.values())}"]
        lines += [f"    {reason}: {n}" for reason, n in sorted(self.skipped.items())]
        if self.normalised:
            lines.append("  normalised: " + ", ".join(f"{k} {n}" for k, n in sorted(self.normalised.items())))
        if self.rebucketed:
            lines.append(f"  bucket parameters changed: {self.rebucketed} samples moved to another bucket")
        if self.prepared:
            lines.append(f"  {self.prepared} bucket copies made for samples that had none")
        if self.missing:
            lines.append(f"  {self.missing} files ingested before are gone from the source (--prune removes them)")
        roles = ", ".join(f"{n} {role}" for role, n in self.index_roles.items())
        lines.append(f"  index now holds {self.index_samples} samples" + (f" ({roles})" if roles else ""))
        return "\n".join(lines)


@dataclass
class _Outcome:
    pair: Pair
    signature: str
    sha256: str = ""
    values: dict | None = None  # sample row values when usable
    caption_only: str | None = None  # new caption for an image whose bytes did not change
    reason: str = ""
    detail: str = ""
    notes: tuple[str, ...] = ()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Ingester:
    def __init__(self, *, source: LocalStorage | S3Storage, index: Index, storage: LocalStorage | S3Storage,
                 buckets: list[tuple[int, int]], options: IngestOptions, role: str = TRAINING):
        self.source, self.index, self.storage, self.buckets, self.options = source, index, storage, buckets, options
        self.role = role

    def put(self, data: bytes, extension: str) -> str:
        """Store content-addressed and return the key. Identical bytes have the same key, so a second PUT of the same
        content rewrites the same object: no HEAD first (new content is the common case)."""
        key = content_key(_sha256(data), extension)
        self.storage.put(key, data)
        return key

    def prepare(self, sample: SampleInfo) -> bool:
        """Make the bucket copy of an already stored sample (runs in a worker thread)."""
        try:
            data = self.storage.get(sample.key)
            prepared = imaging.bucket_bytes(data, sample.bucket_width, sample.bucket_height, encoding="jpeg",
                                            quality=imaging.PREPARED_QUALITY, resample=imaging.INGEST_RESAMPLE)
            bucket_key = self.put(prepared, "jpg")
        except Exception as e:  # noqa: BLE001 - the stream falls back to resizing on the fly; the next ingest tries again
            logger.warning(f"could not prepare the bucket copy of sample {sample.id}: {e}")
            return False
        return self.index.set_prepared(sample_id=sample.id, bucket=(sample.bucket_width, sample.bucket_height),
                                       bucket_key=bucket_key)

    def caption(self, pair: Pair) -> str:
        if pair.caption is None:
            raise CaptionError(NO_CAPTION, f"no caption beside {pair.image.key} (expected a .txt or .json file)")
        check_caption_file_size(pair.caption.size, key=pair.caption.key, options=self.options.captions)
        return read_caption(self.source.get(pair.caption.key), key=pair.caption.key, options=self.options.captions)

    def process(self, pair: Pair, signature: str, caption_only: bool) -> _Outcome:
        """Runs in a worker thread: everything slow (fetch, decode, encode, store), nothing that writes the index."""
        outcome = _Outcome(pair=pair, signature=signature)
        try:
            caption = self.caption(pair)
            if caption_only:
                outcome.caption_only = caption
                return outcome
            data = self.source.get(pair.image.key)
            outcome.sha256 = _sha256(data)
            known = self.index.sample_by_sha(outcome.sha256)
            if known is not None and (known.source, known.source_key) != (self.source.url, pair.image.key):
                outcome.reason, outcome.detail = DUPLICATE, f"same content as {known.source_key} (sample {known.id})"
                return outcome
            checked = check_image(data, limits=self.options.limits)
            if isinstance(checked, Rejection):
                outcome.reason, outcome.detail = checked.reason, checked.detail
                return outcome
            if checked.original_is_normalised:
                stored, extension = data, "jpg"
            else:
                stored = imaging.encode(checked.image, encoding=self.options.store_encoding,
                                        quality=self.options.store_quality)
                extension = imaging.EXTENSIONS[self.options.store_encoding]
            key = self.put(stored, extension)
            width, height = checked.size
            bucket_width, bucket_height = nearest_bucket(width, height, self.buckets)
            bucket_key = None
            if self.options.prepare_buckets:
                prepared = imaging.encode(imaging.resize_to_bucket(checked.image, bucket_width, bucket_height),
                                          encoding="jpeg", quality=imaging.PREPARED_QUALITY)
                bucket_key = self.put(prepared, "jpg")
            outcome.notes = checked.notes
            outcome.values = dict(key=key, sha256=outcome.sha256, width=width, height=height,
                                  bucket_width=bucket_width, bucket_height=bucket_height, bucket_key=bucket_key,
                                  caption=caption, size=pair.image.size, stored_size=len(stored),
                                  version=pair.image.version, signature=signature, role=self.role)
        except CaptionError as e:
            outcome.reason, outcome.detail = e.reason, e.detail
        except LinkOutsideError as e:
            outcome.reason, outcome.detail = LINK_OUTSIDE, str(e)
        except BadKeyError as e:
            outcome.reason, outcome.detail = BAD_KEY, str(e)
        except (StorageError, KeyError) as e:
            outcome.reason, outcome.detail = READ_ERROR, f"could not read or store it: {e}"
        except Exception as e:  # a bug or an exotic file must not stop the ingest; it is counted and logged
            logger.exception(f"unexpected error ingesting {pair.image.key}")
            outcome.reason, outcome.detail = INTERNAL_ERROR, f"{type(e).__name__}: {e}"
        return outcome

    def record(self, outcome: _Outcome, report: IngestReport) -> None:
        """Runs in the ingest thread: short index transactions, deduplication decided here (no race on sha256)."""
        source, key = self.source.url, outcome.pair.image.key
        if outcome.caption_only is not None:
            self.index.update_caption(source=source, source_key=key, caption=outcome.caption_only,
                                      signature=outcome.signature)
            report.updated += 1
            return
        if outcome.values is not None:
            known = self.index.sample_by_sha(outcome.sha256)
            if known is not None and (known.source, known.source_key) != (source, key):
                outcome.reason, outcome.detail = DUPLICATE, f"same content as {known.source_key} (sample {known.id})"
            else:
                _, created = self.index.upsert_sample(source=source, source_key=key, values=outcome.values)
                if created:
                    report.added += 1
                else:
                    report.updated += 1
                report.normalised.update(outcome.notes)
                return
        duplicate_of, signature = None, outcome.signature
        if outcome.reason == DUPLICATE:
            original = self.index.sample_by_sha(outcome.sha256)
            if original is not None:
                duplicate_of = original.id
            else:  # the file it duplicated went bad in this same run: an unknown signature retries it next time
                signature, outcome.detail = "retry", f"{outcome.detail}, removed in this run; ingest again to take it"
        self.index.record_skip(source=source, source_key=key, reason=outcome.reason, detail=outcome.detail,
                               signature=signature, duplicate_of=duplicate_of)
        report.skipped[outcome.reason] += 1


def ingest(*, source: LocalStorage | S3Storage, index: Index, storage: LocalStorage | S3Storage,
           bucket_params: BucketParams = BucketParams(), options: IngestOptions = IngestOptions(),
           progress: bool = True, prune: bool = False, role: str | None = None) -> IngestReport:
    """Ingest every file under `source` (recursively) as the image set `role` (None: the role the source was
    ingested with before, else training; RoleError when it differs). Returns the counts by outcome and reason.

    Files ingested before that are gone from the source are counted as `missing`; with `prune` their samples (and
    skips) are removed from the index. Without it they stay: the coordinator may have chunks that name them."""
    from tqdm import tqdm

    started = time.monotonic()
    known = index.known_signatures(source.url)
    role = resolve_role(role, recorded=index.source_role(source.url), ingested_before=bool(known))
    report = IngestReport(source=source.url, role=role)
    index.set_source_role(source.url, role)
    index.set_meta("storage_url", storage.url)
    report.rebucketed = index.set_bucket_params(bucket_params)
    ingester = _Ingester(source=source, index=index, storage=storage, buckets=make_buckets(bucket_params),
                         options=options, role=role)
    logger.info(f"listing {source.url} ...")
    listing = list(source.list())
    report.files = len(listing)
    logger.info(f"{len(listing)} files under {source.url} ({time.monotonic() - started:.1f} s)")
    if not listing:
        logger.warning(f"no files under {source.url}: is SOURCE the right folder or s3://bucket/prefix?")
    pairing = pair_files(listing)
    report.images = len(pairing.pairs)

    for obj, reason in pairing.unpaired:
        signature = join_signature(image_signature(obj), "-")
        if known.get(obj.key) == signature:
            report.unchanged += 1
            continue
        index.record_skip(source=source.url, source_key=obj.key, reason=reason, signature=signature,
                          detail=f"{obj.key}: nothing to pair it with")
        report.skipped[reason] += 1

    # A caption once skipped as orphaned now has its image: forget that skip.
    index.forget(source=source.url, source_keys=[p.caption.key for p in pairing.pairs
                                                 if p.caption is not None and p.caption.key in known])
    listed = {obj.key for obj in listing}
    missing = [key for key in known if key not in listed]
    report.missing = len(missing)
    if missing and prune:
        index.forget(source=source.url, source_keys=missing)
        logger.info(f"pruned {len(missing)} files that are gone from {source.url}")

    todo: list[tuple[Pair, str, bool]] = []
    for pair in pairing.pairs:
        signature = pair.signature
        before = known.get(pair.image.key)
        if before == signature:
            report.unchanged += 1
            continue
        # Same image bytes, other caption file version: only the caption needs reading (if it was a sample).
        caption_only = (before is not None and split_signature(before)[0] == split_signature(signature)[0]
                        and index.has_sample(source=source.url, source_key=pair.image.key))
        todo.append((pair, signature, caption_only))

    window = max(2, options.workers * 4)  # bounded read-ahead: memory stays flat on huge buckets
    with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="ingest") as pool, \
            tqdm(total=len(todo), desc="ingest", unit="img", file=sys.stderr, disable=not progress,
                 dynamic_ncols=True) as bar:
        pending: deque[Future] = deque()
        for item in todo:
            pending.append(pool.submit(ingester.process, *item))
            while len(pending) >= window:
                ingester.record(pending.popleft().result(), report)
                bar.update(1)
        while pending:
            ingester.record(pending.popleft().result(), report)
            bar.update(1)

    if options.prepare_buckets:
        unprepared = index.samples_without_prepared(source=source.url)
        if unprepared:
            with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="prepare") as pool:
                report.prepared = sum(pool.map(ingester.prepare, unprepared))

    stats = index.stats()
    report.index_samples, report.index_skipped = stats.samples, dict(sorted(stats.skipped.items()))
    report.index_roles = {r: stats.roles.get(r, 0) for r in ROLES}
    report.seconds = time.monotonic() - started
    logger.info(f"ingest of {source.url} done: {report.added} added, {report.updated} updated, "
                f"{report.unchanged} unchanged, {sum(report.skipped.values())} skipped in {report.seconds:.1f} s")
    return report
