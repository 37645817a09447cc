/* mr_threads: threads parked in distinctly named functions, one of which makes a syscall on
 * command, for the daemon's morning-report tests (the comm "mr_threads" is ours alone).
 *
 * Prints "ready <pid> <beta tid>" once every thread is parked: alpha and gamma in pause(2),
 * beta in read(2) of a pipe in mr_worker_beta, the main thread in read(2) of stdin in
 * mr_main_wait. Each line "f" on stdin makes beta call getppid(2) once (the rule's event) and
 * park in read(2) again, printing nothing (so a snapshot a little after the event finds it in
 * mr_worker_beta or a libc wrapper, never in stdio). The process exits when stdin closes. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_barrier_t barrier;
static int beta_pipe[2];
static volatile pid_t beta_tid;

static void mr_park(void) { for (;;) pause(); }

__attribute__((noinline)) void mr_worker_alpha(void) { pthread_barrier_wait(&barrier); mr_park(); }
__attribute__((noinline)) void mr_worker_gamma(void) { pthread_barrier_wait(&barrier); mr_park(); }

__attribute__((noinline)) void mr_worker_beta(void) {
    char c;
    beta_tid = (pid_t)syscall(SYS_gettid);
    pthread_barrier_wait(&barrier);
    while (read(beta_pipe[0], &c, 1) == 1) {
        syscall(SYS_getppid);
    }
    mr_park();
}

static void *start(void *arg) {
    long i = (long)arg;
    if (i == 0) mr_worker_alpha();
    else if (i == 1) mr_worker_beta();
    else mr_worker_gamma();
    return NULL;
}

__attribute__((noinline)) void mr_main_wait(void) {
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (line[0] == 'f' && write(beta_pipe[1], "f", 1) != 1) exit(1);
    }
    exit(0);
}

int main(void) {
    pthread_t t[3];
    if (pipe(beta_pipe) != 0) return 1;
    pthread_barrier_init(&barrier, NULL, 4);
    for (long i = 0; i < 3; i++) pthread_create(&t[i], NULL, start, (void *)i);
    pthread_barrier_wait(&barrier);
    usleep(1000); /* let the workers reach their waits */
    printf("ready %d %d\n", getpid(), (int)beta_tid);
    fflush(stdout);
    mr_main_wait();
    return 0;
}
