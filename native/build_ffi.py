"""cffi builder for the native core: one extension, `kbs._native`, in API mode.

`setup.py` hooks this in; nothing else imports it.  The C API is `kbs_native.h`:
its declarations are handed to cdef with preprocessor lines removed.
"""

import os
import re
from pathlib import Path

from cffi import FFI

NATIVE = Path(__file__).resolve().parent
SOURCES = ["snp_report.c", "snp_certtable.c", "hash.c", "ecdsa_p384.c",
           "p384_mont.c", "p384_mont_adx.c", "p384_field_x86.c", "p384_bignum.c", "p384_field.c", "p384_scalar.c",
           "p384_point.c", "p384_verify.c"]

# Warnings are errors: this code parses hostile bytes.
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wconversion",
          "-Wno-sign-conversion", "-fno-strict-aliasing"]
if os.environ.get("KBS_SANITIZE"):
    CFLAGS += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
               "-fno-sanitize-recover=undefined"]


# The P-384 field multiply is chosen at run time (p384_mont.c), not by these flags; say so
# in the build log, since CI should show which code a build can run.
print("kbs native: P-384 field multiply = mulx/adcx/adox asm on x86-64 CPUs with BMI2+ADX "
      "(runtime cpuid check), else portable C (unsigned __int128); CFLAGS = " + " ".join(CFLAGS))


def _cdef_source() -> str:
    text = (NATIVE / "kbs_native.h").read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    # Keep integer #defines (cffi understands them); drop include guards and includes.
    lines = [ln for ln in text.splitlines()
             if not ln.startswith("#") or re.match(r"#define KBS_\w+ \d+$", ln)]
    return "\n".join(lines)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_source())
ffibuilder.set_source(
    "kbs._native",
    '#include "kbs_native.h"',
    sources=[str(Path("native") / name) for name in SOURCES],
    include_dirs=["native"],
    libraries=["crypto"],
    extra_compile_args=CFLAGS,
    extra_link_args=["-fsanitize=address,undefined"] if os.environ.get("KBS_SANITIZE") else [],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
