/* trg_tick: threads that make syscalls all the time, for the tick-then-syscall tests.
 *   trg_tick N   N threads (the main one included), each looping clock_nanosleep(1 ms)
 * Prints "ready <pid>" once they run; never exits by itself.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void *loop(void *arg)
{
    (void)arg;
    struct timespec ms = {0, 1000000};
    for (;;)
        clock_nanosleep(CLOCK_MONOTONIC, 0, &ms, NULL);
    return NULL;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1;
    for (int i = 1; i < n; i++) {
        pthread_t t;
        pthread_create(&t, NULL, loop, NULL);
    }
    printf("ready %d\n", getpid());
    fflush(stdout);
    loop(NULL);
    return 0;
}
