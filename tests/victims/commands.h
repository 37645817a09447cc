/* The command loop of the victims the daemon's tests drive line by line (daemon_victim.c,
 * shipd_victim.c, sec_hostile.c): prints "ready <pid>", then reads one command per line on
 * stdin, "<cmd> [N]", calls run(cmd, N) and answers "done <cmd> <value run returned>" once it
 * has completed, until EOF. A victim's run returns 0 for a command it does not know ("p": the
 * process still runs). */
#ifndef VICTIM_COMMANDS_H
#define VICTIM_COMMANDS_H

#include <stdio.h>
#include <unistd.h>

static int serve_commands(long (*run)(char cmd, long n))
{
    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        char cmd = 0;
        long n = 0;
        sscanf(line, "%c %ld", &cmd, &n);
        long r = run(cmd, n);
        printf("done %c %ld\n", cmd, r);
        fflush(stdout);
    }
    return 0;
}

#endif
