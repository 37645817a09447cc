/* trg_sig: a process with a SIGTERM graceful-shutdown handler, for the signal trigger tests.
 *
 *   trg_sig handler   SIGTERM runs trg_on_term(): prints "graceful <sig>" and exits 0
 *   trg_sig default   SIGTERM (and everything else) keeps its default action
 *   trg_sig ignore    SIGTERM is ignored (SIG_IGN)
 * Prints "ready <pid> handler=<addr>", then waits in pause() until a signal ends it.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop_now;

void trg_on_term(int sig)
{
    char msg[32];
    int n = snprintf(msg, sizeof msg, "graceful %d\n", sig);
    (void)!write(1, msg, (size_t)n);
    stop_now = 1;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "handler";
    if (strcmp(mode, "handler") == 0) {
        struct sigaction sa = {.sa_handler = trg_on_term};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
    } else if (strcmp(mode, "ignore") == 0) {
        signal(SIGTERM, SIG_IGN);
    }
    printf("ready %d handler=%p\n", getpid(), (void *)trg_on_term);
    fflush(stdout);
    while (!stop_now)
        pause();
    return 0;
}
