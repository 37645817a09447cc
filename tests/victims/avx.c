/* Known values in vector and mask registers: ymm7 = {1, 2, 3, 4} (doubles), and with AVX-512
 * zmm7's upper half and k1 set too. Prints "ready" and sleeps in pause() with them live. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    static const double v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    printf("ready\n");
    fflush(stdout);
#ifdef __AVX512F__
    __asm__ volatile("vmovupd %0, %%zmm7\n\tmovl $0x5a, %%eax\n\tkmovw %%eax, %%k1" ::"m"(v) : "eax");
#else
    __asm__ volatile("vmovupd %0, %%ymm7" ::"m"(v));
#endif
    for (;;) pause();  /* glibc's pause does not touch the vector registers */
}
