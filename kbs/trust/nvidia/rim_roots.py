"""The root RIM signing chains must end at: NVIDIA's CoRIM signing Root CA, pinned by the SHA-256 of its DER
(reference/gpu.md §6), or the operator's roots (labs, tests).

The root certificate ships beside this module (`nvidia_corim_signing_root_ca.pem`, the bytes of NVIDIA's
`verifier_RIM_root.pem`) and is checked against the pin when it is loaded, so a damaged or swapped file
stops the broker instead of widening trust.  It is shipped because a RIM's chain is walked without the
root the RIM carries itself (as NVIDIA's verifier does: the embedded chain minus its last certificate,
plus the pinned root).
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Sequence

from kbs.trust.chain import Pin, PinnedRoots
from kbs.trust.signature import ECDSA_SHA384
from kbs.trust.x509 import Certificate, load_certificates

CORIM_ROOT_NAME = "NVIDIA CoRIM signing Root CA"
# SHA-256 of the DER NVIDIA CoRIM signing Root CA (reference/gpu.md §6).
CORIM_ROOT_SHA256 = "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"
CORIM_ROOT_FILE = "nvidia_corim_signing_root_ca.pem"
CORIM_ROOT_PIN = Pin(CORIM_ROOT_SHA256, CORIM_ROOT_NAME)
# NVIDIA signs every RIM chain link with ECDSA P-384 and SHA-384.
RIM_SIGNATURE_ALGORITHMS = frozenset({ECDSA_SHA384})


@functools.cache
def corim_root_certificate() -> Certificate:
    """The shipped CoRIM root, after checking it is the pinned one."""
    data = importlib.resources.files(__package__).joinpath(CORIM_ROOT_FILE).read_bytes()
    certs = load_certificates(data)
    if len(certs) != 1 or certs[0].fingerprint != CORIM_ROOT_SHA256:
        seen = ", ".join(c.fingerprint for c in certs) or "no certificate"
        raise RuntimeError(f"the shipped {CORIM_ROOT_FILE} is not the pinned {CORIM_ROOT_NAME} "
                           f"(SHA-256 {seen}, wanted {CORIM_ROOT_SHA256}); the package is damaged")
    return certs[0]


def rim_roots(trust_roots: Sequence[Certificate] | None = None) -> PinnedRoots:
    """Where a RIM chain may end: the pinned CoRIM root, or exactly the operator's roots."""
    if trust_roots is not None:
        return PinnedRoots.from_certificates(trust_roots, description="a configured RIM trust root")
    return PinnedRoots((CORIM_ROOT_PIN,), (corim_root_certificate(),),
                       description=f"the pinned {CORIM_ROOT_NAME}")
