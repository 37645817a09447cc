/* rel_storm: a trigger storm. Prints "ready PID", then for each line "SECONDS" on stdin calls
 * getppid() as fast as it can for that long and answers "done CALLS CALLS_PER_SECOND". */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(void) {
    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        double secs = atof(line), t0 = now(), t;
        unsigned long calls = 0;
        do {
            for (int i = 0; i < 1024; i++) syscall(SYS_getppid);
            calls += 1024;
        } while ((t = now()) - t0 < secs);
        printf("done %lu %.0f\n", calls, (double)calls / (t - t0));
        fflush(stdout);
    }
    return 0;
}
