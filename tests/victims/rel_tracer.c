/* rel_tracer PID [leader]: holds PID (every thread, or with "leader" its main thread only) with
 * PTRACE_SEIZE, as a debugger or strace would, and lets it run; prints "ready" once attached and
 * detaches at EOF on stdin. Stops it never. */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    char path[64];
    snprintf(path, sizeof path, "/proc/%s/task", argv[1]);
    DIR *d = opendir(path);
    if (!d) { perror(path); return 1; }
    struct dirent *e;
    int leader_only = argc > 2 && argv[2][0] == 'l';
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && (!leader_only || atoi(e->d_name) == atoi(argv[1])) &&
            ptrace(PTRACE_SEIZE, atoi(e->d_name), 0, 0) != 0) {
            perror("PTRACE_SEIZE");
            return 1;
        }
    closedir(d);
    printf("ready\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) == 1) {}
    return 0;
}
