/* A service-like process for bench/report_bench.py: rpt_bench MIB THREADS.
 * Touches MIB MiB of heap, starts THREADS-1 worker threads parked in rpt_bench_worker (pause),
 * prints "ready" and parks the main thread in rpt_bench_main (read on stdin). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pthread_barrier_t barrier;

__attribute__((noinline)) static void rpt_bench_park(void) { for (;;) pause(); }

__attribute__((noinline)) static void *rpt_bench_worker(void *arg) {
    (void)arg;
    pthread_barrier_wait(&barrier);
    rpt_bench_park();
    return NULL;
}

__attribute__((noinline)) static void rpt_bench_main(void) {
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {}
    exit(0);
}

int main(int argc, char **argv) {
    size_t mib = (size_t)atol(argc > 1 ? argv[1] : "64");
    int threads = argc > 2 ? atoi(argv[2]) : 4;
    char *heap = malloc(mib << 20);
    for (size_t i = 0; i < mib << 20; i += 4096) heap[i] = (char)(i / 4096 % 251 + 1);
    pthread_barrier_init(&barrier, NULL, (unsigned)threads);
    for (int i = 1; i < threads; i++) {
        pthread_t t;
        pthread_create(&t, NULL, rpt_bench_worker, NULL);
    }
    pthread_barrier_wait(&barrier);
    usleep(20000);
    printf("ready\n");
    fflush(stdout);
    rpt_bench_main();
    return 0;
}
