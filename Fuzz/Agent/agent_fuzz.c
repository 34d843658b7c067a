/* The guest agent's EXEC payload parser (guest/agent/agent.c: parse_exec), the one parser of host-written bytes in
 * the guest agent: argc, the argument strings, envc, KEY=VALUE entries merged into the defaults, the working
 * directory and the flags, all length-prefixed. The agent's source is included whole, its main renamed, so what is
 * fuzzed is exactly what runs in the guest. */
#define main agent_main
#include "../../guest/agent/agent.c"
#undef main

static int inside(const void *p, const uint8_t *start, size_t len)
{
    return (const uint8_t *)p >= start && (const uint8_t *)p <= start + len;
}

static int is_default(const char *entry)
{
    for (size_t i = 0; i < DEFAULT_ENVC; i++)
        if (entry == default_env[i])
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The agent parses a payload of at most MAX_FRAME bytes, in a buffer of its own that it may rewrite. */
    if (size > MAX_FRAME)
        return -1;
    uint8_t *payload = malloc(size ? size : 1);
    memcpy(payload, data, size);
    struct exec_request req = {0};
    const char *why = NULL;
    if (parse_exec(payload, size, &req, &why) == 0) {
        if (req.argv == NULL || req.argv[0] == NULL || req.envp == NULL || req.cwd == NULL)
            abort();
        size_t argc = 0;
        for (; req.argv[argc] != NULL; argc++) {
            if (argc >= MAX_ARGC || !inside(req.argv[argc], payload, size) ||
                !inside(req.argv[argc] + strlen(req.argv[argc]), payload, size))
                abort(); /* a string outside the payload, or more strings than the limit */
        }
        for (size_t i = 0; req.envp[i] != NULL; i++) {
            if (i >= DEFAULT_ENVC + MAX_ENVC)
                abort();
            const char *entry = req.envp[i];
            if (!is_default(entry) && !inside(entry, payload, size))
                abort();
            const char *eq = strchr(entry, '=');
            if (eq == NULL || eq == entry)
                abort(); /* every entry is KEY=VALUE */
            for (size_t j = 0; j < i; j++)
                if (key_length(req.envp[j]) == (size_t)(eq - entry) && memcmp(req.envp[j], entry, (size_t)(eq - entry)) == 0)
                    abort(); /* a KEY appears once */
        }
        if (req.flags & ~EXEC_FLAGS_KNOWN)
            abort();
    } else if (why == NULL) {
        abort(); /* a refusal always says why (it becomes the ERROR frame's text) */
    }
    free(req.argv);
    free(req.envp);
    free(payload);
    return 0;
}
