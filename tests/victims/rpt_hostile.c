/* Stacks an unwinder must survive: one thread whose frame-pointer chain is a cycle (the saved
 * frame pointer points at itself, the return address back into the same function), one whose
 * stack and frame pointer are garbage, both parked in a raw pause(2) so that no libc frame
 * helps. Prints "ready" once both are parked (the main thread then waits in pause too). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile int parked;
static unsigned long garbage[4096];

__attribute__((noinline)) void rpt_cyclic_frames(void) {
    __sync_fetch_and_add(&parked, 1);
    __asm__ volatile(
        "sub $64, %%rsp\n\t"
        "mov %%rsp, %%rbp\n\t"
        "mov %%rbp, 0(%%rbp)\n\t"     /* saved rbp = this frame */
        "lea 1f(%%rip), %%rax\n\t"
        "mov %%rax, 8(%%rbp)\n\t"     /* return address = here again */
        "1: mov $34, %%eax\n\t"       /* SYS_pause */
        "syscall\n\t"
        "jmp 1b\n\t" ::: "rax", "rcx", "r11", "memory");
}

__attribute__((noinline)) void rpt_garbage_stack(void) {
    for (unsigned i = 0; i < sizeof garbage / sizeof garbage[0]; i++)
        garbage[i] = 0x4141414141414141UL ^ ((unsigned long)rand() << 17) ^ (unsigned long)rand();
    __sync_fetch_and_add(&parked, 1);
    __asm__ volatile(
        "mov %0, %%rsp\n\t"
        "mov $0xdeadbeefcafef00d, %%rbp\n\t"
        "1: mov $34, %%eax\n\t"
        "syscall\n\t"
        "jmp 1b\n\t" :: "r"(&garbage[2048]) : "rax", "rcx", "r11", "memory");
}

static void *cyclic(void *a) { (void)a; rpt_cyclic_frames(); return NULL; }
static void *junk(void *a) { (void)a; rpt_garbage_stack(); return NULL; }

int main(void) {
    pthread_t t1, t2;
    pthread_create(&t1, NULL, cyclic, NULL);
    pthread_create(&t2, NULL, junk, NULL);
    while (parked < 2) usleep(1000);
    usleep(20000);  /* both into their syscall */
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
