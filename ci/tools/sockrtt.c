/*
 * Round trip of one 32-byte record over a SOCK_SEQPACKET socketpair between
 * two processes: the floor under any out-of-process register access. Run it
 * pinned (taskset -c 0) to measure the same-CPU case the VMM benchmarks use,
 * or give two CPUs to put the pinging process on the first and the
 * answering one on the second.
 * usage: sockrtt [COUNT [PING_CPU ANSWER_CPU]]   prints "sockrtt_ns=N"
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0) {
        perror("sched_setaffinity");
        exit(1);
    }
}

int main(int argc, char **argv)
{
    long count = argc > 1 ? atol(argv[1]) : 100000;
    int pinned = argc > 3;
    if (pinned)
        pin(atoi(argv[2]));
    int sv[2];
    char buf[32] = {0};
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) < 0) {
        perror("socketpair");
        return 1;
    }
    pid_t child = fork();
    if (child == 0) {
        if (pinned)
            pin(atoi(argv[3]));
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
