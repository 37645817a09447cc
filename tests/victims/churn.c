/* Threads are born and die all the time: a test of race-free thread enumeration.
 * Prints "ready" once churning. */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static void *short_life(void *arg) { (void)arg; return NULL; }

static void *spawner(void *arg) {
    (void)arg;
    for (;;) {
        pthread_t t;
        if (pthread_create(&t, NULL, short_life, NULL) == 0) pthread_join(t, NULL);
    }
    return NULL;
}

int main(void) {
    pthread_t s[2];
    for (int i = 0; i < 2; i++) pthread_create(&s[i], NULL, spawner, NULL);
    printf("ready\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) == 1) {}
    return 0;
}
