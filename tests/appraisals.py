"""Submods for policy tests, as the verifiers would appraise them (the vectors are the verifiers')."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kbs.evidence.base import AFFIRMING, CPU, GPU, Appraisal, trust_vector
from kbs.evidence.sample import SAMPLE_VECTOR
from kbs.evidence.snp.verifier import snp_appraisal
from kbs.policy.ear import Submod

AFFIRMED = trust_vector(instance_identity=AFFIRMING, hardware=AFFIRMING, configuration=AFFIRMING)


def snp_sub(claims: Mapping[str, Any]) -> Submod:
    return Submod(snp_appraisal(claims))


def gpu_sub(claims: Mapping[str, Any], tee: str = "nvgpu") -> Submod:
    return Submod(Appraisal(tee=tee, device_class=GPU, claims=claims, vector=AFFIRMED))


def sample_sub(claims: Mapping[str, Any]) -> Submod:
    return Submod(Appraisal(tee="sample", device_class=CPU, claims=claims, vector=SAMPLE_VECTOR))


def cpu_sub(tee: str, claims: Mapping[str, Any]) -> Submod:
    return Submod(Appraisal(tee=tee, device_class=CPU, claims=claims, vector=AFFIRMED))
