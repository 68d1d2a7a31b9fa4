"""cffi builder for the native core: one extension, `kbs._native`, in API mode.

`setup.py` hooks this in; nothing else imports it.  Every `native/*.c` is compiled in.
The C API is `kbs_native.h`: cdef gets its text between the `/* BEGIN CDEF */` and
`/* END CDEF */` marker comments, unchanged (the header's guard and includes stay outside).
"""

import os
from pathlib import Path

from cffi import FFI

NATIVE = Path(__file__).resolve().parent
HEADER = NATIVE / "kbs_native.h"
CDEF_BEGIN, CDEF_END = "/* BEGIN CDEF */", "/* END CDEF */"

# Every C file in native/, as paths relative to the project root (where setup.py runs).
SOURCES = sorted(str(path.relative_to(NATIVE.parent)) for path in NATIVE.glob("*.c"))

# Warnings are errors: this code parses hostile bytes.
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wconversion",
          "-Wno-sign-conversion", "-fno-strict-aliasing"]
if os.environ.get("KBS_SANITIZE"):
    CFLAGS += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
               "-fno-sanitize-recover=undefined"]


# The P-384 and P-256 field multiplies are chosen at run time (p384_mont.c, p256_internal.h), not
# by these flags; say so in the build log, since CI should show which code a build can run.
print("kbs native: P-384 field multiply = mulx/adcx/adox asm on x86-64 CPUs with BMI2+ADX "
      "(runtime cpuid check), else portable C (unsigned __int128); P-256 field multiply = mulx asm "
      "on x86-64 CPUs with BMI2 (runtime check), else portable C; CFLAGS = " + " ".join(CFLAGS))


def _cdef_source() -> str:
    """The header's declarations: the text between its two CDEF markers."""
    text = HEADER.read_text()
    if text.count(CDEF_BEGIN) != 1 or text.count(CDEF_END) != 1:
        raise SystemExit(f"{HEADER} must hold exactly one {CDEF_BEGIN} and one {CDEF_END}")
    return text.split(CDEF_BEGIN)[1].split(CDEF_END)[0]


ffibuilder = FFI()
ffibuilder.cdef(_cdef_source())
ffibuilder.set_source(
    "kbs._native",
    '#include "kbs_native.h"',
    sources=SOURCES,
    include_dirs=["native"],
    libraries=["crypto"],
    extra_compile_args=CFLAGS,
    extra_link_args=["-fsanitize=address,undefined"] if os.environ.get("KBS_SANITIZE") else [],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
