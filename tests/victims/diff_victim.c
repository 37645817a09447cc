/* A process driven step by step over stdin, for `snapd diff`: diff_victim TOUCH_MIB [MAP_MIB].
 * Maps MAP_MIB (default TOUCH_MIB) of anonymous memory between two PROT_NONE guard pages (so the
 * kernel merges it with no neighbour), touches the first TOUCH_MIB, page i filled with the byte
 * (i % 251) + 1, and prints "ready BUF_ADDR". Then, one command a line, each answered "ok ...":
 *   w K     rewrite K pages of the touched buffer, spread evenly (the first u64 of each += 1)
 *   h MIB   allocate and touch MIB MiB on the brk heap, in 64 KiB mallocs (below the mmap threshold)
 *   o PATH  open PATH read-only; answers "ok FD"
 *   t       start a thread parked in pause(); answers "ok TID"
 *   q       exit */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGE 4096

static volatile pid_t new_tid;

__attribute__((noinline)) static void *parked(void *arg) {
    (void)arg;
    new_tid = (pid_t)syscall(SYS_gettid);
    for (;;) pause();
    return NULL;
}

int main(int argc, char **argv) {
    size_t touch = (size_t)atol(argc > 1 ? argv[1] : "32") << 20;
    size_t map = argc > 2 ? (size_t)atol(argv[2]) << 20 : touch;
    if (touch > map) touch = map;
    unsigned char *area = mmap(NULL, map + 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) { perror("mmap"); return 1; }
    mprotect(area, PAGE, PROT_NONE);
    mprotect(area + PAGE + map, PAGE, PROT_NONE);
    unsigned char *buf = area + PAGE;
    madvise(buf, map, MADV_NOHUGEPAGE);  /* keep page counts predictable */
    size_t pages = touch / PAGE;
    for (size_t i = 0; i < pages; i++) memset(buf + i * PAGE, (int)(i % 251) + 1, PAGE);
    printf("ready %p\n", (void *)buf);
    fflush(stdout);
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (line[0] == 'w') {
            size_t k = (size_t)atol(line + 1);
            size_t stride = k && pages >= k ? pages / k : 1;
            for (size_t j = 0; j < k && j * stride < pages; j++) ((uint64_t *)(buf + j * stride * PAGE))[0] += 1;
            printf("ok\n");
        } else if (line[0] == 'h') {
            size_t n = ((size_t)atol(line + 1) << 20) / (64 << 10);
            for (size_t j = 0; j < n; j++) {
                void *p = malloc(64 << 10);
                if (!p) { printf("error malloc\n"); break; }
                memset(p, 0x5a, 64 << 10);
            }
            printf("ok\n");
        } else if (line[0] == 'o') {
            int fd = open(line + 2, O_RDONLY | O_CLOEXEC);
            printf("ok %d\n", fd);
        } else if (line[0] == 't') {
            pthread_t t;
            new_tid = 0;
            pthread_create(&t, NULL, parked, NULL);
            while (!new_tid) usleep(100);
            usleep(1000);  /* let it reach pause() */
            printf("ok %d\n", (int)new_tid);
        } else if (line[0] == 'q') {
            break;
        } else {
            printf("error unknown command\n");
        }
        fflush(stdout);
    }
    return 0;
}
