/* peak_rss OUT CMD [ARGS...]: run CMD, write "PEAK_RSS_KIB CPU_SECONDS" (wait4's ru_maxrss, and
 * ru_utime + ru_stime) to the file OUT, and exit with CMD's exit status. A Python parent cannot measure this for its children: a
 * child forked or vforked from it starts with the parent's high-water mark, and exec keeps the
 * larger of the two (fs/exec.c, setmax_mm_hiwater_rss), so every child would look 40 MiB big. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: peak_rss OUT CMD [ARGS...]\n"); return 2; }
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 2; }
    if (pid == 0) { execvp(argv[2], argv + 2); perror(argv[2]); _exit(127); }
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) { perror("wait4"); return 2; }
    FILE *f = fopen(argv[1], "w");
    if (!f) { perror(argv[1]); return 2; }
    double cpu = ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    fprintf(f, "%ld %.6f\n", ru.ru_maxrss, cpu);
    fclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
