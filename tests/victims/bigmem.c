/* A process with a big heap: bigmem ALLOC_MIB TOUCH_MIB [idle].
 * Touches TOUCH_MIB of an ALLOC_MIB anonymous mapping, page i holding the byte (i % 251) + 1.
 * A heartbeat thread measures the process's own stalls (how long it was frozen), and a counter
 * thread increments `counter` continuously and mirrors it into `*mirror`, the last 8 bytes of the
 * touched buffer, far away in the address space: in a consistent snapshot the two differ by at
 * most 1 ("idle": no counter thread, for tests that need the memory but not a writer, which
 * costs a third of a CPU: on an emulated guest, CPU the daemon under test needs). Prints "ready BUF_ADDR COUNTER_ADDR MIRROR_ADDR", then serves
 * one-letter commands on stdin: s = print and reset the longest stall (us), c = print counter,
 * q = exit. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

volatile uint64_t counter = 0;
volatile uint64_t max_stall_us = 0;
volatile uint64_t *mirror;

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + ts.tv_nsec / 1000;
}

__attribute__((noinline)) static void *heartbeat(void *arg) {
    (void)arg;
    uint64_t last = now_us();
    for (;;) {
        usleep(1000);
        uint64_t t = now_us();
        uint64_t gap = t - last;
        gap = gap > 1000 ? gap - 1000 : 0;
        if (gap > max_stall_us) max_stall_us = gap;
        last = t;
    }
    return NULL;
}

__attribute__((noinline)) static void *count_forever(void *arg) {
    (void)arg;
    for (;;) {
        counter++;
        *mirror = counter;
        if ((counter & 0xfffff) == 0) usleep(100);  /* do not hog a CPU */
    }
    return NULL;
}

int main(int argc, char **argv) {
    size_t alloc = (size_t)atol(argc > 1 ? argv[1] : "64") << 20;
    size_t touch = (size_t)atol(argc > 2 ? argv[2] : "64") << 20;
    if (touch > alloc) touch = alloc;
    unsigned char *buf = mmap(NULL, alloc, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) { perror("mmap"); return 1; }
    madvise(buf, alloc, MADV_NOHUGEPAGE);  /* keep page counts predictable */
    for (size_t off = 0; off < touch; off += 4096) memset(buf + off, (int)((off / 4096) % 251) + 1, 4096);
    mirror = (volatile uint64_t *)(buf + (touch ? touch : 4096) - 8);
    pthread_t hb, ct;
    pthread_create(&hb, NULL, heartbeat, NULL);
    if (!(argc > 3 && strcmp(argv[3], "idle") == 0)) pthread_create(&ct, NULL, count_forever, NULL);
    printf("ready %p %p %p\n", (void *)buf, (void *)&counter, (void *)mirror);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) == 1) {
        if (c == 's') { printf("%llu\n", (unsigned long long)max_stall_us); max_stall_us = 0; }
        else if (c == 'c') printf("%llu\n", (unsigned long long)counter);
        else if (c == 'q') break;
        else continue;
        fflush(stdout);
    }
    return 0;
}
