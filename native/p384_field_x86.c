/*
 * Addition, subtraction and halving mod p in plain x86-64 asm (no BMI2/ADX needed, so no
 * dispatch).  gcc turns the equivalent unsigned __int128 carry chains into slow code, and a
 * point doubling has ten of these.  Inputs < p, output < p; r may alias a or b.
 * p = [0x00000000ffffffff, 0xffffffff00000000, 0xfffffffffffffffe, ~0, ~0, ~0] (little-endian).
 */
#include "p384_internal.h"

#ifdef P384_HAVE_ASM

/* void p384_fe_add_x86(r = rdi, a = rsi, b = rdx): s = a + b; store s, then s - p over it
 * unless that borrows. */
__asm__(
    ".text\n\t"
    ".p2align 4\n\t"
    ".globl p384_fe_add_x86\n\t"
    ".hidden p384_fe_add_x86\n\t"
    ".type p384_fe_add_x86, @function\n"
    "p384_fe_add_x86:\n\t"
    "movq 0(%rsi), %rax\n\t"
    "addq 0(%rdx), %rax\n\t"
    "movq 8(%rsi), %rcx\n\t"
    "adcq 8(%rdx), %rcx\n\t"
    "movq 16(%rsi), %r8\n\t"
    "adcq 16(%rdx), %r8\n\t"
    "movq 24(%rsi), %r9\n\t"
    "adcq 24(%rdx), %r9\n\t"
    "movq 32(%rsi), %r10\n\t"
    "adcq 32(%rdx), %r10\n\t"
    "movq 40(%rsi), %r11\n\t"
    "adcq 40(%rdx), %r11\n\t"
    "movl $0, %esi\n\t" /* mov keeps CF */
    "adcq $0, %rsi\n\t" /* rsi = carry out: bit 384 of the sum */
    "movq %rax, 0(%rdi)\n\t"
    "movq %rcx, 8(%rdi)\n\t"
    "movq %r8, 16(%rdi)\n\t"
    "movq %r9, 24(%rdi)\n\t"
    "movq %r10, 32(%rdi)\n\t"
    "movq %r11, 40(%rdi)\n\t"
    "movl $0xffffffff, %edx\n\t"
    "subq %rdx, %rax\n\t"
    "movabsq $0xffffffff00000000, %rdx\n\t"
    "sbbq %rdx, %rcx\n\t"
    "sbbq $-2, %r8\n\t"
    "sbbq $-1, %r9\n\t"
    "sbbq $-1, %r10\n\t"
    "sbbq $-1, %r11\n\t"
    "sbbq $0, %rsi\n\t" /* borrow: a + b < p, keep the stored sum */
    "cmovcq 0(%rdi), %rax\n\t"
    "cmovcq 8(%rdi), %rcx\n\t"
    "cmovcq 16(%rdi), %r8\n\t"
    "cmovcq 24(%rdi), %r9\n\t"
    "cmovcq 32(%rdi), %r10\n\t"
    "cmovcq 40(%rdi), %r11\n\t"
    "movq %rax, 0(%rdi)\n\t"
    "movq %rcx, 8(%rdi)\n\t"
    "movq %r8, 16(%rdi)\n\t"
    "movq %r9, 24(%rdi)\n\t"
    "movq %r10, 32(%rdi)\n\t"
    "movq %r11, 40(%rdi)\n\t"
    "ret\n\t"
    ".size p384_fe_add_x86, .-p384_fe_add_x86\n\t");

/* void p384_fe_sub_x86(r = rdi, a = rsi, b = rdx): d = a - b, plus p if that borrowed
 * (the masked limbs of p are built before the add chain, which must not be disturbed). */
__asm__(
    ".text\n\t"
    ".p2align 4\n\t"
    ".globl p384_fe_sub_x86\n\t"
    ".hidden p384_fe_sub_x86\n\t"
    ".type p384_fe_sub_x86, @function\n"
    "p384_fe_sub_x86:\n\t"
    "pushq %rbx\n\t"
    "pushq %rbp\n\t"
    "movq 0(%rsi), %rax\n\t"
    "subq 0(%rdx), %rax\n\t"
    "movq 8(%rsi), %rcx\n\t"
    "sbbq 8(%rdx), %rcx\n\t"
    "movq 16(%rsi), %r8\n\t"
    "sbbq 16(%rdx), %r8\n\t"
    "movq 24(%rsi), %r9\n\t"
    "sbbq 24(%rdx), %r9\n\t"
    "movq 32(%rsi), %r10\n\t"
    "sbbq 32(%rdx), %r10\n\t"
    "movq 40(%rsi), %r11\n\t"
    "sbbq 40(%rdx), %r11\n\t"
    "sbbq %rsi, %rsi\n\t"  /* mask = borrow ? ~0 : 0 */
    "movl %esi, %edx\n\t"  /* p0 & mask */
    "movq %rsi, %rbx\n\t"
    "shlq $32, %rbx\n\t"   /* p1 & mask */
    "movq %rsi, %rbp\n\t"
    "andq $-2, %rbp\n\t"   /* p2 & mask */
    "addq %rdx, %rax\n\t"
    "adcq %rbx, %rcx\n\t"
    "adcq %rbp, %r8\n\t"
    "adcq %rsi, %r9\n\t"
    "adcq %rsi, %r10\n\t"
    "adcq %rsi, %r11\n\t"
    "movq %rax, 0(%rdi)\n\t"
    "movq %rcx, 8(%rdi)\n\t"
    "movq %r8, 16(%rdi)\n\t"
    "movq %r9, 24(%rdi)\n\t"
    "movq %r10, 32(%rdi)\n\t"
    "movq %r11, 40(%rdi)\n\t"
    "popq %rbp\n\t"
    "popq %rbx\n\t"
    "ret\n\t"
    ".size p384_fe_sub_x86, .-p384_fe_sub_x86\n\t");

/* void p384_fe_half_x86(r = rdi, a = rsi): a/2 mod p = (a + (p if a is odd)) / 2, without a
 * branch on the parity (it is random, so a branch mispredicts half the time). */
__asm__(
    ".text\n\t"
    ".p2align 4\n\t"
    ".globl p384_fe_half_x86\n\t"
    ".hidden p384_fe_half_x86\n\t"
    ".type p384_fe_half_x86, @function\n"
    "p384_fe_half_x86:\n\t"
    "pushq %rbx\n\t"
    "movq 0(%rsi), %rax\n\t"
    "movq 8(%rsi), %rcx\n\t"
    "movq 16(%rsi), %r8\n\t"
    "movq 24(%rsi), %r9\n\t"
    "movq 32(%rsi), %r10\n\t"
    "movq 40(%rsi), %r11\n\t"
    "movl %eax, %edx\n\t"
    "andl $1, %edx\n\t"
    "negq %rdx\n\t"      /* mask = a odd ? ~0 : 0 */
    "movq %rdx, %rsi\n\t"
    "shrq $32, %rsi\n\t" /* p0 & mask */
    "movq %rdx, %rbx\n\t"
    "shlq $32, %rbx\n\t" /* p1 & mask */
    "addq %rsi, %rax\n\t"
    "leaq (%rdx,%rdx), %rsi\n\t" /* p2 & mask = 2 * mask; lea keeps CF */
    "adcq %rbx, %rcx\n\t"
    "adcq %rsi, %r8\n\t"
    "adcq %rdx, %r9\n\t"
    "adcq %rdx, %r10\n\t"
    "adcq %rdx, %r11\n\t"
    "movl $0, %edx\n\t"
    "adcl $0, %edx\n\t"  /* bit 384 of a + p */
    "shrdq $1, %rcx, %rax\n\t"
    "shrdq $1, %r8, %rcx\n\t"
    "shrdq $1, %r9, %r8\n\t"
    "shrdq $1, %r10, %r9\n\t"
    "shrdq $1, %r11, %r10\n\t"
    "shrdq $1, %rdx, %r11\n\t"
    "movq %rax, 0(%rdi)\n\t"
    "movq %rcx, 8(%rdi)\n\t"
    "movq %r8, 16(%rdi)\n\t"
    "movq %r9, 24(%rdi)\n\t"
    "movq %r10, 32(%rdi)\n\t"
    "movq %r11, 40(%rdi)\n\t"
    "popq %rbx\n\t"
    "ret\n\t"
    ".size p384_fe_half_x86, .-p384_fe_half_x86\n\t");

#else
typedef int p384_field_x86_unused; /* ISO C forbids an empty translation unit */
#endif
