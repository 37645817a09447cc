/* shipd_victim: the daemon's shipping tests (compression, bundles, uploads).
 *
 * Usage: shipd_victim [RANDOM_MIB]   (RANDOM_MIB: anonymous memory filled with pseudo-random
 *                                     bytes: a core that does not compress, for big uploads)
 * A thread parks in shipd_victim_parked (a frame a backtrace must name). Prints "ready <pid>",
 * then reads one command per line on stdin, answered "done <cmd> <value>":
 *   g N   getppid() N times, from shipd_victim_fire
 *   p     nothing: proves the process still runs
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "commands.h"

static volatile int parked = 0;

__attribute__((noinline)) static void *shipd_victim_parked(void *arg)
{
    (void)arg;
    __atomic_store_n(&parked, 1, __ATOMIC_SEQ_CST);
    for (;;)
        pause();
    return NULL;
}

__attribute__((noinline)) static long shipd_victim_fire(long n)
{
    long r = 0;
    for (long i = 0; i < n; i++)
        r = syscall(SYS_getppid);
    return r;
}

static long run(char cmd, long n)
{
    return cmd == 'g' ? shipd_victim_fire(n) : 0;
}

int main(int argc, char **argv)
{
    size_t random_bytes = argc > 1 ? (size_t)atol(argv[1]) << 20 : 0;
    if (random_bytes) {
        uint64_t *m = mmap(NULL, random_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) { perror("mmap"); return 1; }
        uint64_t x = 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
        for (size_t i = 0; i < random_bytes / 8; i++) { /* xorshift64: zstd cannot shrink it */
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            m[i] = x;
        }
    }
    pthread_t t;
    pthread_create(&t, NULL, shipd_victim_parked, NULL);
    while (!__atomic_load_n(&parked, __ATOMIC_SEQ_CST))
        usleep(1000);
    return serve_commands(run);
}
