/*
 * Test-rig launcher for QEMU's multiprocess mode, which needs an
 * orchestrator: creates a socketpair, runs REMOTE with one end as fd 3 and
 * PROXY with the other as fd 4 (both through /bin/sh -c), forwards SIGTERM
 * and SIGINT to both, and when PROXY exits stops REMOTE and exits with
 * PROXY's status.
 *
 * usage: pairexec 'REMOTE COMMAND' 'PROXY COMMAND'
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t remote_pid, proxy_pid;

static void forward(int sig)
{
    if (remote_pid > 0)
        kill(remote_pid, sig);
    if (proxy_pid > 0)
        kill(proxy_pid, sig);
}

static pid_t run(const char *cmd, int sock, int target, int other)
{
    pid_t pid = fork();
    if (pid == 0) {
        close(other);
        if (dup2(sock, target) < 0)
            _exit(127);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

int main(int argc, char **argv)
{
    int sv[2];
    if (argc != 3) {
        fprintf(stderr, "usage: %s 'REMOTE COMMAND' 'PROXY COMMAND'\n", argv[0]);
        return 2;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) {
        perror("socketpair");
        return 1;
    }
    signal(SIGTERM, forward);
    signal(SIGINT, forward);
    remote_pid = run(argv[1], sv[0], 3, sv[1]);
    proxy_pid = run(argv[2], sv[1], 4, sv[0]);
    close(sv[0]);
    close(sv[1]);
    int status = 0;
    while (waitpid(proxy_pid, &status, 0) < 0)
        ;
    kill(remote_pid, SIGTERM);
    waitpid(remote_pid, NULL, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
