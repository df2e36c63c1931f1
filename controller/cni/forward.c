/* Native forwarder for the tabby CNI plugin: a pod's ADD/DEL/CHECK without a Python start.
 *
 * Why: the container runtime starts a plugin process per call and waits for it. A Python start is
 * ~10 ms of CPU at best (bare `python3 -I -S`), more than the reference ptp plugin's whole ADD on a
 * loaded node; this program starts in well under 1 ms. It does no CNI work of its own: it passes
 * the call unparsed (CNI_* / K8S_* environment and the netconf text) to the node agent, which
 * answers with the Python plugin's own code (controller/cni/plugin.py `conversation`: the same
 * validation, error codes and messages, result shapes) and this program copies that answer out.
 *
 * Everything else is the Python plugin's, exactly (exec of tabby-py beside this file, with the
 * original stdin and arguments):
 *   - a command other than ADD, DEL, CHECK (VERSION, GC, STATUS, unknown or unset);
 *   - a netconf that is not a JSON object, names a timeout, or an agent_socket/nodename that is not
 *     a plain string (escapes, empty, another type);
 *   - no agent socket that accepts a connection (the Python plugin then answers code 11 naming the
 *     sockets it tried), or an agent that does not know forwarded calls (its reply is JSON).
 * Once the call reached an agent that knows it, the answers that can only come from here:
 *   - no answer within 30 s (the plugin's default timeout): code 11, as the Python plugin words it;
 *   - connection closed without an answer: code 11, likewise.
 * Standard C and Linux only; built by manifests/cni/install.sh when a C compiler is present.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_STDIN (4 << 20)
#define MAX_REPLY (16 << 20)
#define TIMEOUT_S 30

extern char **environ;

static char *in_buf;
static size_t in_len;
static char **saved_argv;

struct buf { char *p; size_t n, cap; };

static void put(struct buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 4096);
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { perror("tabby: realloc"); exit(1); }
        b->p = p; b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* A JSON string literal of s (bytes >= 0x80 pass through: the agent decodes UTF-8). */
static void put_json_str(struct buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') { char e[2] = {'\\', (char)c}; put(b, e, 2); }
        else if (c < 0x20) { char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]}; put(b, e, 6); }
        else put(b, (const char *)&c, 1);
    }
    put(b, "\"", 1);
}

/* Run the Python plugin instead, with the stdin already read put back. Never returns. */
static void fallback(void) {
    char self[4096], path[4200];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) { n = 0; }
    self[n] = 0;
    char *slash = strrchr(self, '/');
    if (slash) *slash = 0; else strcpy(self, ".");
    snprintf(path, sizeof path, "%s/tabby-py", self);
    if (in_buf) {
        int fd = memfd_create("tabby-cni-stdin", 0);
        if (fd >= 0) {
            size_t off = 0;
            while (off < in_len) {
                ssize_t w = write(fd, in_buf + off, in_len - off);
                if (w <= 0) break;
                off += (size_t)w;
            }
            lseek(fd, 0, SEEK_SET);
            dup2(fd, 0);
            if (fd != 0) close(fd);
        }
    }
    /* argv[0] keeps the name the runtime used (tabby or tabby-ipam): the mode. */
    const char *name = strrchr(saved_argv[0], '/');
    name = name ? name + 1 : saved_argv[0];
    const char *mode = strlen(name) >= 4 && strcmp(name + strlen(name) - 4, "ipam") == 0 ? "tabby-ipam" : "tabby";
    if (saved_argv[1] && (strcmp(saved_argv[1], "tabby") == 0 || strcmp(saved_argv[1], "tabby-ipam") == 0))
        mode = saved_argv[1];
    char *args[] = {path, (char *)mode, NULL};
    execv(path, args);
    printf("{\"cniVersion\": \"1.0.0\", \"code\": 999, \"msg\": \"tabby plugin internal error: cannot run %s: %s\", "
           "\"details\": \"\"}\n", path, strerror(errno));
    exit(1);
}

/* ---- just enough JSON to find the top-level keys of one object ------------------------------- */
static size_t skip_ws(const char *s, size_t i, size_t n) {
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    return i;
}

static size_t skip_string(const char *s, size_t i, size_t n) { /* s[i] == '"'; -> index after closing quote */
    for (i++; i < n; i++) {
        if (s[i] == '\\') { i++; continue; }
        if (s[i] == '"') return i + 1;
    }
    return 0;
}

static size_t skip_value(const char *s, size_t i, size_t n) { /* 0 on malformed input */
    i = skip_ws(s, i, n);
    if (i >= n) return 0;
    if (s[i] == '"') return skip_string(s, i, n);
    if (s[i] == '{' || s[i] == '[') {
        int depth = 0;
        for (; i < n; i++) {
            if (s[i] == '"') { size_t j = skip_string(s, i, n); if (!j) return 0; i = j - 1; }
            else if (s[i] == '{' || s[i] == '[') depth++;
            else if (s[i] == '}' || s[i] == ']') { if (--depth == 0) return i + 1; }
        }
        return 0;
    }
    while (i < n && !strchr(",}] \t\n\r", s[i])) i++;
    return i;
}

/* A plain JSON string value (no escapes, not empty) into out; 0 otherwise. */
static int plain_string(const char *s, size_t start, size_t end, char *out, size_t cap) {
    if (s[start] != '"' || end - start < 3 || end - start - 2 >= cap) return 0;
    if (memchr(s + start + 1, '\\', end - start - 2)) return 0;
    memcpy(out, s + start + 1, end - start - 2);
    out[end - start - 2] = 0;
    return 1;
}

/* 1: stdin is one object with none of the keys the forwarder cannot honour; version, agent_socket
 * and nodename filled (the last two empty when absent). */
static int scan_netconf(const char *s, size_t n, char *version, size_t vcap, char *sock, char *node, size_t cap) {
    static const char *supported[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", NULL};
    static const char *refused[] = {"timeout", NULL};
    size_t i = skip_ws(s, 0, n);
    if (i >= n || s[i] != '{') return 0;
    i = skip_ws(s, i + 1, n);
    if (i < n && s[i] == '}') return skip_ws(s, i + 1, n) == n;
    for (;;) {
        if (i >= n || s[i] != '"') return 0;
        size_t kend = skip_string(s, i, n);
        if (!kend) return 0;
        const char *key = s + i + 1;
        size_t klen = kend - i - 2;
        for (int r = 0; refused[r]; r++)
            if (klen == strlen(refused[r]) && memcmp(key, refused[r], klen) == 0) return 0;
        i = skip_ws(s, kend, n);
        if (i >= n || s[i] != ':') return 0;
        size_t vstart = skip_ws(s, i + 1, n);
        size_t vend = skip_value(s, vstart, n);
        if (!vend) return 0;
        if (klen == 12 && memcmp(key, "agent_socket", 12) == 0 && !plain_string(s, vstart, vend, sock, cap)) return 0;
        if (klen == 8 && memcmp(key, "nodename", 8) == 0 && !plain_string(s, vstart, vend, node, cap)) return 0;
        if (klen == 10 && memcmp(key, "cniVersion", 10) == 0) {
            strcpy(version, "1.0.0"); /* the last cniVersion counts, as in json.loads */
            for (int v = 0; supported[v]; v++) {
                size_t len = strlen(supported[v]);
                if (s[vstart] == '"' && vend - vstart == len + 2 && memcmp(s + vstart + 1, supported[v], len) == 0 && len < vcap)
                    strcpy(version, supported[v]);
            }
        }
        i = skip_ws(s, vend, n);
        if (i < n && s[i] == ',') { i = skip_ws(s, i + 1, n); continue; }
        if (i < n && s[i] == '}') return skip_ws(s, i + 1, n) == n;
        return 0;
    }
}

static int try_connect(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) return -1;
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct timeval tv = {.tv_sec = TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { close(fd); return -1; }
    return fd;
}

static void error_out(const char *version, const char *msg, const char *details) {
    struct buf b = {0};
    puts_(&b, "{\"cniVersion\": ");
    put_json_str(&b, version, strlen(version));
    puts_(&b, ", \"code\": 11, \"msg\": ");
    put_json_str(&b, msg, strlen(msg));
    puts_(&b, ", \"details\": ");
    put_json_str(&b, details, strlen(details));
    puts_(&b, "}\n");
    fwrite(b.p, 1, b.n, stdout);
    exit(1);
}

int main(int argc, char **argv) {
    (void)argc;
    saved_argv = argv;
    const char *cmd = getenv("CNI_COMMAND");
    if (!cmd || (strcmp(cmd, "ADD") && strcmp(cmd, "DEL") && strcmp(cmd, "CHECK"))) fallback();

    struct buf in = {0};
    char chunk[65536];
    for (;;) {
        ssize_t r = read(0, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        put(&in, chunk, (size_t)r);
        if (in.n > MAX_STDIN) break;
    }
    in_buf = in.p ? in.p : "";
    in_len = in.n;
    char version[16] = "1.0.0", sock[4096] = "", node[4096] = "";
    if (in.n > MAX_STDIN || memchr(in_buf, 0, in_len)
        || !scan_netconf(in_buf, in_len, version, sizeof version, sock, node, sizeof sock))
        fallback();

    const char *root = getenv("TABBY_RUN_ROOT");
    if (!root || !*root) root = "/run/tabby";
    char paths[2][4200];
    int npaths = 0;
    struct stat ns;
    /* The plugin's order (plugin.py candidate_sockets): agent_socket; nodename; by-netns, agent.sock. */
    if (*sock) {
        snprintf(paths[npaths++], sizeof paths[0], "%s", sock);
    } else if (*node) {
        if (node[0] == '/') snprintf(paths[npaths++], sizeof paths[0], "%s/agent.sock", node);
        else snprintf(paths[npaths++], sizeof paths[0], "%s/%s/agent.sock", root, node);
    } else {
        if (stat("/proc/self/ns/net", &ns) == 0)
            snprintf(paths[npaths++], sizeof paths[0], "%s/by-netns/%llu.sock", root, (unsigned long long)ns.st_ino);
        snprintf(paths[npaths++], sizeof paths[0], "%s/agent.sock", root);
    }
    int fd = -1;
    const char *path = NULL;
    for (int i = 0; i < npaths && fd < 0; i++) {
        fd = try_connect(paths[i]);
        path = paths[i];
    }
    if (fd < 0) fallback();

    const char *mode = "tabby";
    const char *name = strrchr(argv[0], '/');
    name = name ? name + 1 : argv[0];
    if (strlen(name) >= 4 && strcmp(name + strlen(name) - 4, "ipam") == 0) mode = "tabby-ipam";
    if (argv[1] && (strcmp(argv[1], "tabby") == 0 || strcmp(argv[1], "tabby-ipam") == 0)) mode = argv[1];

    struct buf req = {0};
    puts_(&req, "{\"forwarded\": 1, \"mode\": ");
    put_json_str(&req, mode, strlen(mode));
    puts_(&req, ", \"env\": {");
    int first = 1;
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "CNI_", 4) && strncmp(*e, "K8S_", 4)) continue;
        const char *eq = strchr(*e, '=');
        if (!eq) continue;
        if (!first) puts_(&req, ", ");
        first = 0;
        put_json_str(&req, *e, (size_t)(eq - *e));
        puts_(&req, ": ");
        put_json_str(&req, eq + 1, strlen(eq + 1));
    }
    puts_(&req, "}, \"stdin\": ");
    put_json_str(&req, in_buf, in_len);
    puts_(&req, "}\n");
    for (size_t off = 0; off < req.n;) {
        ssize_t w = send(fd, req.p + off, req.n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) fallback(); /* nothing was received by the agent: the Python plugin tries again */
        off += (size_t)w;
    }

    struct buf rep = {0};
    for (;;) {
        ssize_t r = recv(fd, chunk, sizeof chunk, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            char msg[4400];
            snprintf(msg, sizeof msg, "the tabby node agent at %s did not answer within %ds", path, TIMEOUT_S);
            error_out(version, msg, "try again later");
        }
        if (r <= 0) break;
        put(&rep, chunk, (size_t)r);
        if (rep.n > MAX_REPLY) break;
    }
    close(fd);
    if (rep.n == 0) {
        char msg[4400];
        snprintf(msg, sizeof msg, "the tabby node agent at %s closed the connection without an answer", path);
        error_out(version, msg, "");
    }
    if (rep.p[0] == '{') fallback(); /* an agent without forwarded calls: it refused this one, did nothing */
    char *nl = memchr(rep.p, '\n', rep.n);
    if (!nl || nl == rep.p) {
        char msg[4400];
        snprintf(msg, sizeof msg, "the tabby node agent at %s closed the connection without an answer", path);
        error_out(version, msg, "");
    }
    int code = atoi(rep.p);
    fwrite(nl + 1, 1, rep.n - (size_t)(nl + 1 - rep.p), stdout);
    return code;
}
