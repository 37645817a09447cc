/* Memory that does not change, laid out to exercise every copy path: stagecopy BIG_MIB FILE.
 * - a BIG_MIB anonymous region, every page filled with a pattern of its index (big runs);
 * - a 8 MiB region with every third page written (many small runs);
 * - a 256 KiB region written, then made PROT_NONE (read through /proc/PID/mem);
 * - a private mapping of FILE (one page long) spanning 4 pages, its first page written: the
 *   three pages beyond the end of the file cannot be read and must become holes;
 * - a 1 MiB MADV_DONTFORK region (copied from the parent in fork mode).
 * Single-threaded; after printing "ready BIG SMALL NONE FILEMAP DONTFORK" it blocks reading stdin,
 * so neither its memory nor its registers change between two dumps. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void fill(unsigned char *p, size_t len, uint64_t seed) {
    for (size_t off = 0; off < len; off += 4096) {
        uint64_t x = seed + off / 4096;
        for (size_t i = 0; i < 4096; i += 8) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            memcpy(p + off + i, &x, 8);
        }
    }
}

static void *anon(size_t len) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    madvise(p, len, MADV_NOHUGEPAGE);
    return p;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    size_t big = (size_t)atol(argv[1]) << 20;
    unsigned char *b = anon(big);
    fill(b, big, 1);

    size_t small_len = 8u << 20;
    unsigned char *s = anon(small_len);
    for (size_t off = 0; off < small_len; off += 3 * 4096) fill(s + off, 4096, 1000000 + off);

    size_t none_len = 256u << 10;
    unsigned char *n = anon(none_len);
    fill(n, none_len, 2000000);
    mprotect(n, none_len, PROT_NONE);

    int fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 4096) != 0) { perror(argv[2]); return 1; }
    unsigned char *f = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (f == MAP_FAILED) { perror("mmap file"); return 1; }
    fill(f, 4096, 3000000);

    size_t dontfork_len = 1u << 20;
    unsigned char *d = anon(dontfork_len);
    fill(d, dontfork_len, 4000000);
    madvise(d, dontfork_len, MADV_DONTFORK);

    printf("ready %p %p %p %p %p\n", (void *)b, (void *)s, (void *)n, (void *)f, (void *)d);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) == 1) {
    }
    return 0;
}
