/* rel_fork MIB: a process that forks all the time. Touches MIB of anonymous memory; one thread
 * forks a child that exits at once and reaps it, in a loop (each fork copies the page tables, so
 * a halt can land in the middle of one). Prints "ready PID FORKS_SO_FAR"; exits at EOF on stdin;
 * "n" prints the number of forks done. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile unsigned long forks;

static void *forker(void *arg) {
    (void)arg;
    for (;;) {
        pid_t c = fork();
        if (c == 0) _exit(0);
        if (c > 0) waitpid(c, NULL, 0);
        forks++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    size_t len = (size_t)atol(argc > 1 ? argv[1] : "64") << 20;
    unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 1;
    for (size_t off = 0; off < len; off += 4096) m[off] = 1;
    pthread_t t;
    pthread_create(&t, NULL, forker, NULL);
    printf("ready %d %lu\n", getpid(), forks);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) == 1)
        if (c == 'n') { printf("%lu\n", forks); fflush(stdout); }
    return 0;
}
