/*
 * Round trip of one 32-byte record over a SOCK_SEQPACKET socketpair between
 * two processes: the floor under any out-of-process register access. Run it
 * pinned (taskset -c 0) to measure the same-CPU case the VMM benchmarks use.
 * usage: sockrtt [COUNT]   prints "sockrtt_ns=N"
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long count = argc > 1 ? atol(argv[1]) : 100000;
    int sv[2];
    char buf[32] = {0};
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) < 0) {
        perror("socketpair");
        return 1;
    }
    pid_t child = fork();
    if (child == 0) {
        close(sv[0]);
        while (recv(sv[1], buf, sizeof buf, 0) == sizeof buf)
            if (send(sv[1], buf, sizeof buf, 0) != sizeof buf)
                break;
        _exit(0);
    }
    close(sv[1]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < count; i++) {
        if (send(sv[0], buf, sizeof buf, 0) != sizeof buf || recv(sv[0], buf, sizeof buf, 0) != sizeof buf) {
            perror("ping");
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    close(sv[0]);
    waitpid(child, NULL, 0);
    long ns = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
    printf("sockrtt_ns=%ld\n", ns / count);
    return 0;
}
