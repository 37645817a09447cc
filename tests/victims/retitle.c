/* A process that rewrites its command line all the time, as setproctitle() does in postgres,
 * nginx and sshd: argv[1] (at least 12 characters) holds a counter that moves every ~100 us, so
 * two reads of /proc/PID/cmdline a moment apart differ (fs/proc/base.c get_mm_cmdline reads
 * the argument area of the process's memory as it is at that moment). */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2 || strlen(argv[1]) < 12)
        return 2;
    printf("ready %d\n", getpid());
    fflush(stdout);
    struct timespec pause = {0, 100000};
    for (unsigned long i = 0;; i++) {
        snprintf(argv[1], 13, "%012lu", i % 1000000000000UL);  // same length: arg_end unmoved
        nanosleep(&pause, NULL);
    }
}
