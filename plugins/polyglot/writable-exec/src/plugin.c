/* writable-exec: a Palisade detector written in C (wit-bindgen C + clang-19 + wasi-libc).
 *
 * | rule id | what | priority | MITRE |
 * |---|---|---|---|
 * | `exec-from-writable-dir` | a program executed from a world-writable directory (/tmp, /var/tmp, /dev/shm) | warning (error as root) | T1204.002 |
 * | `exec-hidden-in-writable-dir` | the same, from a hidden file or directory there (`/tmp/.x/run`, `/dev/shm/.a`) | error | T1564.001 |
 *
 * Droppers write their payload where any user can write and run it from there; hiding it
 * behind a dot name is the next step. Build tools that legitimately run binaries from /tmp
 * (go test, AppImages) are allowed by path prefix or parent program through the config. */
#include "palisade.h"

static const char *const DEFAULT_DIRS[] = {"/tmp/", "/var/tmp/", "/dev/shm/"};
static const char *const DEFAULT_ALLOWED_PREFIXES[] = {"/tmp/go-build", "/tmp/.mount_"};
static const char *const DEFAULT_ALLOWED_PARENTS[] = {"go", "cargo", "rustc"};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Configuration, set by init. */
static char **dirs, **allowed_prefixes, **allowed_parents;
static size_t n_dirs, n_allowed_prefixes, n_allowed_parents;
static int configured;

static palisade_plugin_types_tuple2_string_config_value_t cfg_entry(const char *key,
                                                                    const char *const *items,
                                                                    size_t n) {
    return (palisade_plugin_types_tuple2_string_config_value_t){own(key), text_list_value(items, n)};
}

void exports_detector_describe(detector_plugin_info_t *ret) {
    memset(ret, 0, sizeof *ret);
    ret->name = own("writable-exec");
    ret->version = own("0.1.0");
    ret->kind = PALISADE_PLUGIN_TYPES_PLUGIN_KIND_DETECTOR;
    ret->description = own("Programs executed from world-writable directories, hidden ones above all (C)");
    /* Every exec: the directories are configurable, so the subscription cannot narrow them. */
    palisade_plugin_types_subscription_t *sub = calloc(1, sizeof *sub);
    if (!sub) abort();
    sub->kinds.ptr = malloc(sizeof *sub->kinds.ptr);
    if (!sub->kinds.ptr) abort();
    sub->kinds.ptr[0] = PALISADE_PLUGIN_TYPES_EVENT_KIND_EXEC;
    sub->kinds.len = 1;
    ret->subscriptions.ptr = sub;
    ret->subscriptions.len = 1;
    palisade_plugin_types_tuple2_string_config_value_t *cfg = calloc(3, sizeof *cfg);
    if (!cfg) abort();
    cfg[0] = cfg_entry("dirs", DEFAULT_DIRS, COUNT(DEFAULT_DIRS));
    cfg[1] = cfg_entry("allowed-prefixes", DEFAULT_ALLOWED_PREFIXES, COUNT(DEFAULT_ALLOWED_PREFIXES));
    cfg[2] = cfg_entry("allowed-parents", DEFAULT_ALLOWED_PARENTS, COUNT(DEFAULT_ALLOWED_PARENTS));
    ret->default_config.ptr = cfg;
    ret->default_config.len = 3;
}

static void set_defaults(void) {
    detector_list_string_t l;
    l = text_list_value(DEFAULT_DIRS, COUNT(DEFAULT_DIRS)).val.text_list;
    text_list_copy(&l, &dirs, &n_dirs);
    detector_list_string_free(&l);
    l = text_list_value(DEFAULT_ALLOWED_PREFIXES, COUNT(DEFAULT_ALLOWED_PREFIXES)).val.text_list;
    text_list_copy(&l, &allowed_prefixes, &n_allowed_prefixes);
    detector_list_string_free(&l);
    l = text_list_value(DEFAULT_ALLOWED_PARENTS, COUNT(DEFAULT_ALLOWED_PARENTS)).val.text_list;
    text_list_copy(&l, &allowed_parents, &n_allowed_parents);
    detector_list_string_free(&l);
    configured = 1;
}

bool exports_detector_init(detector_config_t *config, detector_string_t *err) {
    bool ok = true;
    set_defaults();
    for (size_t i = 0; ok && i < config->len; i++) {
        str_t key = {(const char *)config->ptr[i].f0.ptr, config->ptr[i].f0.len};
        palisade_plugin_types_config_value_t *v = &config->ptr[i].f1;
        char ***target = NULL;
        size_t *count = NULL;
        if (str_eq(key, str_c("dirs"))) {
            target = &dirs, count = &n_dirs;
        } else if (str_eq(key, str_c("allowed-prefixes"))) {
            target = &allowed_prefixes, count = &n_allowed_prefixes;
        } else if (str_eq(key, str_c("allowed-parents"))) {
            target = &allowed_parents, count = &n_allowed_parents;
        }
        buf_t msg = {0};
        if (!target) {
            buf_puts(&msg, "unknown config key `");
            buf_str(&msg, key);
            buf_puts(&msg, "` (known: dirs, allowed-prefixes, allowed-parents)");
        } else if (v->tag != PALISADE_PLUGIN_TYPES_CONFIG_VALUE_TEXT_LIST) {
            buf_puts(&msg, "config key `");
            buf_str(&msg, key);
            buf_puts(&msg, "`: expected a list of strings");
        } else {
            text_list_copy(&v->val.text_list, target, count);
            if (target == &dirs) {
                for (size_t d = 0; d < n_dirs; d++) {
                    size_t len = strlen(dirs[d]);
                    if (dirs[d][0] != '/' || dirs[d][len - 1] != '/') {
                        buf_puts(&msg, "config key `dirs`: every entry must be an absolute path ending in /");
                        break;
                    }
                }
            }
        }
        if (msg.len) {
            *err = buf_take(&msg);
            ok = false;
        }
    }
    palisade_plugin_types_config_free(config);
    return ok;
}

/* True when a path component below `dir` starts with a dot. */
static int hidden_below(str_t path, size_t dir_len) {
    for (size_t i = dir_len; i < path.len; i++) {
        if (path.ptr[i] == '.' && (i == dir_len || path.ptr[i - 1] == '/')) return 1;
    }
    return 0;
}

static void num_field(detector_alert_t *a, const char *key, uint32_t v) {
    buf_t num = {0};
    buf_u32(&num, v);
    alert_field(a, key, buf_take(&num));
}

static void check(const detector_event_batch_t *b, const palisade_plugin_types_process_t *proc,
                  const palisade_plugin_types_exec_data_t *exec, uint32_t index,
                  detector_list_alert_t *ret, size_t *cap) {
    str_t filename = S(b, exec->filename);
    const char *dir = NULL;
    for (size_t d = 0; d < n_dirs && !dir; d++) {
        if (str_starts_with(filename, str_c(dirs[d]))) dir = dirs[d];
    }
    if (!dir) return;
    for (size_t i = 0; i < n_allowed_prefixes; i++) {
        if (str_starts_with(filename, str_c(allowed_prefixes[i]))) return;
    }
    str_t parent = proc->ancestors.len > 0 ? S(b, proc->ancestors.ptr[0].comm) : str_c("");
    for (size_t i = 0; i < n_allowed_parents; i++) {
        if (str_eq(parent, str_c(allowed_parents[i]))) return;
    }
    int hidden = hidden_below(filename, strlen(dir));
    detector_alert_t *a = alert_push(ret, cap);
    a->event_index = index;
    if (hidden) {
        a->rule = own("exec-hidden-in-writable-dir");
        a->priority = PALISADE_PLUGIN_TYPES_PRIORITY_ERROR;
        alert_tag(a, "T1564.001");
        alert_tag(a, "mitre_defense_evasion");
    } else {
        a->rule = own("exec-from-writable-dir");
        a->priority = proc->euid == 0 ? PALISADE_PLUGIN_TYPES_PRIORITY_ERROR
                                      : PALISADE_PLUGIN_TYPES_PRIORITY_WARNING;
    }
    alert_tag(a, "T1204.002");
    alert_tag(a, "mitre_execution");

    detector_string_t args = cmdline(b, &exec->args);
    str_t container = proc->container_id.is_some ? S(b, proc->container_id.val) : str_c("host");
    buf_t msg = {0};
    buf_puts(&msg, hidden ? "Hidden program executed from world-writable " : "Program executed from world-writable ");
    buf_puts(&msg, dir);
    buf_puts(&msg, ": ");
    buf_str(&msg, filename);
    buf_puts(&msg, " (pid ");
    buf_u32(&msg, proc->pid);
    buf_puts(&msg, ", uid ");
    buf_u32(&msg, proc->uid);
    buf_puts(&msg, ", parent ");
    buf_str(&msg, parent.len ? parent : str_c("?"));
    buf_puts(&msg, ", cmdline \"");
    buf_put(&msg, (const char *)args.ptr, args.len);
    buf_puts(&msg, "\", container ");
    buf_str(&msg, container);
    buf_puts(&msg, ")");
    a->message = buf_take(&msg);

    alert_field(a, "filename", own_str(filename));
    alert_field(a, "dir", own(dir));
    num_field(a, "proc.pid", proc->pid);
    num_field(a, "proc.ppid", proc->ppid);
    alert_field(a, "proc.exe", own_str(S(b, proc->exe)));
    alert_field(a, "proc.name", own_str(S(b, proc->comm)));
    alert_field(a, "proc.cmdline", args);
    alert_field(a, "proc.pname", own_str(parent));
    num_field(a, "user.uid", proc->uid);
    alert_field(a, "container.id", own_str(container));
}

void exports_detector_on_events(detector_event_batch_t *batch, detector_list_alert_t *ret) {
    size_t cap = 0;
    *ret = (detector_list_alert_t){0};
    if (!configured) set_defaults();
    for (size_t i = 0; i < batch->events.len; i++) {
        palisade_plugin_types_event_t *ev = &batch->events.ptr[i];
        if (ev->data.tag != PALISADE_PLUGIN_TYPES_EVENT_DATA_EXEC) continue;
        check(batch, &batch->processes.ptr[ev->process], &ev->data.val.exec, (uint32_t)i, ret, &cap);
    }
    palisade_plugin_types_event_batch_free(batch);
}
