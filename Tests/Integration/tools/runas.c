// runas UID GID CMD [ARG...]: run CMD as an unprivileged user with no supplementary groups, for tests of what an
// ordinary user sees (busybox's setpriv cannot change uids). Static; no dependencies.
#define _GNU_SOURCE
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: runas UID GID CMD [ARG...]\n");
        return 2;
    }
    uid_t uid = (uid_t)strtoul(argv[1], NULL, 10);
    gid_t gid = (gid_t)strtoul(argv[2], NULL, 10);
    if (setgroups(0, NULL) || setgid(gid) || setuid(uid)) {
        fprintf(stderr, "runas: cannot become %u:%u: %s\n", uid, gid, strerror(errno));
        return 126;
    }
    execvp(argv[3], argv + 3);
    fprintf(stderr, "runas: cannot run %s: %s\n", argv[3], strerror(errno));
    return 127;
}
