// tcppeer recv|send PORT [HOST]: both ends of the network tests' bulk transfers (busybox nc copies 1 KiB per system
// call: about 45 Mbit/s on the lab's TCG). Without HOST it listens on PORT (all addresses) and accepts one
// connection (the host's end); with HOST it connects to HOST:PORT (the guest's end). Then:
//   recv  copies the connection to stdout until the peer closes its sending half;
//   send  copies stdin to the connection, shuts its sending half down, and waits for the peer to close.
// 1 MiB buffers. Exit status 0 when everything was copied, 1 on an error (said on stderr). Static; no dependencies.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char buf[1 << 20];

static int copy(int from, int to) {
    for (;;) {
        ssize_t n = read(from, buf, sizeof buf);
        if (n == 0) return 0;
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("tcppeer: read");
            return 1;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(to, buf + off, (size_t)(n - off));
            if (w < 0) {
                if (errno == EINTR) continue;
                perror("tcppeer: write");
                return 1;
            }
            off += w;
        }
    }
}

int main(int argc, char **argv) {
    if ((argc != 3 && argc != 4) || (strcmp(argv[1], "recv") && strcmp(argv[1], "send"))) {
        fprintf(stderr, "usage: tcppeer recv|send PORT [HOST]\n");
        return 2;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    int s;
    if (argc == 4) {
        if (inet_pton(AF_INET, argv[3], &a.sin_addr) != 1) {
            fprintf(stderr, "tcppeer: not an IPv4 address: %s\n", argv[3]);
            return 2;
        }
        s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a)) {
            perror("tcppeer: connect");
            return 1;
        }
    } else {
        int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1)) {
            perror("tcppeer: listen");
            return 1;
        }
        s = accept(ls, NULL, NULL);
        if (s < 0) {
            perror("tcppeer: accept");
            return 1;
        }
        close(ls);
    }
    if (!strcmp(argv[1], "recv")) return copy(s, 1);
    int rc = copy(0, s);
    shutdown(s, SHUT_WR);
    while (read(s, buf, sizeof buf) > 0) {}
    return rc;
}
