/*
 * 6-limb Montgomery multiplication with mulx/adcx/adox (BMI2 + ADX), x86-64 SysV.
 *
 * A whole function in file-scope asm rather than inline asm: it needs 15 registers,
 * which inline asm cannot get when the frame pointer is kept (sanitizer builds), and
 * gcc compiles the equivalent unsigned __int128 C 2-4x slower (reference/p384.md §1).
 * Only p384_mont.c calls it, and only when the CPU has both extensions.
 *
 * Algorithm: CIOS.  For each limb b[i]: T += a*b[i]; m = T0*n0; T += m*mod; T >>= 64.
 * T lives in r8..r15 as T0..T7 and the names rotate by one register per row, so the
 * limb zeroed by the reduction becomes the next row's empty top limb T7.  Each product
 * row runs two carry chains at once: low halves through CF (adcx), high halves through
 * OF (adox).  T < 2*mod after every row, so one conditional subtraction ends it.
 *
 * rdi = r, rsi = a, rbp = b (moved from rdx, which mulx needs), rcx = mod (m[6], n0).
 * r is written only at the end, so r may alias a or b.
 */
#include "p384_internal.h"

#ifdef P384_HAVE_ASM

#define MULADD(SRC, OFF, LO_DST, HI_DST) \
    "mulxq " #OFF "(" SRC "), %rax, %rbx\n\t" \
    "adcxq %rax, " LO_DST "\n\t" \
    "adoxq %rbx, " HI_DST "\n\t"

/* T += a * b[OFF/8], then one reduction step that clears T0. */
#define ROW(OFF, T0, T1, T2, T3, T4, T5, T6, T7) \
    "movq " #OFF "(%rbp), %rdx\n\t" \
    "xorl %eax, %eax\n\t" /* clears CF and OF */ \
    MULADD("%rsi", 0, T0, T1) MULADD("%rsi", 8, T1, T2) MULADD("%rsi", 16, T2, T3) \
    MULADD("%rsi", 24, T3, T4) MULADD("%rsi", 32, T4, T5) MULADD("%rsi", 40, T5, T6) \
    "adcxq " T7 ", " T6 "\n\t"  /* T7 is 0 here: T6 += CF */ \
    "adoxq " T7 ", " T7 "\n\t"  /* T7 = OF */ \
    "adcq $0, " T7 "\n\t" \
    "movq " T0 ", %rdx\n\t" \
    "imulq 48(%rcx), %rdx\n\t"  /* m = T0 * n0 mod 2^64 */ \
    "xorl %eax, %eax\n\t" \
    MULADD("%rcx", 0, T0, T1) MULADD("%rcx", 8, T1, T2) MULADD("%rcx", 16, T2, T3) \
    MULADD("%rcx", 24, T3, T4) MULADD("%rcx", 32, T4, T5) MULADD("%rcx", 40, T5, T6) \
    "adcxq " T0 ", " T6 "\n\t"  /* T0 is 0 now */ \
    "adoxq " T0 ", " T7 "\n\t" \
    "adcq $0, " T7 "\n\t"

#define R8 "%r8"
#define R9 "%r9"
#define R10 "%r10"
#define R11 "%r11"
#define R12 "%r12"
#define R13 "%r13"
#define R14 "%r14"
#define R15 "%r15"

__asm__(
    ".text\n\t"
    ".p2align 4\n\t"
    ".globl p384_mont_mul_adx\n\t"
    ".hidden p384_mont_mul_adx\n\t"
    ".type p384_mont_mul_adx, @function\n"
    "p384_mont_mul_adx:\n\t"
    "pushq %rbx\n\t"
    "pushq %rbp\n\t"
    "pushq %r12\n\t"
    "pushq %r13\n\t"
    "pushq %r14\n\t"
    "pushq %r15\n\t"
    "movq %rdx, %rbp\n\t"
    "xorl %r8d, %r8d\n\t"
    "xorl %r9d, %r9d\n\t"
    "xorl %r10d, %r10d\n\t"
    "xorl %r11d, %r11d\n\t"
    "xorl %r12d, %r12d\n\t"
    "xorl %r13d, %r13d\n\t"
    "xorl %r14d, %r14d\n\t"
    "xorl %r15d, %r15d\n\t"
    ROW(0, R8, R9, R10, R11, R12, R13, R14, R15)
    ROW(8, R9, R10, R11, R12, R13, R14, R15, R8)
    ROW(16, R10, R11, R12, R13, R14, R15, R8, R9)
    ROW(24, R11, R12, R13, R14, R15, R8, R9, R10)
    ROW(32, R12, R13, R14, R15, R8, R9, R10, R11)
    ROW(40, R13, R14, R15, R8, R9, R10, R11, R12)
    /* Now T0..T6 = r14 r15 r8 r9 r10 r11 r12 and T < 2*mod; try T - mod. */
    "movq %r14, %rax\n\t"
    "subq 0(%rcx), %rax\n\t"
    "movq %r15, %rbx\n\t"
    "sbbq 8(%rcx), %rbx\n\t"
    "movq %r8, %rdx\n\t"
    "sbbq 16(%rcx), %rdx\n\t"
    "movq %r9, %rsi\n\t"
    "sbbq 24(%rcx), %rsi\n\t"
    "movq %r10, %rbp\n\t"
    "sbbq 32(%rcx), %rbp\n\t"
    "movq %r11, %r13\n\t"
    "sbbq 40(%rcx), %r13\n\t"
    "sbbq $0, %r12\n\t" /* borrow out: T < mod, keep T */
    "cmovcq %r14, %rax\n\t"
    "cmovcq %r15, %rbx\n\t"
    "cmovcq %r8, %rdx\n\t"
    "cmovcq %r9, %rsi\n\t"
    "cmovcq %r10, %rbp\n\t"
    "cmovcq %r11, %r13\n\t"
    "movq %rax, 0(%rdi)\n\t"
    "movq %rbx, 8(%rdi)\n\t"
    "movq %rdx, 16(%rdi)\n\t"
    "movq %rsi, 24(%rdi)\n\t"
    "movq %rbp, 32(%rdi)\n\t"
    "movq %r13, 40(%rdi)\n\t"
    "popq %r15\n\t"
    "popq %r14\n\t"
    "popq %r13\n\t"
    "popq %r12\n\t"
    "popq %rbp\n\t"
    "popq %rbx\n\t"
    "ret\n\t"
    ".size p384_mont_mul_adx, .-p384_mont_mul_adx\n\t");

#else
/* ISO C forbids an empty translation unit. */
typedef int p384_mont_adx_unused;
#endif
