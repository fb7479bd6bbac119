/*
 * pause: the CRI sandbox process. It holds the pod's namespaces open and, as
 * PID 1 of a shared PID namespace, reaps orphaned zombies. Same behaviour as
 * Kubernetes' build/pause/linux/pause.c: sleep forever, reap children, exit 0
 * on SIGINT or SIGTERM, print the version with -v. Built statically
 * (gcc -static) so that the image is FROM scratch.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef VERSION
#define VERSION "turnpike"
#endif

static void sigdown(int signo) {
    psignal(signo, "Shutting down, got signal");
    exit(0);
}

static void sigreap(int signo) {
    (void)signo;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; ++i) {
        if (!strcasecmp(argv[i], "-v")) {
            printf("pause.c %s\n", VERSION);
            return 0;
        }
    }

    if (getpid() != 1) {
        /* Not an error: the process still works, it just reaps nothing. */
        fprintf(stderr, "Warning: pause should be the first process\n");
    }

    struct sigaction down = {.sa_handler = sigdown};
    sigemptyset(&down.sa_mask);
    if (sigaction(SIGINT, &down, NULL) < 0) return 1;
    if (sigaction(SIGTERM, &down, NULL) < 0) return 2;

    struct sigaction reap = {.sa_handler = sigreap, .sa_flags = SA_NOCLDSTOP};
    sigemptyset(&reap.sa_mask);
    if (sigaction(SIGCHLD, &reap, NULL) < 0) return 3;

    for (;;) pause();
    fprintf(stderr, "Error: infinite loop terminated\n");
    return 42;
}
