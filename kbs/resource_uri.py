"""Resource names as people and guests write them: `repo/type/tag`, or CoCo's `kbs:///repo/type/tag`.

CoCo's confidential-data hub and `kbs-guest` take the URI form (a host part is ignored, as the CDH
does); the admin verbs take both, so the name an operator copies from a guest's configuration works.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")  # the broker's rule for repo, type and tag


class ResourceNameError(ValueError):
    pass


def split_resource(text: str) -> tuple[str, str, str]:
    """(repo, type, tag), or ResourceNameError saying which form is wanted."""
    path = text
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme != "kbs" or parts.query or parts.fragment:
            raise ResourceNameError(f"resource must be kbs:///<repo>/<type>/<tag>, got {text!r}")
        path = parts.path
    segments = path.strip("/").split("/")
    if len(segments) != 3 or not all(SEGMENT.match(s) for s in segments):
        raise ResourceNameError(f"resource must be kbs:///<repo>/<type>/<tag> or <repo>/<type>/<tag> with segments "
                                f"of [A-Za-z0-9_.-], got {text!r}")
    return segments[0], segments[1], segments[2]
