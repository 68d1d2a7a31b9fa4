"""`kbs-guest`: fetch a key from a KBS at boot.

    kbs-guest get-resource kbs:///<repo>/<type>/<tag> --url URL [--ca-cert PEM] [--tee auto|snp|tdx|sample]
                           [--gpus auto|none|N] [--output FILE] ...

https:// brokers are verified against the system trust store, or only against `--ca-cert`
(`$KBS_CA_CERT`); a certificate that does not verify fails at once, with no key.

Exit codes: 0 the key was written; 1 refused or failed after the retries (one line on stderr,
with the broker's detail); 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import ssl
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from kbs.evidence.snp.coco import FAMILIES
from kbs.files import write_atomic
from kbs.guest import GuestError
from kbs.guest.client import fetch_resource, parse_resource
from kbs.guest.evidence import (
    SNP_PROVIDERS,
    TDX_PROVIDERS,
    TSM_REPORT_ROOT,
    EvidenceSource,
    SampleEvidence,
    TdxQuote,
    TsmReport,
)
from kbs.guest.gpu import MAX_GPUS, DeviceSource, NvmlGpus

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("kbs.guest")
KEY_TYPES = ("EC-P256", "EC-P521", "RSA-OAEP-256")


class Usage(Exception):
    """A usage error: exit 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kbs-guest", description="Fetch a key from a key broker (KBS 0.4.0) "
                                     "with this confidential VM's evidence.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and retries on stderr")
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("get-resource", help="attest and fetch one resource")
    get.add_argument("resource", help="kbs:///<repo>/<type>/<tag>")
    get.add_argument("--url", required=True, help="the broker, e.g. https://kbs.example:8080")
    get.add_argument("--tee", choices=("auto", "snp", "tdx", "sample"), default="auto",
                     help="evidence source; auto = SEV-SNP via configfs-tsm (sample only when asked)")
    get.add_argument("--tsm-path", type=Path, default=TSM_REPORT_ROOT, help="configfs-tsm report directory")
    get.add_argument("--gpus", type=_gpus, default="auto", metavar="auto|none|N",
                     help="NVIDIA GPU evidence through NVML (the gpu extra, nvidia-ml-py): auto = every GPU NVML sees, "
                     "none when NVML or the driver is missing; none; or N = the first N GPUs (fewer is an error)")
    get.add_argument("--snp-family", choices=FAMILIES, default="Milan",
                     help="processor family of a version 2 SNP report (it has no CPUID; later versions ignore this)")
    get.add_argument("--privlevel", type=int, choices=range(4), metavar="0..3",
                     help="SNP privilege level (VMPL) to request the report at")
    get.add_argument("--output", "-o", help="write the key to FILE (mode 0600, atomically); default stdout")
    get.add_argument("--key-type", choices=KEY_TYPES, default="EC-P256", help="ephemeral TEE key the key is "
                     "wrapped to")
    get.add_argument("--init-data", metavar="FILE", help="init-data TOML to send (bound at launch in HOST_DATA)")
    get.add_argument("--retries", type=int, default=5, help="retries after a failed attempt (default 5)")
    get.add_argument("--backoff", type=float, default=1.0, help="base of the exponential backoff, seconds")
    get.add_argument("--timeout", type=float, default=60.0, help="timeout of each HTTP request, seconds")
    get.add_argument("--bearer", action="store_true", help="fetch with Authorization: Bearer <token>, no cookie")
    get.add_argument("--ca-cert", "--cacert", dest="ca_cert", metavar="PEM",
                     help="verify the https:// broker against these CA certificates only (default: $KBS_CA_CERT, "
                     "else the system trust store); verification cannot be turned off")
    return parser


def _source(args: argparse.Namespace) -> EvidenceSource:
    if args.tee == "sample":
        return SampleEvidence()
    snp = TsmReport(args.tsm_path, family=args.snp_family, privlevel=args.privlevel)
    tdx = TdxQuote(args.tsm_path)
    if args.tee != "auto":
        return snp if args.tee == "snp" else tdx
    try:
        provider = snp.provider()
    except GuestError as exc:
        raise GuestError(f"no TEE found ({exc}); --tee sample uses the unsigned sample TEE",
                         check=exc.check) from exc
    if provider in TDX_PROVIDERS:
        return tdx
    if provider is not None and provider not in SNP_PROVIDERS:
        raise GuestError(f"configfs-tsm provider is {provider!r}; this client supports SEV-SNP (sev_guest) and "
                         "Intel TDX (tdx_guest)", check="guest.tsm.provider")
    return snp  # kernels without a provider attribute (6.7) had SNP only


def _gpus(value: str) -> str | int:
    if value in ("auto", "none"):
        return value
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto, none or a number of GPUs, got {value!r}") from None
    if not 1 <= count <= MAX_GPUS:
        raise argparse.ArgumentTypeError(f"a number of GPUs must be 1..{MAX_GPUS}, got {count}")
    return count


def _devices(choice: str | int, nvml: Any = None) -> list[DeviceSource]:
    """`--gpus`: the device sources to attest beside the CPU."""
    if choice == "none":
        return []
    if choice == "auto":
        gpus = NvmlGpus(nvml=nvml)
        return [gpus] if gpus.present() else []
    return [NvmlGpus(int(choice), nvml=nvml)]


def _check_args(args: argparse.Namespace) -> str | None:
    """Validate what can be validated before any network traffic; returns the init-data text."""
    try:
        parse_resource(args.resource)
    except GuestError as exc:
        raise Usage(str(exc)) from exc
    if not args.url.startswith(("http://", "https://")):
        raise Usage(f"--url must be http:// or https://, got {args.url!r}")
    args.ca_cert = args.ca_cert or os.environ.get("KBS_CA_CERT") or None
    if args.ca_cert and not args.url.startswith("https://"):
        raise Usage(f"--ca-cert (or KBS_CA_CERT) {args.ca_cert} is set but --url {args.url} is not https://")
    if args.retries < 0 or args.backoff < 0 or args.timeout <= 0:
        raise Usage("--retries and --backoff must be >= 0, --timeout > 0")
    if args.output not in (None, "-"):
        parent = Path(args.output).parent
        if not parent.is_dir():
            raise Usage(f"--output directory {parent} does not exist")
    if args.init_data is None:
        return None
    try:
        return Path(args.init_data).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Usage(f"cannot read --init-data {args.init_data}: {getattr(exc, 'strerror', None) or exc}") from exc


def _session(url: str, ca_cert: str | None) -> aiohttp.ClientSession:
    """https:// is always verified: against `ca_cert` alone when given, else the system trust store."""
    connector = None
    if ca_cert is not None:
        try:
            connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=ca_cert))
        except (OSError, ssl.SSLError) as exc:
            raise Usage(f"cannot load CA certificates from --ca-cert {ca_cert}: "
                        f"{getattr(exc, 'strerror', None) or exc}") from exc
    elif not url.startswith("https://") and not _loopback(url):
        log.warning("%s is plain HTTP: the broker is not authenticated (use https:// and --ca-cert)", url)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


def _loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically with mode 0600 from creation (kbs.files.write_atomic)."""
    write_atomic(path, data)


async def _get_resource(args: argparse.Namespace, init_data: str | None) -> bytes:
    source = _source(args)
    devices = await asyncio.to_thread(_devices, args.gpus)
    async with _session(args.url, args.ca_cert) as session:
        return await fetch_resource(args.url, args.resource, source, key_kind=args.key_type, init_data=init_data,
                                    retries=args.retries, backoff=args.backoff, session=session,
                                    timeout=args.timeout, use_bearer=args.bearer, devices=devices)


@contextlib.contextmanager
def _log_to_stderr(verbose: bool) -> Iterator[None]:
    """Progress and retries on stderr with -v; otherwise stderr carries only the final error line."""
    logger = logging.getLogger("kbs")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kbs-guest: %(message)s"))
    handler.setLevel(logging.INFO if verbose else logging.ERROR)
    old_level = logger.level
    logger.addHandler(handler)
    if verbose:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        init_data = _check_args(args)
        with _log_to_stderr(args.verbose):
            key = asyncio.run(_get_resource(args, init_data))
    except Usage as exc:
        print(f"kbs-guest: usage: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except GuestError as exc:
        print(f"kbs-guest: {exc.check}: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    try:
        if args.output in (None, "-"):
            sys.stdout.buffer.write(key)
            sys.stdout.buffer.flush()
        else:
            write_private(Path(args.output), key)
    except OSError as exc:
        print(f"kbs-guest: guest.output: cannot write the key to {args.output or 'stdout'}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
