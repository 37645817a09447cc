/* probe_sys: makes known syscalls on command, for the probe tests.
 *
 * Prints "ready <pid>" and then reads commands from stdin, one per line:
 *   w N      write(1-byte) to /dev/null N times (fd printed at start)
 *   e N      write to a closed pipe N times (EPIPE; SIGPIPE ignored)
 *   g N      getppid() N times
 *   s MS     nanosleep MS milliseconds
 *   t N      start N threads that sleep forever
 *   m MB     allocate and touch MB MiB
 *   f N      open N more fds on /dev/null
 *   c        nothing, just reply
 * Each command is answered with "done <tid>" after it completes.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void *sleeper(void *arg) { (void)arg; for (;;) pause(); return NULL; }

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    int null = open("/dev/null", O_WRONLY);
    int p[2];
    if (pipe(p) != 0) return 1;
    close(p[0]);
    if (argc > 1) {  /* spin mode: burn CPU until killed */
        if (strcmp(argv[1], "spin") == 0) {
            printf("ready %d spin\n", getpid()); fflush(stdout);
            volatile unsigned long x = 0; for (;;) x++;
        }
        if (strcmp(argv[1], "loop") == 0) {  /* getppid forever, in a loop */
            printf("ready %d loop\n", getpid()); fflush(stdout);
            for (;;) { syscall(SYS_getppid); usleep(1000); }
        }
    }
    printf("ready %d null=%d pipe=%d\n", getpid(), null, p[1]);
    fflush(stdout);
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        char cmd = 0; long n = 0;
        sscanf(line, "%c %ld", &cmd, &n);
        switch (cmd) {
        case 'w': for (long i = 0; i < n; i++) if (write(null, "x", 1) < 0) return 2; break;
        case 'e': for (long i = 0; i < n; i++) (void)write(p[1], "y", 1); break;
        case 'g': for (long i = 0; i < n; i++) syscall(SYS_getppid); break;
        case 's': { struct timespec ts = {n / 1000, (n % 1000) * 1000000L}; nanosleep(&ts, NULL); break; }
        case 't': for (long i = 0; i < n; i++) { pthread_t t; pthread_create(&t, NULL, sleeper, NULL); } break;
        case 'm': { char *m = malloc((size_t)n << 20); if (!m) return 3; memset(m, 1, (size_t)n << 20); break; }
        case 'f': for (long i = 0; i < n; i++) open("/dev/null", O_RDONLY); break;
        default: break;
        }
        printf("done %ld\n", (long)syscall(SYS_gettid));
        fflush(stdout);
    }
    return 0;
}
