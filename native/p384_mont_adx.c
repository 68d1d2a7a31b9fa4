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

/*
 * The same for p = 2^384 - 2^128 - 2^96 + 2^32 - 1 only, with p's shape in the reduction.
 * n0 = -p^-1 mod 2^64 = 2^32 + 1, so m = T0 + (T0 << 32), and
 *   T + m*p = T + m*2^384 - m*K,   K = 2^384 - p = 2^128 + 2^96 - 2^32 + 1
 *                                    = [0xffffffff00000001, 0xffffffff, 1] (limbs).
 * m*K < 2^193 is [c0, c1, c2, c3] with c0 == T0 (that is how m was chosen) and c3 <= 1,
 * so a reduction step is two mulx, T1..T3 -= c1..c3 with the borrow run through T5, and
 * m - borrow added at T6 (never negative: the borrow needs c > 0, so m > 0).
 */
#define PRED_MK(T0) /* rdx = m */ \
    "movq " T0 ", %rdx\n\t" \
    "shlq $32, %rdx\n\t" \
    "addq " T0 ", %rdx\n\t"

/* T += a * b[OFF/8] (as ROW above), then T += m*p, which clears T0 (zeroed for the next row). */
#define PROW(OFF, T0, T1, T2, T3, T4, T5, T6, T7) \
    "movq " #OFF "(%rbp), %rdx\n\t" \
    "xorl %eax, %eax\n\t" \
    MULADD("%rsi", 0, T0, T1) MULADD("%rsi", 8, T1, T2) MULADD("%rsi", 16, T2, T3) \
    MULADD("%rsi", 24, T3, T4) MULADD("%rsi", 32, T4, T5) MULADD("%rsi", 40, T5, T6) \
    "adcxq " T7 ", " T6 "\n\t" \
    "adoxq " T7 ", " T7 "\n\t" \
    "adcq $0, " T7 "\n\t" \
    PRED_MK(T0) \
    "movabsq $0xffffffff00000001, %rax\n\t" \
    "mulxq %rax, %rax, %rbx\n\t"     /* rbx = c1 part: hi(m * K0) */ \
    "movl $0xffffffff, %eax\n\t" \
    "mulxq %rax, %rax, %rcx\n\t"     /* rcx:rax = m * K1 */ \
    "addq %rax, %rbx\n\t"            /* c1 */ \
    "adcq %rdx, %rcx\n\t"            /* c2 = hi(m * K1) + m * K2 + carry */ \
    "movl $0, %eax\n\t" \
    "adcl $0, %eax\n\t"              /* c3 */ \
    "subq %rbx, " T1 "\n\t" \
    "sbbq %rcx, " T2 "\n\t" \
    "sbbq %rax, " T3 "\n\t" \
    "sbbq $0, " T4 "\n\t" \
    "sbbq $0, " T5 "\n\t" \
    "sbbq $0, %rdx\n\t" \
    "addq %rdx, " T6 "\n\t" \
    "adcq $0, " T7 "\n\t" \
    "xorl " T0 "d, " T0 "d\n\t"

/* t = [T0..T5] + carry * 2^384 < 2p (carry in CARRY): store t - p if t >= p, else t, at (DST).
 * t >= p exactly when t + K reaches 2^384.  Clobbers rdx and the six U registers. */
#define PFINAL(DST, CARRY, T0, T1, T2, T3, T4, T5, U0, U1, U2, U3, U4, U5) \
    "movq " T0 ", " U0 "\n\t" \
    "movabsq $0xffffffff00000001, %rdx\n\t" \
    "addq %rdx, " U0 "\n\t" \
    "movq " T1 ", " U1 "\n\t" \
    "movl $0xffffffff, %edx\n\t" \
    "adcq %rdx, " U1 "\n\t" \
    "movq " T2 ", " U2 "\n\t" \
    "adcq $1, " U2 "\n\t" \
    "movq " T3 ", " U3 "\n\t" \
    "adcq $0, " U3 "\n\t" \
    "movq " T4 ", " U4 "\n\t" \
    "adcq $0, " U4 "\n\t" \
    "movq " T5 ", " U5 "\n\t" \
    "adcq $0, " U5 "\n\t" \
    "adcq $0, " CARRY "\n\t"         /* 0 or 1, as t < 2p; ZF: t < p */ \
    "cmovnzq " U0 ", " T0 "\n\t" \
    "cmovnzq " U1 ", " T1 "\n\t" \
    "cmovnzq " U2 ", " T2 "\n\t" \
    "cmovnzq " U3 ", " T3 "\n\t" \
    "cmovnzq " U4 ", " T4 "\n\t" \
    "cmovnzq " U5 ", " T5 "\n\t" \
    "movq " T0 ", 0(" DST ")\n\t" \
    "movq " T1 ", 8(" DST ")\n\t" \
    "movq " T2 ", 16(" DST ")\n\t" \
    "movq " T3 ", 24(" DST ")\n\t" \
    "movq " T4 ", 32(" DST ")\n\t" \
    "movq " T5 ", 40(" DST ")\n\t"

/* void p384_fe_mul_adx(r = rdi, a = rsi, b = rdx): a*b/2^384 mod p; r may alias a or b. */
__asm__(
    ".text\n\t"
    ".p2align 4\n\t"
    ".globl p384_fe_mul_adx\n\t"
    ".hidden p384_fe_mul_adx\n\t"
    ".type p384_fe_mul_adx, @function\n"
    "p384_fe_mul_adx:\n\t"
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
    PROW(0, R8, R9, R10, R11, R12, R13, R14, R15)
    PROW(8, R9, R10, R11, R12, R13, R14, R15, R8)
    PROW(16, R10, R11, R12, R13, R14, R15, R8, R9)
    PROW(24, R11, R12, R13, R14, R15, R8, R9, R10)
    PROW(32, R12, R13, R14, R15, R8, R9, R10, R11)
    PROW(40, R13, R14, R15, R8, R9, R10, R11, R12)
    /* T0..T6 = r14 r15 r8 r9 r10 r11 r12, T < 2p */
    PFINAL("%rdi", "%r12", "%r14", "%r15", "%r8", "%r9", "%r10", "%r11",
           "%rax", "%rbx", "%rcx", "%rsi", "%rbp", "%r13")
    "popq %r15\n\t"
    "popq %r14\n\t"
    "popq %r13\n\t"
    "popq %r12\n\t"
    "popq %rbp\n\t"
    "popq %rbx\n\t"
    "ret\n\t"
    ".size p384_fe_mul_adx, .-p384_fe_mul_adx\n\t");

/*
 * Squaring mod p: the 12-limb square from 15 cross products (doubled) and 6 squares,
 * then six reduction steps on the low half alone, which leaves L' = (L + M*p)/2^384 <= p
 * in six limbs (every step's new top limb is m - borrow), then L' + H < 2p and one
 * conditional subtraction.
 */
#define SQ_CROSS(SRC_OFF, LO, HI) \
    "mulxq " #SRC_OFF "(%rsi), %rax, %rbx\n\t" \
    "adcxq %rax, " LO "\n\t" \
    "adoxq %rbx, " HI "\n\t"

/* One reduction step on the six limbs T0..T5: the result is T1..T5, T0 (T0 the new top). */
#define SQ_RED(T0, T1, T2, T3, T4, T5) \
    PRED_MK(T0) \
    "movabsq $0xffffffff00000001, %rax\n\t" \
    "mulxq %rax, %rax, %rsi\n\t" \
    "movl $0xffffffff, %eax\n\t" \
    "mulxq %rax, %rax, " T0 "\n\t" \
    "addq %rax, %rsi\n\t"            /* c1 */ \
    "adcq %rdx, " T0 "\n\t"          /* c2 */ \
    "movl $0, %eax\n\t" \
    "adcl $0, %eax\n\t"              /* c3 */ \
    "subq %rsi, " T1 "\n\t" \
    "sbbq " T0 ", " T2 "\n\t" \
    "sbbq %rax, " T3 "\n\t" \
    "sbbq $0, " T4 "\n\t" \
    "sbbq $0, " T5 "\n\t" \
    "sbbq $0, %rdx\n\t" \
    "movq %rdx, " T0 "\n\t"

/* void p384_fe_sqr_adx(r = rdi, a = rsi): a^2/2^384 mod p; r may alias a.
 * Square limbs: T0 = rdi (after r is pushed), T1..T10 = r8..r15, rcx, rbp, T11 = rbx. */
__asm__(
    ".text\n\t"
    ".p2align 4\n\t"
    ".globl p384_fe_sqr_adx\n\t"
    ".hidden p384_fe_sqr_adx\n\t"
    ".type p384_fe_sqr_adx, @function\n"
    "p384_fe_sqr_adx:\n\t"
    "pushq %rbx\n\t"
    "pushq %rbp\n\t"
    "pushq %r12\n\t"
    "pushq %r13\n\t"
    "pushq %r14\n\t"
    "pushq %r15\n\t"
    "pushq %rdi\n\t"
    /* a0 * a1..a5 into T1..T6 */
    "movq 0(%rsi), %rdx\n\t"
    "xorl %eax, %eax\n\t"
    "mulxq 8(%rsi), %r8, %r9\n\t"
    "mulxq 16(%rsi), %rax, %r10\n\t"
    "adcxq %rax, %r9\n\t"
    "mulxq 24(%rsi), %rax, %r11\n\t"
    "adcxq %rax, %r10\n\t"
    "mulxq 32(%rsi), %rax, %r12\n\t"
    "adcxq %rax, %r11\n\t"
    "mulxq 40(%rsi), %rax, %r13\n\t"
    "adcxq %rax, %r12\n\t"
    "movl $0, %eax\n\t"
    "adcxq %rax, %r13\n\t"
    /* a1 * a2..a5 into T3..T7 */
    "movq 8(%rsi), %rdx\n\t"
    "xorl %eax, %eax\n\t"
    SQ_CROSS(16, "%r10", "%r11")
    SQ_CROSS(24, "%r11", "%r12")
    SQ_CROSS(32, "%r12", "%r13")
    "mulxq 40(%rsi), %rax, %r14\n\t"
    "adcxq %rax, %r13\n\t"
    "movl $0, %eax\n\t"
    "adcxq %rax, %r14\n\t"
    "adoxq %rax, %r14\n\t"
    /* a2 * a3..a5 into T5..T8 */
    "movq 16(%rsi), %rdx\n\t"
    "xorl %eax, %eax\n\t"
    SQ_CROSS(24, "%r12", "%r13")
    SQ_CROSS(32, "%r13", "%r14")
    "mulxq 40(%rsi), %rax, %r15\n\t"
    "adcxq %rax, %r14\n\t"
    "movl $0, %eax\n\t"
    "adcxq %rax, %r15\n\t"
    "adoxq %rax, %r15\n\t"
    /* a3 * a4..a5 into T7..T9 */
    "movq 24(%rsi), %rdx\n\t"
    "xorl %eax, %eax\n\t"
    SQ_CROSS(32, "%r14", "%r15")
    "mulxq 40(%rsi), %rax, %rcx\n\t"
    "adcxq %rax, %r15\n\t"
    "movl $0, %eax\n\t"
    "adcxq %rax, %rcx\n\t"
    "adoxq %rax, %rcx\n\t"
    /* a4 * a5 into T9..T10 */
    "movq 32(%rsi), %rdx\n\t"
    "mulxq 40(%rsi), %rax, %rbp\n\t"
    "addq %rax, %rcx\n\t"
    "adcq $0, %rbp\n\t"
    /* double the cross sum (CF chain) and add the squares (OF chain) */
    "xorl %eax, %eax\n\t"
    "movq 0(%rsi), %rdx\n\t"
    "mulxq %rdx, %rdi, %rbx\n\t"
    "adcxq %r8, %r8\n\t"
    "adoxq %rbx, %r8\n\t"
    "movq 8(%rsi), %rdx\n\t"
    "mulxq %rdx, %rax, %rbx\n\t"
    "adcxq %r9, %r9\n\t"
    "adoxq %rax, %r9\n\t"
    "adcxq %r10, %r10\n\t"
    "adoxq %rbx, %r10\n\t"
    "movq 16(%rsi), %rdx\n\t"
    "mulxq %rdx, %rax, %rbx\n\t"
    "adcxq %r11, %r11\n\t"
    "adoxq %rax, %r11\n\t"
    "adcxq %r12, %r12\n\t"
    "adoxq %rbx, %r12\n\t"
    "movq 24(%rsi), %rdx\n\t"
    "mulxq %rdx, %rax, %rbx\n\t"
    "adcxq %r13, %r13\n\t"
    "adoxq %rax, %r13\n\t"
    "adcxq %r14, %r14\n\t"
    "adoxq %rbx, %r14\n\t"
    "movq 32(%rsi), %rdx\n\t"
    "mulxq %rdx, %rax, %rbx\n\t"
    "adcxq %r15, %r15\n\t"
    "adoxq %rax, %r15\n\t"
    "adcxq %rcx, %rcx\n\t"
    "adoxq %rbx, %rcx\n\t"
    "movq 40(%rsi), %rdx\n\t"
    "mulxq %rdx, %rax, %rbx\n\t"
    "adcxq %rbp, %rbp\n\t"
    "adoxq %rax, %rbp\n\t"
    "movl $0, %eax\n\t"
    "adcxq %rax, %rbx\n\t"
    "adoxq %rax, %rbx\n\t"
    /* reduce the low half T0..T5 = rdi r8 r9 r10 r11 r12 */
    SQ_RED("%rdi", "%r8", "%r9", "%r10", "%r11", "%r12")
    SQ_RED("%r8", "%r9", "%r10", "%r11", "%r12", "%rdi")
    SQ_RED("%r9", "%r10", "%r11", "%r12", "%rdi", "%r8")
    SQ_RED("%r10", "%r11", "%r12", "%rdi", "%r8", "%r9")
    SQ_RED("%r11", "%r12", "%rdi", "%r8", "%r9", "%r10")
    SQ_RED("%r12", "%rdi", "%r8", "%r9", "%r10", "%r11")
    /* L' = rdi r8 r9 r10 r11 r12; add H = r13 r14 r15 rcx rbp rbx */
    "addq %r13, %rdi\n\t"
    "adcq %r14, %r8\n\t"
    "adcq %r15, %r9\n\t"
    "adcq %rcx, %r10\n\t"
    "adcq %rbp, %r11\n\t"
    "adcq %rbx, %r12\n\t"
    "movl $0, %eax\n\t"
    "adcl $0, %eax\n\t"
    "popq %rsi\n\t" /* r */
    PFINAL("%rsi", "%rax", "%rdi", "%r8", "%r9", "%r10", "%r11", "%r12",
           "%r13", "%r14", "%r15", "%rcx", "%rbp", "%rbx")
    "popq %r15\n\t"
    "popq %r14\n\t"
    "popq %r13\n\t"
    "popq %r12\n\t"
    "popq %rbp\n\t"
    "popq %rbx\n\t"
    "ret\n\t"
    ".size p384_fe_sqr_adx, .-p384_fe_sqr_adx\n\t");

#else
/* ISO C forbids an empty translation unit. */
typedef int p384_mont_adx_unused;
#endif
