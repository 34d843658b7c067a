// tcppeer: both ends of the network tests' bulk transfers and of the benchmark's request/response latency.
//   tcppeer recv|send PORT [HOST]   (busybox nc copies 1 KiB per system call: about 45 Mbit/s on the lab's TCG)
//     Without HOST it listens on PORT (all addresses) and accepts one connection (the host's end); with HOST it
//     connects to HOST:PORT (the guest's end). Then:
//       recv  copies the connection to stdout until the peer closes its sending half;
//       send  copies stdin to the connection, shuts its sending half down, and waits for the peer to close.
//     1 MiB buffers. Exit status 0 when everything was copied, 1 on an error (said on stderr).
//   tcppeer echo PORT
//     Listens on PORT and serves connections one after another, sending back every byte it gets, until killed.
//   tcppeer rr PORT HOST [TRIPS [SIZE]]
//     Connects to an echo peer and times TRIPS (default 1000) request/response round trips of a SIZE-byte message
//     (1 to 64, default 1; TCP_NODELAY on both ends), after 20 untimed ones, each from the write of the request to
//     the last byte of the response (CLOCK_MONOTONIC). Prints
//       rr: trips=N size=S median_us=M p10_us=A p90_us=B min_us=C
//     (microseconds, one decimal). Exit status 0 when every trip completed.
// Static; no dependencies.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
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

static void nodelay(int s) {
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int listen_on(struct sockaddr_in *a) {
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (ls < 0) return -1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)a, sizeof *a) || listen(ls, 4)) {
        close(ls);
        return -1;
    }
    return ls;
}

// echo: every byte back, connection after connection.
static int echo(struct sockaddr_in *a) {
    int ls = listen_on(a);
    if (ls < 0) {
        perror("tcppeer: listen");
        return 1;
    }
    for (;;) {
        int s = accept(ls, NULL, NULL);
        if (s < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            perror("tcppeer: accept");
            return 1;
        }
        nodelay(s);
        for (;;) {
            ssize_t n = read(s, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            ssize_t off = 0;
            while (off < n) {
                ssize_t w = write(s, buf + off, (size_t)(n - off));
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) break;
                off += w;
            }
            if (off < n) break;
        }
        close(s);
    }
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int by_value(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

// One request of `size` bytes out, the same number back; 0 on success.
static int round_trip(int s, size_t size) {
    static char message[64];
    for (size_t off = 0; off < size;) {
        ssize_t w = write(s, message + off, size - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        off += (size_t)w;
    }
    for (size_t got = 0; got < size;) {
        ssize_t n = read(s, buf, size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        got += (size_t)n;
    }
    return 0;
}

static int request_response(int s, int trips, size_t size) {
    double *samples = calloc((size_t)trips, sizeof *samples);
    if (!samples) return 1;
    nodelay(s);
    for (int i = 0; i < 20; i++)
        if (round_trip(s, size)) {
            perror("tcppeer: round trip");
            return 1;
        }
    for (int i = 0; i < trips; i++) {
        double t0 = now_us();
        if (round_trip(s, size)) {
            fprintf(stderr, "tcppeer: round trip %d of %d failed: %s\n", i + 1, trips, strerror(errno));
            return 1;
        }
        samples[i] = now_us() - t0;
    }
    qsort(samples, (size_t)trips, sizeof *samples, by_value);
    double median = trips % 2 ? samples[trips / 2] : (samples[trips / 2 - 1] + samples[trips / 2]) / 2;
    printf("rr: trips=%d size=%zu median_us=%.1f p10_us=%.1f p90_us=%.1f min_us=%.1f\n", trips, size, median,
           samples[trips / 10], samples[trips * 9 / 10], samples[0]);
    return 0;
}

int main(int argc, char **argv) {
    int rr = argc >= 4 && argc <= 6 && !strcmp(argv[1], "rr");
    int echoing = argc == 3 && !strcmp(argv[1], "echo");
    if (!rr && !echoing && ((argc != 3 && argc != 4) || (strcmp(argv[1], "recv") && strcmp(argv[1], "send")))) {
        fprintf(stderr, "usage: tcppeer recv|send PORT [HOST] | echo PORT | rr PORT HOST [TRIPS [SIZE]]\n");
        return 2;
    }
    int trips = argc >= 5 ? atoi(argv[4]) : 1000, size = argc >= 6 ? atoi(argv[5]) : 1;
    if (rr && (trips < 1 || trips > 1000000 || size < 1 || size > 64)) {
        fprintf(stderr, "tcppeer: rr takes 1 to 1000000 trips of 1 to 64 bytes\n");
        return 2;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    if (echoing) return echo(&a);
    int s;
    if (argc >= 4) {
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
        int ls = listen_on(&a);
        if (ls < 0) {
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
    if (rr) return request_response(s, trips, (size_t)size);
    if (!strcmp(argv[1], "recv")) return copy(s, 1);
    int rc = copy(0, s);
    shutdown(s, SHUT_WR);
    while (read(s, buf, sizeof buf) > 0) {}
    return rc;
}
