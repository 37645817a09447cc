/* Does a fork snapshot leave any trace?
 * invisible MODE [none|seccomp-kill-clone|seccomp-kill-ptrace] [FD]
 * MODE read:  the main thread serves commands, blocked in read() on stdin (the injected thread).
 * MODE sleep: the main thread loops in nanosleep() (the injected thread); a second thread serves.
 * FD (default 3) is the write end of a pipe owned by the test.
 * Commands (one letter, one line of answer): w = waitpid(-1, WNOHANG) result or errno name;
 * s = SIGCHLD count; e = failed read()/nanosleep() count (EINTR or worse); n = completed
 * nanosleep() count; c = close FD.
 * With a seccomp option, installs a filter killing the process on clone (56) or on ptrace (101). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int sigchld = 0;
static volatile int failures = 0;
static volatile long naps = 0;
static int pipe_fd = 3;

static void on_chld(int s) { (void)s; sigchld++; }

static void serve(void) {
    char c;
    for (;;) {
        ssize_t n = read(0, &c, 1);
        if (n < 0) { failures++; if (errno != EINTR) return; continue; }
        if (n == 0) return;
        if (c == 'w') {
            pid_t p = waitpid(-1, NULL, WNOHANG);
            if (p < 0) printf("%s\n", errno == ECHILD ? "ECHILD" : strerror(errno));
            else printf("%d\n", p);
        } else if (c == 's') printf("%d\n", sigchld);
        else if (c == 'e') printf("%d\n", failures);
        else if (c == 'n') printf("%ld\n", naps);
        else if (c == 'c') { close(pipe_fd); printf("closed\n"); }
        else continue;
        fflush(stdout);
    }
}

static void *server(void *a) { (void)a; serve(); _exit(0); return NULL; }

static void install(int nr) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) perror("seccomp");
}

int main(int argc, char **argv) {
    int sleep_mode = argc > 1 && strcmp(argv[1], "sleep") == 0;
    if (argc > 3) pipe_fd = atoi(argv[3]);
    signal(SIGCHLD, on_chld);
    pthread_t t;
    if (sleep_mode) pthread_create(&t, NULL, server, NULL);
    if (argc > 2 && strcmp(argv[2], "seccomp-kill-clone") == 0) install(SYS_clone);
    if (argc > 2 && strcmp(argv[2], "seccomp-kill-ptrace") == 0) install(SYS_ptrace);
    printf("ready\n");
    fflush(stdout);
    if (!sleep_mode) { serve(); return 0; }
    for (;;) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        if (nanosleep(&ts, NULL) != 0) failures++;
        else naps++;
    }
}
