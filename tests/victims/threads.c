/* Several threads parked in distinctly named functions, a known global, per-thread TLS.
 * Prints "ready <nthreads>" once every thread is parked, then waits for stdin to close. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

long snapd_global = 0x5eed5eed;
__thread long snapd_tls = 0;
static pthread_barrier_t barrier;
volatile long counter = 0;

static void park(void) { for (;;) pause(); }

__attribute__((noinline)) void worker_alpha(void) { snapd_tls = 1001; pthread_barrier_wait(&barrier); park(); }
__attribute__((noinline)) void worker_beta(void)  { snapd_tls = 1002; pthread_barrier_wait(&barrier); park(); }
__attribute__((noinline)) void worker_gamma(void) { snapd_tls = 1003; pthread_barrier_wait(&barrier); park(); }

static void *start(void *arg) {
    long i = (long)arg;
    if (i == 0) worker_alpha();
    else if (i == 1) worker_beta();
    else worker_gamma();
    return NULL;
}

__attribute__((noinline)) void main_wait(void) {
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) counter++;
    exit(0);
}

int main(void) {
    pthread_t t[3];
    snapd_tls = 1000;
    pthread_barrier_init(&barrier, NULL, 4);
    for (long i = 0; i < 3; i++) pthread_create(&t[i], NULL, start, (void *)i);
    pthread_barrier_wait(&barrier);
    usleep(1000);  /* let the workers reach pause() */
    printf("ready 4\n");
    fflush(stdout);
    main_wait();
    return 0;
}
