"""`swarm ingest`, `swarm dataset serve` and `swarm dataset stats`."""
from __future__ import annotations

import argparse
import json
import os

from swarm.cliargs import add_insecure_arg, port_arg, positive_float_arg, positive_int_arg
from swarm.metrics import add_metrics_host_arg


def _add_bucket_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("aspect buckets (from the run config, or given here)")
    group.add_argument("--config", metavar="RUN.yaml",
                       help="run config whose resolution / buckets_side_min / buckets_side_max / buckets_max_area set "
                            "the buckets (without it and the flags below: what the index was built with, else "
                            "512 / 256 / 768 / 0)")
    group.add_argument("--resolution", type=int, help="base resolution (default 512)")
    group.add_argument("--buckets-side-min", type=int, help="shortest bucket side (default 256)")
    group.add_argument("--buckets-side-max", type=int, help="longest bucket side (default 768)")
    group.add_argument("--buckets-max-area", type=int, help="largest bucket area in pixels (default 0: resolution²; "
                                                            "NovelAI's at 512: 393216 = 512×768)")


def register(subparsers) -> None:
    ingest = subparsers.add_parser(
        "ingest", help="index a folder or S3 bucket of images + captions into a dataset",
        description="Validate, normalise and store images with the captions beside them (.txt, or Danbooru-style "
                    ".json), recording them in an SQLite index with their aspect bucket. Re-running processes only "
                    "new or changed files. Bad files are skipped and counted with a reason.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ingest.add_argument("source", metavar="SOURCE", help="a folder, or s3://bucket/prefix (read recursively)")
    ingest.add_argument("--index", required=True, metavar="PATH", help="SQLite index file (created if missing)")
    ingest.add_argument("--role", choices=("training", "regularization"), default=None,
                        help="which image set SOURCE is: the training (instance) images, or regularization (class) "
                             "images for DreamBooth-style prior preservation, mixed into chunks at the run config's "
                             "reg_ratio (default: the role SOURCE was ingested with before, else training; a source "
                             "keeps its role)")
    ingest.add_argument("--storage", metavar="URL",
                        help="where normalised images go: s3://bucket/prefix, file:///abs/path or a folder "
                             "(default: what the index used before, else an 'objects' folder beside the index)")
    ingest.add_argument("--s3-endpoint-url", metavar="URL",
                        help="S3-compatible endpoint (MinIO, moto, ...) for --storage; path-style addressing is used")
    ingest.add_argument("--source-endpoint-url", metavar="URL",
                        help="endpoint for an s3:// SOURCE when it differs from --s3-endpoint-url")
    _add_bucket_args(ingest)
    captions = ingest.add_argument_group("captions")
    captions.add_argument("--caption-fields", default=None, metavar="A,B,...",
                          help="JSON fields whose tags make the caption, in order (default: Danbooru's "
                               "tag_string_character,tag_string_copyright,tag_string_artist,tag_string_general; "
                               "tag_string / tags, then caption / description / text when none is present)")
    captions.add_argument("--caption-joiner", default=", ", help="what joins JSON tags")
    captions.add_argument("--keep-underscores", action="store_true", help="keep '_' in JSON tags (default: spaces)")
    captions.add_argument("--allow-empty-captions", action="store_true", help="keep images whose caption is empty")
    checks = ingest.add_argument_group("validation and storage")
    checks.add_argument("--max-pixels", type=positive_int_arg, default=40_000_000,
                        help="refuse larger images (decompression bombs)")
    checks.add_argument("--max-aspect", type=positive_float_arg, default=4.0,
                        help="refuse images with a longer/shorter side ratio above this")
    checks.add_argument("--min-side", type=positive_int_arg, default=64,
                        help="refuse images whose shorter side is smaller")
    checks.add_argument("--store-encoding", choices=("jpeg", "png", "webp"), default="jpeg",
                        help="encoding of re-encoded images (plain RGB JPEGs are stored as they are)")
    checks.add_argument("--store-quality", type=int, default=95, help="quality of re-encoded JPEG/WebP")
    checks.add_argument("--no-prepare-buckets", action="store_true",
                        help="do not store a copy resized to each image's bucket (saves ~30%% storage; the service "
                             "then resizes every streamed sample on the fly)")
    checks.add_argument("--workers", type=positive_int_arg, default=4, help="files fetched and validated in parallel")
    ingest.add_argument("--prune", action="store_true",
                        help="remove from the index the files ingested before that are gone from SOURCE")
    ingest.add_argument("--json", action="store_true", help="print the final report as JSON on stdout")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")
    ingest.set_defaults(func=_run_ingest)

    dataset = subparsers.add_parser("dataset", help="serve an ingested dataset to peers, or show its stats",
                                    description="The dataset service: streams chunk samples to trainers over gRPC.")
    commands = dataset.add_subparsers(dest="dataset_command", metavar="COMMAND")
    dataset.set_defaults(func=lambda args: (dataset.print_help(), 2)[1])

    serve = commands.add_parser(
        "serve", help="serve the dataset over gRPC (StreamSamples, ListSamples, GetStats)",
        description="Serve the samples of an index: resized and cropped to their aspect bucket by default.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    serve.add_argument("--listen", default="0.0.0.0:50052", metavar="HOST:PORT", help="gRPC address (port 0: any)")
    serve.add_argument("--index", required=True, metavar="PATH", help="the SQLite index written by `swarm ingest`")
    serve.add_argument("--storage", metavar="URL", help="object storage (default: the one recorded in the index)")
    serve.add_argument("--s3-endpoint-url", metavar="URL", help="S3-compatible endpoint for s3:// storage")
    serve.add_argument("--coordinator", metavar="HOST:PORT",
                       help="check every caller's join token with this coordinator (without it the service is open)")
    serve.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate (with --tls-key)")
    serve.add_argument("--tls-key", metavar="PEM", help="the TLS certificate's private key")
    add_insecure_arg(serve, server=True)
    serve.add_argument("--streams-per-token", type=positive_int_arg, default=8,
                       help="concurrent StreamSamples calls one join token may have open (with --coordinator)")
    serve.add_argument("--metrics-port", type=port_arg, default=9101,
                       help="Prometheus /metrics port (0: any free port)")
    add_metrics_host_arg(serve)
    serve.add_argument("--ready-file", metavar="PATH",
                       help="write {grpc_address, metrics_port} as JSON here once serving")
    serve.add_argument("--workers", type=positive_int_arg, default=None,
                       help="threads that fetch and resize samples, shared by all streams (default: 4 x cores, "
                            "at least 8, at most 64)")
    serve.add_argument("--read-ahead", type=positive_int_arg, default=None, help="samples prepared ahead per stream "
                                                                    "(default: --workers, at most 16)")
    serve.add_argument("--encoding", choices=("jpeg", "png", "webp"), default="jpeg",
                       help="encoding of resized samples when the request does not say")
    serve.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality when the request does not say")
    serve.set_defaults(func=_run_serve)

    stats = commands.add_parser("stats", help="print sample count, bucket histogram and skipped files by reason")
    stats.add_argument("--index", required=True, metavar="PATH", help="the SQLite index")
    stats.add_argument("--json", action="store_true", help="print as JSON")
    stats.set_defaults(func=_run_stats)


def _bucket_params(args, recorded=None):
    """From --config, else the flags, else what the index was built with (`recorded`), else the defaults."""
    from swarm.runconfig import ConfigError, RunConfig, load_yaml
    from swarm_dataset.buckets import BucketParams

    if args.config:
        config = load_yaml(args.config)
        values = {"resolution": config.resolution, "side_min": config.buckets_side_min,
                  "side_max": config.buckets_side_max, "max_area": config.buckets_max_area}
    elif recorded is not None:  # a re-ingest without bucket options keeps the buckets the index has
        default_area = recorded.max_area == recorded.resolution ** 2  # stays "resolution²" if --resolution changes
        values = {"resolution": recorded.resolution, "side_min": recorded.side_min, "side_max": recorded.side_max,
                  "max_area": 0 if default_area else recorded.max_area}
    else:
        defaults = RunConfig()
        values = {"resolution": defaults.resolution, "side_min": defaults.buckets_side_min,
                  "side_max": defaults.buckets_side_max, "max_area": defaults.buckets_max_area}
    for name, arg in (("resolution", "resolution"), ("side_min", "buckets_side_min"),
                      ("side_max", "buckets_side_max"), ("max_area", "buckets_max_area")):
        if getattr(args, arg) is not None:
            values[name] = getattr(args, arg)
    try:
        return BucketParams(**values)
    except ValueError as e:
        raise ConfigError(f"bucket parameters: {e}") from None


def _run_ingest(args) -> int:
    from pathlib import Path

    from swarm.errors import UsageError
    from swarm_dataset.index import Index
    from swarm_dataset.ingest import IngestOptions, RoleError, ingest
    from swarm_dataset.pairing import DEFAULT_CAPTION_FIELDS, CaptionOptions
    from swarm_dataset.storage import StorageError, open_storage
    from swarm_dataset.validate import ValidationLimits

    fields = tuple(f.strip() for f in args.caption_fields.split(",") if f.strip()) if args.caption_fields \
        else DEFAULT_CAPTION_FIELDS
    try:
        options = IngestOptions(
            captions=CaptionOptions(fields=fields, joiner=args.caption_joiner,
                                    underscores_to_spaces=not args.keep_underscores,
                                    allow_empty=args.allow_empty_captions),
            limits=ValidationLimits(max_pixels=args.max_pixels, max_aspect=args.max_aspect, min_side=args.min_side),
            store_encoding=args.store_encoding, store_quality=args.store_quality,
            prepare_buckets=not args.no_prepare_buckets, workers=args.workers)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not args.source.startswith("s3://") and not Path(args.source).is_dir():
        raise UsageError(f"SOURCE {args.source} is not a folder (or an s3://bucket/prefix URL)")
    index = Index(args.index)
    try:
        params = _bucket_params(args, recorded=index.bucket_params())
        storage_url = args.storage or index.get_meta("storage_url") or str(Path(args.index).absolute().parent
                                                                           / "objects")
        try:
            source = open_storage(args.source, endpoint_url=args.source_endpoint_url or args.s3_endpoint_url,
                                  create=False)
            storage = open_storage(storage_url, endpoint_url=args.s3_endpoint_url)
            if hasattr(storage, "ensure_bucket"):
                storage.ensure_bucket()
            report = ingest(source=source, index=index, storage=storage, bucket_params=params, options=options,
                            progress=not args.no_progress, prune=args.prune, role=args.role)
        except (StorageError, RoleError) as e:
            raise UsageError(str(e)) from None
    finally:
        index.close()
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.summary())
    return 0


def _run_serve(args) -> int:
    from swarm.cliargs import use_tls_args
    from swarm.errors import UsageError
    from swarm_dataset.server import serve
    from swarm_dataset.storage import StorageError

    use_tls_args(args)  # --insecure: plaintext on a non-loopback --listen and to the coordinator
    try:
        return serve(index_path=args.index, listen=args.listen, storage_url=args.storage,
                     s3_endpoint_url=args.s3_endpoint_url, coordinator=args.coordinator,
                     metrics_port=args.metrics_port, metrics_host=args.metrics_host, workers=args.workers,
                     read_ahead=args.read_ahead,
                     default_encoding=args.encoding, default_quality=args.quality, ready_file=args.ready_file,
                     streams_per_token=args.streams_per_token, tls_cert=args.tls_cert, tls_key=args.tls_key,
                     # the host's own tool token for originals (as_stored); from the environment, not argv (ps)
                     originals_token=os.environ.get("SWARM_DATASET_ORIGINALS_TOKEN") or None)
    except (FileNotFoundError, StorageError, ValueError, OSError) as e:
        raise UsageError(str(e)) from None


def _run_stats(args) -> int:
    from swarm.errors import UsageError
    from swarm_dataset.index import ROLES, Index

    try:
        index = Index(args.index, create=False)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    try:
        stats = index.stats()
    finally:
        index.close()
    if args.json:
        print(json.dumps(stats.as_dict(), indent=2))
        return 0
    print(f"samples: {stats.samples} ({', '.join(f'{stats.roles.get(r, 0)} {r}' for r in ROLES)})")
    print("buckets (width x height: samples):")
    for (width, height), count in sorted(stats.buckets.items(), key=lambda kv: kv[0][0] / kv[0][1]):
        print(f"  {width:>5} x {height:<5} {count:>8}  {'#' * max(1, round(40 * count / max(stats.samples, 1)))}")
    skipped = sum(stats.skipped.values())
    print(f"skipped files: {skipped}")
    for reason, count in sorted(stats.skipped.items(), key=lambda kv: -kv[1]):
        print(f"  {reason}: {count}")
    return 0
