/* rel_exec MIB PERIOD_MS [GEN]: a process that keeps exec'ing itself from a non-main thread.
 * Touches MIB of anonymous memory (so dumps take a while), runs a spinner thread, and every
 * PERIOD_MS milliseconds a third thread calls execve(argv[0]) with GEN+1: the kernel
 * kills the other threads and the exec'ing thread takes over the pid (fs/exec.c de_thread).
 * Prints "ready PID" in generation 0 only; exits at EOF on stdin. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static char **args;
static long period_ms;

static void *spin(void *arg) {
    (void)arg;
    for (volatile unsigned long i = 0;; i++)
        if ((i & 0xfffff) == 0) usleep(200);
    return NULL;
}

static void *execer(void *arg) {
    (void)arg;
    usleep((useconds_t)period_ms * 1000);
    char gen[32];
    snprintf(gen, sizeof gen, "%ld", (args[3] ? atol(args[3]) : 0) + 1);
    char *argv[] = {args[0], args[1], args[2], gen, NULL};
    execv(args[0], argv);  /* not /proc/self/exe: comm would become "exe" */
    perror("execv");
    _exit(1);
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    args = argv;
    period_ms = atol(argv[2]);
    size_t len = (size_t)atol(argv[1]) << 20;
    unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 1;
    for (size_t off = 0; off < len; off += 4096) m[off] = 1;
    pthread_t t;
    pthread_create(&t, NULL, spin, NULL);
    pthread_create(&t, NULL, execer, NULL);
    if (argc < 4) {
        printf("ready %d\n", getpid());
        fflush(stdout);
    }
    char c;
    while (read(0, &c, 1) == 1) {}
    return 0;
}
