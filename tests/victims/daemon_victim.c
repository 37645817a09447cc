/* daemon_victim: makes known syscalls on command, for the daemon's end-to-end tests.
 *
 * Usage: daemon_victim [TOUCH_MIB]   (TOUCH_MIB: anonymous memory to touch, so dumps take time)
 * Prints "ready <pid>" and then reads one command per line on stdin:
 *   g N   getppid() N times (an entry probe: no return value needed)
 *   e N   write one byte to a pipe whose read end is closed, N times: EPIPE (SIGPIPE ignored)
 *   l US  start a thread that calls getppid() every US microseconds, forever
 *   p     nothing: proves the process still runs
 * Each command is answered with "done <cmd> <last return value>" after it completes.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "commands.h"

static int epipe_fd = -1; /* a pipe's write end whose read end is closed */

static void *getppid_loop(void *arg)
{
    useconds_t us = (useconds_t)(long)arg;
    for (;;) {
        syscall(SYS_getppid);
        if (us) usleep(us);
    }
    return NULL;
}

static long run(char cmd, long n)
{
    long r = 0;
    switch (cmd) {
    case 'g': for (long i = 0; i < n; i++) r = syscall(SYS_getppid); break;
    case 'e': for (long i = 0; i < n; i++) r = write(epipe_fd, "y", 1); break;
    case 'l': { pthread_t t; r = pthread_create(&t, NULL, getppid_loop, (void *)n); break; }
    default: break;
    }
    return r;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    int p[2];
    if (pipe(p) != 0) return 1;
    close(p[0]);
    epipe_fd = p[1];
    size_t touch = argc > 1 ? (size_t)atol(argv[1]) << 20 : 0;
    if (touch) {
        unsigned char *m = mmap(NULL, touch, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) { perror("mmap"); return 1; }
        for (size_t off = 0; off < touch; off += 4096) m[off] = (unsigned char)(off >> 12) | 1;
    }
    return serve_commands(run);
}
