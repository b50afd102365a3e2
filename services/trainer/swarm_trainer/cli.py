"""`swarm train`: join a swarm and fine-tune with it. Heavy imports (torch, hivemind) wait until the command runs."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from swarm.cliargs import (
    add_client_tls_args,
    address_arg,
    int_range_arg,
    port_arg,
    positive_float_arg,
    positive_int_arg,
)
from swarm.metrics import add_metrics_host_arg

COMPRESSIONS = ("none", "fp16", "8bit", "adaptive")  # swarm_trainer.swarm.COMPRESSIONS, without importing torch
MAX_BATCH_SIZE = 4096


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="join a swarm and train: lease chunks, average with peers, save checkpoints",
        description="Join the swarm run by the coordinator at --coordinator: fetch the run config, train leased "
                    "chunks with hivemind.Optimizer, heartbeat and report them done, and at the end meet the other "
                    "peers so everyone leaves with the same parameters. Writes OUTPUT/summary.json and diffusers "
                    "checkpoints under OUTPUT/checkpoints/. SIGTERM/Ctrl-C releases leases, saves and leaves.")
    p.add_argument("--coordinator", required=True, type=address_arg, help="HOST:PORT of the coordinator")
    p.add_argument("--token", default=None, help="join token (default: env SWARM_TOKEN)")
    # --tls-fingerprint / --tls-ca-file / --insecure: one pin for the coordinator and the dataset service it names
    add_client_tls_args(p)
    p.add_argument("--output-dir", default="./runs/train", help="where checkpoints and summary.json go "
                                                                "(default: %(default)s)")
    p.add_argument("--name", default="", help="name shown in the swarm's status (default: the host name)")
    p.add_argument("--batch-size", type=int_range_arg(1, MAX_BATCH_SIZE), default=1,
                   help="local batch per optimizer step (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                   help="autocast compute precision; master weights stay fp32 (default: fp32 on CPU, bf16 on CUDA)")
    mem = p.add_argument_group("memory and speed (per peer)")
    mem.add_argument("--gradient-checkpointing", action="store_true",
                     help="recompute activations in the backward pass: much less memory, ~25%% more compute")
    mem.add_argument("--xformers", action="store_true",
                     help="xformers memory-efficient attention (needs the xformers package); default: PyTorch SDPA")
    mem.add_argument("--use-8bit-adam", action="store_true", help="bitsandbytes AdamW8bit on CUDA (AdamW otherwise)")
    mem.add_argument("--cache-latents", action="store_true",
                     help="keep VAE latents of trained samples in RAM: a chunk seen again skips the VAE encoder")
    mem.add_argument("--ema-offload", action="store_true", help="keep EMA weights (run config use_ema) in host RAM")
    mem.add_argument("--fused-backward", action="store_true",
                     help="run config mode diloco: step each parameter inside the backward pass and free its "
                          "gradient at once (the model's gradients never all exist); not with --precision fp16")
    mem.add_argument("--bf16-weights", action="store_true",
                     help="run config mode diloco: hold the trained weights in bf16 (needs --precision bf16); the "
                          "swarm's fp32 copy is DiLoCo's outer state")
    net = p.add_argument_group("swarm networking (hivemind)")
    net.add_argument("--host-maddrs", nargs="+", default=["/ip4/0.0.0.0/tcp/0"], metavar="MADDR",
                     help="multiaddrs to listen on (default: %(default)s)")
    net.add_argument("--announce-maddrs", nargs="+", default=[], metavar="MADDR",
                     help="public multiaddrs to announce, for a port-forwarded peer (e.g. /ip4/PUBLIC_IP/tcp/PORT)")
    net.add_argument("--client-mode", action="store_true",
                     help="no inbound connections (behind NAT): join averaging through listening peers")
    net.add_argument("--require-reachable", action="store_true",
                     help="stop at start when the coordinator cannot dial this peer back (default: warn, train on)")
    net.add_argument("--use-relay", action=argparse.BooleanOptionalAction, default=True,
                     help="allow libp2p circuit relays (default: on)")
    net.add_argument("--use-auto-relay", action="store_true", help="look for relays automatically (behind NAT)")
    net.add_argument("--identity-path", default=None,
                     help="private key file for a stable peer id across restarts (default: OUTPUT/identity.key)")
    net.add_argument("--matchmaking-time", type=positive_float_arg, default=15.0,
                     help="seconds to gather an averaging group (default: %(default)s; internet 10-15)")
    net.add_argument("--averaging-timeout", type=positive_float_arg, default=120.0,
                     help="seconds an averaging round may take before this peer proceeds with local gradients "
                          "(default: %(default)s)")
    net.add_argument("--load-state-timeout", type=positive_float_arg, default=600.0,
                     help="seconds to download the swarm state from a peer (default: %(default)s)")
    net.add_argument("--compression", choices=COMPRESSIONS, default="fp16",
                     help="gradient compression; parameter averaging uses fp16 unless none (default: %(default)s)")
    net.add_argument("--average-state-every", type=positive_int_arg, default=10, metavar="N",
                     help="sync mode: average parameters with peers every N global epochs; they are identical on "
                          "peers that joined every gradient round, this repairs the others (default: %(default)s)")
    net.add_argument("--delay-grad-averaging", action="store_true",
                     help="sync mode: average gradients and step in the background during the next batch (one "
                          "step of staleness; needs the offloaded optimizer)")
    net.add_argument("--no-offload-optimizer", dest="offload_optimizer", action="store_false",
                     help="keep the optimizer state on the device instead of host RAM")
    p.add_argument("--barrier-timeout", type=positive_float_arg, default=300.0,
                   help="seconds to wait at the end for the other peers before leaving anyway (default: %(default)s)")
    p.add_argument("--upload-checkpoints", metavar="S3_URL", default=None,
                   help="also upload each checkpoint to s3://bucket/prefix (AWS credentials from the environment)")
    p.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint, e.g. the host's MinIO")
    p.add_argument("--metrics-port", type=port_arg, default=9102,
                   help="Prometheus /metrics port; 0 picks a free one (default: %(default)s)")
    add_metrics_host_arg(p)
    p.add_argument("--ready-file", help="write {peer_id, metrics_port, multiaddrs, ...} as JSON here once the DHT "
                                        "and optimizer are up")
    p.add_argument("--wandb-project", default=None,
                   help="also log loss, LR, epochs and throughput to this Weights & Biases project (needs wandb)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    p.add_argument("--verbose-hivemind", action="store_true", help="show hivemind's matchmaking/averaging lines")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "export", help="write a checkpoint as one .safetensors file in the original SD layout (A1111, ComfyUI)",
        description="Convert a diffusers checkpoint folder written by `swarm train` (OUTPUT/checkpoints/epoch-N) "
                    "into a single .safetensors file in the original Stable Diffusion layout.")
    e.add_argument("checkpoint", help="diffusers checkpoint folder (with unet/, vae/, text_encoder/)")
    e.add_argument("output", help="OUT.safetensors")
    e.add_argument("--fp16-unet", action="store_true", help="store the UNet in fp16 (half the size)")
    e.add_argument("--no-vae", dest="vae", action="store_false", help="leave the VAE out")
    e.add_argument("--no-text-encoder", dest="text_encoder", action="store_false", help="leave the text encoder out")
    e.set_defaults(func=run_export)


def options_from_args(args):
    """argparse namespace -> TrainerOptions (validated); separate so tests can build options like the CLI does."""
    import socket

    from swarm.errors import UsageError
    from swarm_trainer.features import PeerFeatures
    from swarm_trainer.options import TrainerOptions
    from swarm_trainer.swarm import SwarmOptions

    token = args.token or os.environ.get("SWARM_TOKEN") or None
    if not token:
        raise UsageError("no join token: pass --token or set SWARM_TOKEN (the host creates one with "
                         "`swarm token create`)")
    if args.wandb_project:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise UsageError("--wandb-project needs the wandb package: pip install wandb (then `wandb login`)")
    check_memory_flags(args)
    if args.upload_checkpoints:
        from swarm_trainer.uploads import parse_s3_url

        parse_s3_url(args.upload_checkpoints)
    for maddr in [*args.host_maddrs, *args.announce_maddrs]:
        if not maddr.startswith("/"):
            raise UsageError(f"{maddr!r} is not a multiaddr; write it like /ip4/0.0.0.0/tcp/31337")
    if args.delay_grad_averaging and not args.offload_optimizer:
        raise UsageError("--delay-grad-averaging needs the offloaded optimizer (hivemind steps it in the background): "
                         "drop --no-offload-optimizer")
    output_dir = Path(args.output_dir).expanduser().resolve()
    name = args.name or saved_peer_name(output_dir, socket.gethostname())
    identity = args.identity_path or str(output_dir / "identity.key")
    swarm = SwarmOptions(
        host_maddrs=tuple(args.host_maddrs), announce_maddrs=tuple(args.announce_maddrs),
        client_mode=args.client_mode, use_relay=args.use_relay, use_auto_relay=args.use_auto_relay,
        identity_path=identity, matchmaking_time=args.matchmaking_time, averaging_timeout=args.averaging_timeout,
        load_state_timeout=args.load_state_timeout, compression=args.compression,
        average_state_every=args.average_state_every, offload_optimizer=args.offload_optimizer,
        delay_grad_averaging=args.delay_grad_averaging,
        verbose=args.verbose_hivemind)
    return TrainerOptions(
        coordinator=args.coordinator, token=token, output_dir=output_dir, name=name,
        batch_size=args.batch_size, device=args.device, precision=args.precision, swarm=swarm,
        require_reachable=args.require_reachable,
        features=PeerFeatures(gradient_checkpointing=args.gradient_checkpointing, xformers=args.xformers,
                              use_8bit_adam=args.use_8bit_adam, cache_latents=args.cache_latents,
                              ema_offload=args.ema_offload, fused_backward=args.fused_backward,
                              bf16_weights=args.bf16_weights),
        barrier_timeout=args.barrier_timeout, metrics_port=args.metrics_port, metrics_host=args.metrics_host,
        ready_file=args.ready_file,
        progress=args.progress, upload_checkpoints=args.upload_checkpoints, s3_endpoint_url=args.s3_endpoint_url,
        wandb_project=args.wandb_project)


def check_memory_flags(args) -> None:
    """Refuse, before any model download, the memory flags this machine or combination cannot honour."""
    import importlib.util

    from swarm.errors import UsageError

    if args.xformers and importlib.util.find_spec("xformers") is None:
        raise UsageError("--xformers needs the xformers package, which is not installed here (the CUDA trainer image "
                         "has it; elsewhere `pip install xformers` matching your torch), or drop --xformers: "
                         "PyTorch's own attention (SDPA) is the default")
    if args.use_8bit_adam and args.offload_optimizer:
        raise UsageError("--use-8bit-adam does not work with hivemind's optimizer offload (on by default): "
                         "bitsandbytes' AdamW8bit would run over the offloaded CPU copies. Add "
                         "--no-offload-optimizer (the optimizer state then stays on the GPU, 8-bit), or drop "
                         "--use-8bit-adam")


def saved_peer_name(output_dir: Path, hostname: str) -> str:
    """The default peer name, kept in OUTPUT/peer-name so it survives container restarts (a container's host name
    is its id, new with every `docker run`)."""
    import secrets

    from swarm_trainer.options import default_peer_name

    path = output_dir / "peer-name"
    saved = path.read_text() if path.is_file() else None
    name = default_peer_name(hostname, saved, secrets.token_hex(3))
    if saved is None or saved.strip() != name:
        output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(name + "\n")
    return name


def run_export(args) -> int:
    from swarm_trainer.export import export_checkpoint

    counts = export_checkpoint(args.checkpoint, args.output, fp16_unet=args.fp16_unet, vae=args.vae,
                               text_encoder=args.text_encoder)
    print(f"wrote {args.output} ({', '.join(f'{name}: {n} tensors' for name, n in counts.items())})")
    return 0


def _use_tls(args) -> None:
    """Every gRPC channel of this process (coordinator, dataset) reads the pin from the environment (swarm.rpc)."""
    from swarm.cliargs import use_tls_args

    use_tls_args(args, dials=getattr(args, "coordinator", None))


def run_train(args) -> int:
    _use_tls(args)
    options = options_from_args(args)
    options.output_dir.mkdir(parents=True, exist_ok=True)
    from swarm_trainer.loop import PeerRun

    run = PeerRun(options)
    run.install_signal_handlers()
    return run.run()
