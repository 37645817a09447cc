/* One mapping of each content class: content FILE.
 * SysV shm ('S'), shared memfd ('M'), shared mapping of regular FILE ('F'), a MADV_DONTDUMP
 * private region ('D'), a private anonymous region ('A'), a MADV_DONTFORK region ('K') and a
 * MADV_WIPEONFORK region ('W'), 64 KiB each. Prints
 * "ready shm=ADDR memfd=ADDR file=ADDR dd=ADDR anon=ADDR dontfork=ADDR wipe=ADDR" and waits for
 * stdin to close. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

#define SZ (64 * 1024)

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int id = shmget(IPC_PRIVATE, SZ, IPC_CREAT | 0600);
    char *shm = shmat(id, NULL, 0);
    shmctl(id, IPC_RMID, NULL);  /* gone when we are */
    memset(shm, 'S', SZ);

    int mfd = memfd_create("snapd-test", 0);
    ftruncate(mfd, SZ);
    char *mem = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    memset(mem, 'M', SZ);

    int ffd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    ftruncate(ffd, SZ);
    char *file = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_SHARED, ffd, 0);
    memset(file, 'F', SZ);

    char *dd = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(dd, 'D', SZ);
    madvise(dd, SZ, MADV_DONTDUMP);

    char *anon = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(anon, 'A', SZ);

    char *dontfork = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(dontfork, 'K', SZ);
    madvise(dontfork, SZ, MADV_DONTFORK);
    char *wipe = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(wipe, 'W', SZ);
    madvise(wipe, SZ, MADV_WIPEONFORK);

    printf("ready shm=%p memfd=%p file=%p dd=%p anon=%p dontfork=%p wipe=%p\n", shm, mem, file, dd,
           anon, dontfork, wipe);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) == 1) {}
    return 0;
}
