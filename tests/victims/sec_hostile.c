/* sec_hostile: a target with a hostile name, for tests/security.
 *
 * Usage: sec_hostile COMM
 * Sets its comm to COMM with prctl(PR_SET_NAME) (the kernel keeps 15 bytes; any byte but NUL,
 * so spaces, newlines and terminal escape sequences too), prints "ready <pid>" (its pid as it
 * sees it: 1 when it is the init of a new pid namespace) and then reads one command per line:
 *   g N   getppid() N times (what the tests' rules trigger on)
 *   p     nothing: proves the process still runs
 * Each command is answered with "done <cmd> <last return value>", as daemon_victim.c does.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "commands.h"

static long run(char cmd, long n)
{
    long r = 0;
    if (cmd == 'g')
        for (long i = 0; i < n; i++) r = syscall(SYS_getppid);
    return r;
}

int main(int argc, char **argv)
{
    if (argc > 1 && prctl(PR_SET_NAME, argv[1], 0, 0, 0) != 0) { perror("prctl"); return 1; }
    return serve_commands(run);
}
