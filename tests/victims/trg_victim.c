/* trg_victim: does one known thing per command, for the trigger prototypes (tests/triggers).
 *
 * Prints "ready <pid> marker=<addr>" and reads commands from stdin, one per line; HEX is the
 * bytes of an argument, hex-encoded (so that any byte 1..255 can be passed):
 *   o HEX       openat(AT_FDCWD, HEX, O_RDONLY)
 *   w HEX       write(/dev/null, HEX)
 *   v HEX HEX   writev(/dev/null, [HEX, HEX])
 *   s HEX       sendto(one end of a socketpair, HEX)
 *   m HEX       sendmsg(one end of a socketpair, [HEX])
 *   c N         trg_marker(N), which returns N + 1000
 *   a N         malloc(N) then free
 *   f           trg_syscall_fn(): one openat of a missing file from a named function
 *   k N MS      fork a child that calls trg_marker(N) after MS milliseconds and exits; the
 *               answer (at once, the child auto-reaped) names the child's pid as ret
 *   u N         passes USDT probe trg:eight, whose 8 operands are N, N+1, ... N+7 (in
 *               registers and memory, as the compiler places them)
 *   V N         a CLONE_VM child (as posix_spawn(3) makes: the same mm, another process) that
 *               calls trg_marker(N) and exits; answered once it has, with the child's pid
 * Each command is answered with "done <tid> <ret> <errno>" after it completes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <sys/sdt.h>
#include <time.h>
#include <unistd.h>

#define MAXB 4096

__attribute__((noinline)) long trg_marker(long x)
{
    asm volatile("" ::: "memory");
    return x + 1000;
}

__attribute__((noinline)) long trg_syscall_fn(void)
{
    long r = syscall(SYS_openat, AT_FDCWD, "/nonexistent/trg-at-event", O_RDONLY);
    asm volatile("" ::: "memory");
    return r;
}

static char vm_stack[64 * 1024] __attribute__((aligned(16)));

static int vm_child(void *arg)
{
    trg_marker((long)arg);
    _exit(0);
}

static size_t unhex(const char *s, unsigned char *out)
{
    size_t n = 0;
    while (s[0] && s[1] && n < MAXB - 1) {
        unsigned v;
        if (sscanf(s, "%2x", &v) != 1)
            break;
        out[n++] = (unsigned char)v;
        s += 2;
    }
    out[n] = 0;
    return n;
}

int main(void)
{
    int null = open("/dev/null", O_WRONLY);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0)
        return 1;
    printf("ready %d marker=%p\n", getpid(), (void *)trg_marker);
    fflush(stdout);
    static char line[3 * MAXB];
    static unsigned char a[MAXB], b[MAXB];
    char sa[2 * MAXB], sb[2 * MAXB];
    static char sink[MAXB];
    while (fgets(line, sizeof line, stdin)) {
        char cmd = 0;
        long n = 0, ret = 0;
        sa[0] = sb[0] = 0;
        sscanf(line, "%c %8191s %8191s", &cmd, sa, sb);
        size_t na = unhex(sa, a), nb = unhex(sb, b);
        errno = 0;
        switch (cmd) {
        case 'o': ret = syscall(SYS_openat, AT_FDCWD, (char *)a, O_RDONLY); if (ret >= 0) close((int)ret); break;
        case 'w': ret = write(null, a, na); break;
        case 'v': { struct iovec iov[2] = {{a, na}, {b, nb}}; ret = writev(null, iov, 2); break; }
        case 's': ret = sendto(sv[0], a, na, 0, NULL, 0); (void)!read(sv[1], sink, sizeof sink); break;
        case 'm': {
            struct iovec iov = {a, na};
            struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
            ret = sendmsg(sv[0], &mh, 0);
            (void)!read(sv[1], sink, sizeof sink);
            break;
        }
        case 'c': n = strtol(sa, NULL, 10); ret = trg_marker(n); break;
        case 'a': { n = strtol(sa, NULL, 10); void *p = malloc((size_t)n); ret = p != NULL; free(p); break; }
        case 'f': ret = trg_syscall_fn(); break;
        case 'k': {
            n = strtol(sa, NULL, 10);
            long ms = strtol(sb, NULL, 10);
            signal(SIGCHLD, SIG_IGN);  /* children are reaped by the kernel */
            pid_t c = fork();
            if (c == 0) {
                struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
                nanosleep(&t, NULL);
                trg_marker(n);
                _exit(0);
            }
            ret = c;
            break;
        }
        case 'u': {
            volatile long k[8];
            n = strtol(sa, NULL, 10);
            for (int i = 0; i < 8; i++)
                k[i] = n + i;
            DTRACE_PROBE8(trg, eight, k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]);
            ret = 0;
            break;
        }
        case 'V': {
            n = strtol(sa, NULL, 10);
            /* CLONE_VFORK: this thread waits until the child has exited */
            ret = clone(vm_child, vm_stack + sizeof vm_stack, CLONE_VM | CLONE_VFORK | SIGCHLD, (void *)n);
            if (ret > 0)
                waitpid((pid_t)ret, NULL, 0);
            break;
        }
        default: break;
        }
        int e = errno;
        printf("done %ld %ld %d\n", (long)syscall(SYS_gettid), ret, e);
        fflush(stdout);
    }
    return 0;
}
