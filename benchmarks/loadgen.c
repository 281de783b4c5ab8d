/*
 * loadgen: a small native gRPC load generator for benchmarks/serve_load.py (`--generator native`).
 *
 * Why: on a 2-core machine the load generator shares the cores with the server. A Python gRPC
 * client spends 0.4-0.6 ms of CPU per call, a third of the machine at 1,000 calls/s; this one
 * spends a few microseconds, so the figures measure the server, as with ghz or h2load on
 * another host.
 *
 * What it speaks: gRPC unary calls over cleartext HTTP/2 (prior knowledge) on N TCP connections,
 * one epoll loop, one thread. Requests are serialised protobuf messages read from a file
 * (uint32 little-endian length, then the bytes), sent in turn. It asks the server for an HPACK
 * dynamic table of size 0, so every response header arrives as a static index or a literal and
 * the trailers (grpc-status and the server's own metadata) can be read without table state.
 * Huffman-coded values are not decoded; they are reported as unknown (-1).
 *
 * Modes:
 *   open:   `level` calls per second on a fixed schedule; latency counts from the scheduled send
 *           time, so falling behind is not hidden (no coordinated omission);
 *   closed: `level` calls in flight; each completion sends the next.
 * A call counts when it is scheduled (sent, in closed mode) within [start + warmup, + duration).
 *
 * Each call carries a grpc-timeout of --timeout seconds; calls still unanswered --timeout seconds
 * after the last send are given up.
 *
 * Output: --out FILE gets one record per counted call (float latency ms, float send time in seconds
 * from the start of the measured window (the scheduled time in open loop), int32 server time us,
 * int32 worker pid, int32 items in the answer, int32 status: gRPC status code, or -1 no status
 * read, -2 stream reset, -3 connection lost, -4 unanswered at the deadline, -5 not sent: too many
 * in flight), int32 degraded stages listed in the answer (e.g. `overload`: a fallback pipeline
 * served it). stdout gets one JSON line: calls sent, CPU seconds used over the measured window
 * and its length.
 *
 * Build: gcc -O2 -o loadgen benchmarks/loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { F_DATA = 0, F_HEADERS = 1, F_RST = 3, F_SETTINGS = 4, F_PING = 6, F_GOAWAY = 7, F_WINDOW = 8,
       F_CONTINUATION = 9 };
enum { FL_END_STREAM = 0x1, FL_ACK = 0x1, FL_END_HEADERS = 0x4, FL_PADDED = 0x8, FL_PRIORITY = 0x20 };
enum { ST_NONE = -1, ST_RESET = -2, ST_LOST = -3, ST_DEADLINE = -4, ST_NOT_SENT = -5 };

typedef struct {
    double scheduled;   /* latency counts from here (monotonic seconds); the latency once done */
    double sent;        /* the same send time, kept */
    int conn;
    int done, counted;
    int status, server_us, pid, items, degraded;
    unsigned char *msg; /* response message bytes as they arrive (usually one DATA frame) */
    size_t msg_len;
} Call;

typedef struct {
    unsigned char *p;
    size_t len, cap;
} Buf;

typedef struct {
    int fd, alive, ready;
    int headers_indexed; /* the request headers are in the server's HPACK table */
    uint32_t next_stream;
    Buf out;            /* bytes not yet written */
    size_t out_off;
    Buf in;             /* bytes read, not yet parsed */
    int64_t send_window; /* connection-level flow control for our DATA */
    int64_t recv_unacked; /* DATA bytes received since the last WINDOW_UPDATE we sent */
    int *call_of_stream; /* (stream id - 1) / 2 -> call index */
    size_t streams_cap;
    Buf hdr;            /* header block being assembled (HEADERS + CONTINUATION) */
    uint32_t hdr_stream;
    int hdr_end_stream;
    int *waiting;       /* calls queued for send window */
    size_t n_waiting, waiting_cap;
    int in_flight;
} Conn;

static Call *calls;
static size_t n_calls, calls_cap;
static Conn *conns;
static int n_conns;
static unsigned char **req_bytes;
static uint32_t *req_len;
static size_t n_reqs;
static const char *path = "/hybridrec.v1.Recommender/Recommend";
static char authority[64];
static char grpc_timeout[32]; /* the deadline header, e.g. "5000m" */
static int in_flight_total;

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, errno ? strerror(errno) : "failed");
    exit(2);
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static void *grow(void *p, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return p;
    size_t cap2 = *cap ? *cap : 64;
    while (cap2 < need) cap2 *= 2;
    p = realloc(p, cap2 * size);
    if (!p) die("out of memory");
    *cap = cap2;
    return p;
}

static void buf_put(Buf *b, const void *data, size_t n) {
    b->p = grow(b->p, &b->cap, b->len + n, 1);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void frame_header(Buf *b, uint32_t len, int type, int flags, uint32_t stream) {
    unsigned char h[9] = {len >> 16, len >> 8, len, type, flags, (stream >> 24) & 0x7f, stream >> 16, stream >> 8,
                          stream};
    buf_put(b, h, 9);
}

/* HPACK string literal, raw (not Huffman), length < 127 */
static void hpack_str(Buf *b, const char *s) {
    unsigned char n = (unsigned char)strlen(s);
    buf_put(b, &n, 1);
    buf_put(b, s, n);
}

/* ------------------------------------------------------------------ HPACK decoding (table size 0) */

static int hpack_int(const unsigned char **p, const unsigned char *end, int prefix, uint64_t *out) {
    if (*p >= end) return -1;
    uint64_t max = (1u << prefix) - 1, v = **p & max;
    (*p)++;
    if (v < max) { *out = v; return 0; }
    int shift = 0;
    while (*p < end) {
        unsigned char c = *(*p)++;
        v += (uint64_t)(c & 0x7f) << shift;
        shift += 7;
        if (!(c & 0x80)) { *out = v; return 0; }
        if (shift > 56) return -1;
    }
    return -1;
}

/* a string literal: sets *s to its bytes (NULL if Huffman-coded, which this decoder skips) */
static int hpack_string(const unsigned char **p, const unsigned char *end, const unsigned char **s, size_t *n) {
    if (*p >= end) return -1;
    int huffman = **p & 0x80;
    uint64_t len;
    if (hpack_int(p, end, 7, &len) || len > (uint64_t)(end - *p)) return -1;
    *s = huffman ? NULL : *p;
    *n = len;
    *p += len;
    return 0;
}

static int parse_small_int(const unsigned char *s, size_t n) {
    if (!s || n == 0 || n > 9) return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static int name_is(const unsigned char *s, size_t n, const char *want) {
    return s && n == strlen(want) && memcmp(s, want, n) == 0;
}

/* reads grpc-status and the server's metadata from a header block into the call */
static int decode_headers(const unsigned char *p, size_t len, Call *c) {
    const unsigned char *end = p + len;
    while (p < end) {
        unsigned char b = *p;
        uint64_t index;
        if (b & 0x80) { /* indexed field: static entries only carry nothing we read */
            if (hpack_int(&p, end, 7, &index)) return -1;
            continue;
        }
        if ((b & 0xe0) == 0x20) { /* dynamic table size update */
            if (hpack_int(&p, end, 5, &index)) return -1;
            continue;
        }
        int prefix = (b & 0xc0) == 0x40 ? 6 : 4; /* with indexing : without / never indexed */
        if (hpack_int(&p, end, prefix, &index)) return -1;
        const unsigned char *name = NULL, *value;
        size_t name_len = 0, value_len;
        if (index == 0 && hpack_string(&p, end, &name, &name_len)) return -1;
        if (hpack_string(&p, end, &value, &value_len)) return -1;
        if (index != 0) continue; /* an indexed name: a standard header, not one of ours */
        if (name_is(name, name_len, "grpc-status")) c->status = parse_small_int(value, value_len);
        else if (name_is(name, name_len, "hybridrec-server-time-us")) c->server_us = parse_small_int(value, value_len);
        else if (name_is(name, name_len, "hybridrec-worker-pid")) c->pid = parse_small_int(value, value_len);
    }
    return 0;
}

/* number of top-level field-1 entries (RecommendResponse.items) in a protobuf message, and in
 * *degraded the number of field-4 entries (RecommendResponse.degraded_stages) */
static int count_items(const unsigned char *p, size_t len, int *degraded) {
    const unsigned char *end = p + len;
    int items = 0;
    *degraded = 0;
    while (p < end) {
        uint64_t key = 0, v = 0;
        int shift = 0;
        do { if (p >= end) return -1; key |= (uint64_t)(*p & 0x7f) << shift; shift += 7; } while (*p++ & 0x80);
        switch (key & 7) {
        case 0: do { if (p >= end) return -1; } while (*p++ & 0x80); break;
        case 1: p += 8; break;
        case 5: p += 4; break;
        case 2:
            shift = 0;
            do { if (p >= end) return -1; v |= (uint64_t)(*p & 0x7f) << shift; shift += 7; } while (*p++ & 0x80);
            if (v > (uint64_t)(end - p)) return -1;
            p += v;
            if ((key >> 3) == 1) items++;
            else if ((key >> 3) == 4) (*degraded)++;
            break;
        default: return -1;
        }
    }
    return p == end ? items : -1;
}

/* ------------------------------------------------------------------ connections */

static void conn_flush(Conn *c) {
    while (c->alive && c->out_off < c->out.len) {
        ssize_t n = write(c->fd, c->out.p + c->out_off, c->out.len - c->out_off);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return; /* EPOLLOUT brings us back */
            c->alive = 0;
            return;
        }
        c->out_off += (size_t)n;
    }
    c->out.len = c->out_off = 0;
}

static void finish(int idx, int status, double now) {
    Call *c = &calls[idx];
    if (c->done) return;
    c->done = 1;
    if (status != 0) c->status = status; /* else the grpc-status read from the trailers, if any */
    c->degraded = 0;
    c->items = c->msg ? (c->msg_len >= 5 ? count_items(c->msg + 5, c->msg_len - 5, &c->degraded) : -1) : 0;
    free(c->msg);
    c->msg = NULL;
    c->scheduled = now - c->scheduled; /* from here on: latency, seconds */
    conns[c->conn].in_flight--;
    in_flight_total--;
}

static void send_call(Conn *c, int idx) {
    size_t r = (size_t)idx % n_reqs;
    uint32_t body = req_len[r] + 5;
    if (c->send_window < body || c->n_waiting) { /* wait for the server's WINDOW_UPDATE */
        c->waiting = grow(c->waiting, &c->waiting_cap, c->n_waiting + 1, sizeof(int));
        c->waiting[c->n_waiting++] = idx;
        return;
    }
    uint32_t stream = c->next_stream;
    c->next_stream += 2;
    size_t slot = (stream - 1) / 2;
    c->call_of_stream = grow(c->call_of_stream, &c->streams_cap, slot + 1, sizeof(int));
    c->call_of_stream[slot] = idx;
    Buf h = {0};
    unsigned char fixed[] = {0x83, 0x86}; /* :method POST, :scheme http (static table) */
    buf_put(&h, fixed, 2);
    if (c->headers_indexed) { /* the five entries the first call put in the server's table: 62..66 */
        unsigned char indexed[] = {0x80 | 66, 0x80 | 65, 0x80 | 64, 0x80 | 63, 0x80 | 62};
        buf_put(&h, indexed, sizeof indexed);
    } else { /* literals with incremental indexing, as gRPC clients send them */
        unsigned char b = 0x40 | 4; /* :path (static name 4) */
        buf_put(&h, &b, 1);
        hpack_str(&h, path);
        b = 0x40 | 1; /* :authority */
        buf_put(&h, &b, 1);
        hpack_str(&h, authority);
        b = 0x40 | 31; /* content-type */
        buf_put(&h, &b, 1);
        hpack_str(&h, "application/grpc");
        b = 0x40; /* new names */
        buf_put(&h, &b, 1);
        hpack_str(&h, "te");
        hpack_str(&h, "trailers");
        buf_put(&h, &b, 1); /* the call's deadline, as a gRPC client sends it */
        hpack_str(&h, "grpc-timeout");
        hpack_str(&h, grpc_timeout);
        c->headers_indexed = 1;
    }
    frame_header(&c->out, (uint32_t)h.len, F_HEADERS, FL_END_HEADERS, stream);
    buf_put(&c->out, h.p, h.len);
    free(h.p);
    frame_header(&c->out, body, F_DATA, FL_END_STREAM, stream);
    unsigned char prefix[5] = {0, req_len[r] >> 24, req_len[r] >> 16, req_len[r] >> 8, req_len[r]};
    buf_put(&c->out, prefix, 5);
    buf_put(&c->out, req_bytes[r], req_len[r]);
    c->send_window -= body;
}

static int call_for(Conn *c, uint32_t stream) {
    if (!(stream & 1) || stream >= c->next_stream) return -1;
    size_t slot = (stream - 1) / 2;
    return slot < c->streams_cap ? c->call_of_stream[slot] : -1;
}

static void conn_lost(Conn *c, double now) {
    c->alive = 0;
    for (size_t s = 0; s < (c->next_stream - 1) / 2; s++) {
        int idx = c->call_of_stream[s];
        if (!calls[idx].done) finish(idx, ST_LOST, now);
    }
    for (size_t i = 0; i < c->n_waiting; i++) finish(c->waiting[i], ST_LOST, now);
    c->n_waiting = 0;
}

static void on_frame(Conn *c, int type, int flags, uint32_t stream, const unsigned char *p, uint32_t len, double now) {
    switch (type) {
    case F_DATA: {
        c->recv_unacked += len;
        if (flags & FL_PADDED) {
            if (len < 1 || p[0] >= len) return;
            len -= 1 + p[0];
            p += 1;
        }
        int idx = call_for(c, stream);
        if (idx >= 0 && !calls[idx].done) {
            Call *call = &calls[idx];
            call->msg = realloc(call->msg, call->msg_len + len);
            memcpy(call->msg + call->msg_len, p, len);
            call->msg_len += len;
            if (flags & FL_END_STREAM) finish(idx, 0, now);
        }
        break;
    }
    case F_HEADERS:
    case F_CONTINUATION:
        if (type == F_HEADERS) {
            c->hdr.len = 0;
            c->hdr_stream = stream;
            c->hdr_end_stream = flags & FL_END_STREAM;
            if (flags & FL_PADDED) {
                if (len < 1 || p[0] >= len) return;
                len -= 1 + p[0];
                p += 1;
            }
            if (flags & FL_PRIORITY) {
                if (len < 5) return;
                p += 5;
                len -= 5;
            }
        }
        buf_put(&c->hdr, p, len);
        if (flags & FL_END_HEADERS) {
            int idx = call_for(c, c->hdr_stream);
            if (idx >= 0 && !calls[idx].done) {
                decode_headers(c->hdr.p, c->hdr.len, &calls[idx]);
                if (c->hdr_end_stream) finish(idx, 0, now);
            }
        }
        break;
    case F_RST: {
        int idx = call_for(c, stream);
        if (idx >= 0) finish(idx, ST_RESET, now);
        break;
    }
    case F_SETTINGS:
        if (!(flags & FL_ACK)) {
            frame_header(&c->out, 0, F_SETTINGS, FL_ACK, 0);
            c->ready = 1;
        }
        break;
    case F_PING:
        if (!(flags & FL_ACK) && len == 8) {
            frame_header(&c->out, 8, F_PING, FL_ACK, 0);
            buf_put(&c->out, p, 8);
        }
        break;
    case F_GOAWAY:
        conn_lost(c, now);
        break;
    case F_WINDOW:
        if (stream == 0 && len == 4) {
            c->send_window += ((uint32_t)(p[0] & 0x7f) << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
            size_t queued = c->n_waiting;
            int *q = malloc(queued * sizeof(int) + 1);
            memcpy(q, c->waiting, queued * sizeof(int));
            c->n_waiting = 0;
            for (size_t i = 0; i < queued; i++) send_call(c, q[i]);
            free(q);
        }
        break;
    default:
        break;
    }
}

static void conn_read(Conn *c, double now) {
    for (;;) {
        c->in.p = grow(c->in.p, &c->in.cap, c->in.len + 65536, 1);
        ssize_t n = read(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len);
        if (n == 0) { conn_lost(c, now); break; }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            conn_lost(c, now);
            break;
        }
        c->in.len += (size_t)n;
        if ((size_t)n < 65536) break;
    }
    size_t off = 0;
    while (c->in.len - off >= 9) {
        const unsigned char *h = c->in.p + off;
        uint32_t len = (h[0] << 16) | (h[1] << 8) | h[2];
        if (c->in.len - off < 9 + (size_t)len) break;
        uint32_t stream = ((uint32_t)(h[5] & 0x7f) << 24) | (h[6] << 16) | (h[7] << 8) | h[8];
        on_frame(c, h[3], h[4], stream, h + 9, len, now);
        off += 9 + len;
    }
    memmove(c->in.p, c->in.p + off, c->in.len - off);
    c->in.len -= off;
    if (c->recv_unacked > (1 << 20)) { /* give the connection window back */
        uint32_t inc = (uint32_t)c->recv_unacked;
        unsigned char w[4] = {(inc >> 24) & 0x7f, inc >> 16, inc >> 8, inc};
        frame_header(&c->out, 4, F_WINDOW, 0, 0);
        buf_put(&c->out, w, 4);
        c->recv_unacked = 0;
    }
}

static int conn_open(Conn *c, const char *host, int port) {
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) die("socket");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) die("--host must be an IPv4 address");
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr)) die("connect");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    c->alive = 1;
    c->next_stream = 1;
    c->send_window = 65535;
    buf_put(&c->out, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
    /* SETTINGS: HEADER_TABLE_SIZE 0, ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 4 MiB */
    unsigned char settings[] = {0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 4, 0, 0x40, 0, 0};
    frame_header(&c->out, sizeof settings, F_SETTINGS, 0, 0);
    buf_put(&c->out, settings, sizeof settings);
    uint32_t inc = (1u << 30) - 65535; /* connection window to 1 GiB */
    unsigned char w[4] = {inc >> 24, inc >> 16, inc >> 8, inc};
    frame_header(&c->out, 4, F_WINDOW, 0, 0);
    buf_put(&c->out, w, 4);
    conn_flush(c);
    return c->fd;
}

static int new_call(double scheduled, int conn) {
    calls = grow(calls, &calls_cap, n_calls + 1, sizeof(Call));
    Call *c = &calls[n_calls];
    memset(c, 0, sizeof *c);
    c->scheduled = c->sent = scheduled;
    c->conn = conn;
    c->status = c->server_us = c->pid = ST_NONE;
    return (int)n_calls++;
}

/* the next live connection from `start` on, or -1 */
static int live_conn(int start) {
    for (int i = 0; i < n_conns; i++) {
        int j = (start + i) % n_conns;
        if (conns[j].alive) return j;
    }
    return -1;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P --requests FILE --out FILE --mode open|closed --level L\n"
            "               [--host 127.0.0.1] [--connections 64] [--warmup 2] [--duration 10]\n"
            "               [--start-at UNIX_TIME] [--timeout 10] [--max-in-flight 2000] [--path P]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *requests = NULL, *out = NULL, *mode = NULL;
    int port = 0, max_in_flight = 2000;
    double level = 0, warmup = 2, duration = 10, start_at = 0, timeout = 10;
    n_conns = 64;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--requests")) requests = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--mode")) mode = v;
        else if (!strcmp(a, "--level")) level = atof(v);
        else if (!strcmp(a, "--connections")) n_conns = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "--start-at")) start_at = atof(v);
        else if (!strcmp(a, "--timeout")) timeout = atof(v);
        else if (!strcmp(a, "--max-in-flight")) max_in_flight = atoi(v);
        else if (!strcmp(a, "--path")) path = v;
        else usage();
        i++;
    }
    int open_loop = mode && !strcmp(mode, "open");
    if (!port || !requests || !out || !mode || (!open_loop && strcmp(mode, "closed")) || level <= 0 || n_conns < 1)
        usage();
    signal(SIGPIPE, SIG_IGN);
    snprintf(authority, sizeof authority, "%s:%d", host, port);
    snprintf(grpc_timeout, sizeof grpc_timeout, "%ldm", (long)(timeout * 1000));

    FILE *f = fopen(requests, "rb");
    if (!f) die(requests);
    size_t cap = 0, len_cap = 0;
    uint32_t n;
    while (fread(&n, 4, 1, f) == 1) { /* little-endian length, then the message */
        req_bytes = grow(req_bytes, &cap, n_reqs + 1, sizeof *req_bytes);
        req_len = grow(req_len, &len_cap, n_reqs + 1, sizeof *req_len);
        req_bytes[n_reqs] = malloc(n ? n : 1);
        if (n && fread(req_bytes[n_reqs], 1, n, f) != n) die("truncated requests file");
        req_len[n_reqs++] = n;
    }
    fclose(f);
    if (!n_reqs) { errno = 0; die("no requests in the requests file"); }

    int ep = epoll_create1(0);
    conns = calloc((size_t)n_conns, sizeof(Conn));
    for (int i = 0; i < n_conns; i++) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, conn_open(&conns[i], host, port), &ev)) die("epoll_ctl");
    }
    struct epoll_event events[256];
    double t_connect = mono();
    for (int ready = 0; ready < n_conns;) { /* the server's SETTINGS on every connection */
        if (mono() - t_connect > 30) { errno = 0; die("server did not answer the HTTP/2 preface in 30 s"); }
        int k = epoll_wait(ep, events, 256, 100);
        for (int e = 0; e < k; e++) {
            Conn *c = &conns[events[e].data.u32];
            conn_read(c, mono());
            conn_flush(c);
        }
        ready = 0;
        for (int i = 0; i < n_conns; i++) ready += conns[i].ready;
    }
    if (start_at > 0) { /* a shared start time, so the caller can measure the same window */
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        double wait = start_at - (now.tv_sec + now.tv_nsec * 1e-9);
        if (wait > 0) {
            struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    double t0 = mono(), measure_from = t0 + warmup, end = measure_from + duration;
    double cpu0 = -1, interval = open_loop ? 1.0 / level : 0;
    long next = 0;       /* open loop: the next scheduled call */
    long counter = 0;    /* calls made: picks the request and the connection */
    int slots = open_loop ? 0 : (int)level;

    for (;;) {
        double now = mono();
        if (cpu0 < 0 && now >= measure_from) cpu0 = cpu_seconds();
        if (open_loop) {
            while (t0 + next * interval <= now && t0 + next * interval < end) {
                double sched = t0 + next * interval;
                int ci = live_conn((int)(next % n_conns));
                next++;
                int idx = new_call(sched, ci < 0 ? 0 : ci);
                calls[idx].counted = sched >= measure_from && sched < end;
                if (ci < 0 || in_flight_total >= max_in_flight) {
                    calls[idx].done = 1;
                    calls[idx].status = ci < 0 ? ST_LOST : ST_NOT_SENT;
                    calls[idx].scheduled = 0;
                    continue;
                }
                conns[ci].in_flight++;
                in_flight_total++;
                counter++;
                send_call(&conns[ci], idx);
            }
        } else {
            while (slots > 0 && now < end) {
                int ci = live_conn((int)(counter % n_conns));
                if (ci < 0) break;
                int idx = new_call(now, ci);
                calls[idx].counted = now >= measure_from;
                conns[ci].in_flight++;
                in_flight_total++;
                counter++;
                slots--;
                send_call(&conns[ci], idx);
            }
        }
        for (int i = 0; i < n_conns; i++) conn_flush(&conns[i]);
        int sending_done = open_loop ? t0 + next * interval >= end : now >= end;
        if (sending_done && in_flight_total == 0) break;
        if (now > end + timeout) break;
        double wake = end + timeout;
        if (open_loop && !sending_done) wake = t0 + next * interval;
        if (cpu0 < 0 && measure_from < wake) wake = measure_from;
        double wait = wake - now;
        if (wait < 0) wait = 0;
        struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
        int k = epoll_pwait2(ep, events, 256, &ts, NULL);
        if (k < 0 && errno != EINTR) die("epoll_pwait2");
        now = mono();
        for (int e = 0; e < k; e++) {
            Conn *c = &conns[events[e].data.u32];
            if (!c->alive) continue;
            int before = in_flight_total;
            if (events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) conn_read(c, now);
            if (!open_loop) slots += before - in_flight_total; /* each completion frees a slot */
        }
    }
    double t_end = mono();
    double cpu = cpu0 < 0 ? 0 : cpu_seconds() - cpu0;
    for (size_t i = 0; i < n_calls; i++)
        if (!calls[i].done) {
            calls[i].done = 1;
            calls[i].status = ST_DEADLINE;
            calls[i].scheduled = t_end - calls[i].scheduled;
        }

    FILE *o = fopen(out, "wb");
    if (!o) die(out);
    long counted = 0;
    for (size_t i = 0; i < n_calls; i++) {
        if (!calls[i].counted) continue;
        float times[2] = {(float)(calls[i].scheduled * 1000.0), (float)(calls[i].sent - measure_from)};
        int32_t rec[5] = {calls[i].server_us, calls[i].pid, calls[i].items, calls[i].status, calls[i].degraded};
        fwrite(times, 4, 2, o);
        fwrite(rec, 4, 5, o);
        counted++;
    }
    fclose(o);
    printf("{\"sent\": %ld, \"counted\": %ld, \"cpu_seconds\": %.4f, \"window_seconds\": %.4f}\n", counter, counted,
           cpu, t_end - (cpu0 < 0 ? t_end : measure_from));
    return 0;
}
