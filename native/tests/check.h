/* The C tests' one assertion: count, and on failure say where and what (first 20 failures). */
#ifndef KBS_TEST_CHECK_H
#define KBS_TEST_CHECK_H
#include <stdio.h>

static long passed, failed;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            passed++;                                                                              \
        } else {                                                                                   \
            failed++;                                                                              \
            if (failed <= 20) {                                                                    \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                               \
                fprintf(stderr, __VA_ARGS__);                                                      \
                fputc('\n', stderr);                                                               \
            }                                                                                      \
        }                                                                                          \
    } while (0)

#endif
