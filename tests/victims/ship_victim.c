/* A victim for the bundle tests: two threads parked in distinctively named functions.
 * ship_victim [TAG]: prints "ready", then waits on stdin ('q' exits). TAG changes the text (and
 * so the build-id) when compiled with -DTAG=..., to make "the same path, another binary". */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#ifndef TAG
#define TAG "one"
#endif

const char ship_victim_tag[] = TAG;
static volatile int worker_in = 0;

__attribute__((noinline)) static void *ship_victim_worker_wait(void *arg) {
    (void)arg;
    __atomic_store_n(&worker_in, 1, __ATOMIC_SEQ_CST); /* its frame is on the stack from here */
    for (;;)
        pause();
    return NULL;
}

__attribute__((noinline)) static int ship_victim_leaf_wait(void) {
    char c = 0;
    while (!__atomic_load_n(&worker_in, __ATOMIC_SEQ_CST))
        usleep(1000);
    printf("ready %s\n", ship_victim_tag);
    fflush(stdout);
    while (read(0, &c, 1) == 1 && c != 'q')
        ;
    return c;
}

__attribute__((noinline)) static int ship_victim_middle(void) { return ship_victim_leaf_wait() + 1; }

int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, ship_victim_worker_wait, NULL);
    return ship_victim_middle() == 0;
}
