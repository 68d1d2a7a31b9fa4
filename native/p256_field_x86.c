/*
 * Montgomery multiply and square mod p = 2^256 - 2^224 + 2^192 + 2^96 - 1 in x86-64 asm with mulx
 * (BMI2; p256_internal.h checks the CPU, else the portable C of p256_mont.c runs).  gcc, which
 * builds the cffi module, compiles that C to about 130 cycles per multiply; these take about 36
 * (multiply) and 27 (square) on Zen 3, bound by their instruction count.  mulx leaves the flags
 * alone, so one adc chain runs across the products; a mulq version measured 10% slower.
 *
 * Reduction: p = -1 mod 2^64, so n0 = 1 and each round's Montgomery multiple is m = the lowest
 * limb itself; with p = (2^64 - 1) + (2^32 - 1) 2^64 + p3 2^192 (p3 = 0xffffffff00000001),
 * T_i + m (2^64 - 1) + m (2^32 - 1) 2^64 = m 2^96: limb i becomes 0, limb i+1 gets m << 32,
 * limb i+2 gets m >> 32, and limbs i+3, i+4 get m * p3 (the round's one mulx).
 *
 * The multiply interleaves rows and rounds (CIOS): S (six registers, names rotating) += a * b_k,
 * then one round frees the lowest limb, which becomes the next row's top.  The square forms the
 * 512-bit square in r8..r15, then four rounds on its low half whose top limbs land in the
 * registers just freed, and adds the high half.  Both end below 2p, and one conditional
 * subtraction of p gives the result below p.
 *
 * Registers: rdi = r, rsi = a, rcx = b (moved from rdx, which mulx reads).  r is written last,
 * so it may alias a or b.
 */
#include "p256_internal.h"

#ifdef P256_HAVE_ASM

/* S0..S3 += a * b_k with the low halves in one carry chain (S4 takes its carry; S4 < 2 before),
 * then the high halves, one limb up, in a second chain ending in F, the fresh top (zeroed first). */
#define ROW(OFF, S0, S1, S2, S3, S4, F)                                                                    \
    "movq " #OFF "(%rcx), %rdx\n\t xorl " F "d, " F "d\n\t"                                                \
    "mulxq 0(%rsi), %rax, %rbx\n\t addq %rax, " S0 "\n\t"                                                  \
    "mulxq 8(%rsi), %rax, %rbp\n\t adcq %rax, " S1 "\n\t"                                                  \
    "mulxq 16(%rsi), %rax, %r14\n\t adcq %rax, " S2 "\n\t"                                                 \
    "mulxq 24(%rsi), %rax, %r15\n\t adcq %rax, " S3 "\n\t adcq $0, " S4 "\n\t"                             \
    "addq %rbx, " S1 "\n\t adcq %rbp, " S2 "\n\t adcq %r14, " S3 "\n\t adcq %r15, " S4 "\n\t"              \
    "adcq $0, " F "\n\t"

/* One round on S0..S5: m = S0 is added as m p, S0 is then free. */
#define ROUND(S0, S1, S2, S3, S4, S5)                                                                      \
    "movq " S0 ", %rdx\n\t mulxq .Lp256_p3(%rip), %rax, %rbx\n\t"                                          \
    "movq " S0 ", %rbp\n\t shlq $32, %rbp\n\t shrq $32, %rdx\n\t"                                          \
    "addq %rbp, " S1 "\n\t adcq %rdx, " S2 "\n\t adcq %rax, " S3 "\n\t adcq %rbx, " S4 "\n\t"              \
    "adcq $0, " S5 "\n\t"

/* One round on the square's low half: M's multiple goes into A1..A3, and M becomes the next limb
 * up, hi(m p3) + carry (no overflow: hi <= 2^64 - 2^32). */
#define ROUND_LOW(M, A1, A2, A3)                                                                           \
    "movq " M ", %rdx\n\t mulxq .Lp256_p3(%rip), %rax, %rbx\n\t"                                           \
    "movq " M ", %rbp\n\t shlq $32, %rbp\n\t shrq $32, " M "\n\t"                                          \
    "addq %rbp, " A1 "\n\t adcq " M ", " A2 "\n\t adcq %rax, " A3 "\n\t adcq $0, %rbx\n\t"                 \
    "movq %rbx, " M "\n\t"

/* X0..X3 + 2^256 TOP, below 2p: subtract p unless that borrows, and store at rdi.  p0 = -1 is an
 * immediate, p1 = 2^32 - 1 goes through ecx, p3 is read from memory. */
#define FINAL(X0, X1, X2, X3, TOP)                                                                         \
    "movl $0xffffffff, %ecx\n\t"                                                                           \
    "movq " X0 ", %rax\n\t subq $-1, %rax\n\t"                                                             \
    "movq " X1 ", %rdx\n\t sbbq %rcx, %rdx\n\t"                                                            \
    "movq " X2 ", %rsi\n\t sbbq $0, %rsi\n\t"                                                              \
    "movq " X3 ", %rbp\n\t sbbq .Lp256_p3(%rip), %rbp\n\t"                                                 \
    "sbbq $0, " TOP "\n\t" /* borrow: the value was below p, keep it */                                   \
    "cmovcq " X0 ", %rax\n\t cmovcq " X1 ", %rdx\n\t cmovcq " X2 ", %rsi\n\t cmovcq " X3 ", %rbp\n\t"      \
    "movq %rax, 0(%rdi)\n\t movq %rdx, 8(%rdi)\n\t movq %rsi, 16(%rdi)\n\t movq %rbp, 24(%rdi)\n\t"

#define PROLOGUE(NAME)                                                                                     \
    ".text\n\t.p2align 4\n\t.globl " NAME "\n\t.hidden " NAME "\n\t.type " NAME ", @function\n" NAME ":\n\t" \
    "pushq %rbx\n\t pushq %rbp\n\t pushq %r12\n\t pushq %r13\n\t pushq %r14\n\t pushq %r15\n\t"
#define EPILOGUE(NAME)                                                                                     \
    "popq %r15\n\t popq %r14\n\t popq %r13\n\t popq %r12\n\t popq %rbp\n\t popq %rbx\n\t ret\n\t"         \
    ".size " NAME ", .-" NAME "\n\t"

__asm__(".section .rodata\n\t.p2align 3\n"
        ".Lp256_p3:\n\t.quad 0xffffffff00000001\n\t");

/* void p256_fe_mul_bmi2(r, a, b): row 0 into fresh S, then round, row, round, row, round, row, round. */
__asm__(PROLOGUE("p256_fe_mul_bmi2")
        "movq %rdx, %rcx\n\t"
        "movq 0(%rcx), %rdx\n\t"
        "mulxq 0(%rsi), %r8, %r9\n\t"
        "mulxq 8(%rsi), %rax, %r10\n\t addq %rax, %r9\n\t"
        "mulxq 16(%rsi), %rax, %r11\n\t adcq %rax, %r10\n\t"
        "mulxq 24(%rsi), %rax, %r12\n\t adcq %rax, %r11\n\t adcq $0, %r12\n\t"
        "xorl %r13d, %r13d\n\t"
        ROUND("%r8", "%r9", "%r10", "%r11", "%r12", "%r13")
        ROW(8, "%r9", "%r10", "%r11", "%r12", "%r13", "%r8")
        ROUND("%r9", "%r10", "%r11", "%r12", "%r13", "%r8")
        ROW(16, "%r10", "%r11", "%r12", "%r13", "%r8", "%r9")
        ROUND("%r10", "%r11", "%r12", "%r13", "%r8", "%r9")
        ROW(24, "%r11", "%r12", "%r13", "%r8", "%r9", "%r10")
        ROUND("%r11", "%r12", "%r13", "%r8", "%r9", "%r10")
        FINAL("%r12", "%r13", "%r8", "%r9", "%r10")
        EPILOGUE("p256_fe_mul_bmi2"));

/* void p256_fe_sqr_bmi2(r, a): the six products a_i a_j (i < j), doubled, plus the four squares in
 * one carry chain (mulx keeps CF), then the low-half rounds and the high half added. */
__asm__(PROLOGUE("p256_fe_sqr_bmi2")
        "movq 0(%rsi), %rdx\n\t"
        "mulxq 8(%rsi), %r9, %r10\n\t"
        "mulxq 16(%rsi), %rax, %r11\n\t addq %rax, %r10\n\t"
        "mulxq 24(%rsi), %rax, %r12\n\t adcq %rax, %r11\n\t adcq $0, %r12\n\t"
        "movq 8(%rsi), %rdx\n\t"
        "mulxq 16(%rsi), %rax, %rbx\n\t"
        "mulxq 24(%rsi), %rbp, %r13\n\t"
        "addq %rax, %r11\n\t adcq %rbp, %r12\n\t adcq $0, %r13\n\t"
        "addq %rbx, %r12\n\t adcq $0, %r13\n\t"
        "movq 16(%rsi), %rdx\n\t"
        "mulxq 24(%rsi), %rax, %r14\n\t"
        "addq %rax, %r13\n\t adcq $0, %r14\n\t"
        "xorl %r15d, %r15d\n\t"
        "addq %r9, %r9\n\t adcq %r10, %r10\n\t adcq %r11, %r11\n\t adcq %r12, %r12\n\t"
        "adcq %r13, %r13\n\t adcq %r14, %r14\n\t adcq %r15, %r15\n\t"
        "movq 0(%rsi), %rdx\n\t mulxq %rdx, %r8, %rax\n\t addq %rax, %r9\n\t"
        "movq 8(%rsi), %rdx\n\t mulxq %rdx, %rax, %rbx\n\t adcq %rax, %r10\n\t adcq %rbx, %r11\n\t"
        "movq 16(%rsi), %rdx\n\t mulxq %rdx, %rax, %rbx\n\t adcq %rax, %r12\n\t adcq %rbx, %r13\n\t"
        "movq 24(%rsi), %rdx\n\t mulxq %rdx, %rax, %rbx\n\t adcq %rax, %r14\n\t adcq %rbx, %r15\n\t"
        ROUND_LOW("%r8", "%r9", "%r10", "%r11")
        ROUND_LOW("%r9", "%r10", "%r11", "%r8")
        ROUND_LOW("%r10", "%r11", "%r8", "%r9")
        ROUND_LOW("%r11", "%r8", "%r9", "%r10")
        "xorl %ebx, %ebx\n\t"
        "addq %r12, %r8\n\t adcq %r13, %r9\n\t adcq %r14, %r10\n\t adcq %r15, %r11\n\t adcq $0, %rbx\n\t"
        FINAL("%r8", "%r9", "%r10", "%r11", "%rbx")
        EPILOGUE("p256_fe_sqr_bmi2"));

#endif
