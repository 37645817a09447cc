/* For the "at the event" test: a worker thread blocks in rpt_first_function (read on stdin);
 * once a byte arrives it moves on to rpt_second_function and parks there.
 * Prints "ready <worker tid>" when the worker is about to read, "second" when it moved on. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>

__attribute__((noinline)) void rpt_second_function(void) {
    printf("second\n");
    fflush(stdout);
    for (;;) pause();
}

__attribute__((noinline)) void rpt_first_function(void) {
    char c;
    printf("ready %ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    while (read(0, &c, 1) != 1) {}
}

static void *worker(void *arg) {
    (void)arg;
    rpt_first_function();
    rpt_second_function();
    return NULL;
}

int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    for (;;) pause();
}
