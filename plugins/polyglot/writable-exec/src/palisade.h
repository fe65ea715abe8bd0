/* Small helpers over the generated bindings (build/gen/detector.h): span views, owned strings,
 * a string builder and alert lists. Everything a detector returns to the host must be on the
 * heap, because the generated post-return code frees it. */
#ifndef PALISADE_HELPERS_H
#define PALISADE_HELPERS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "detector.h"

typedef palisade_plugin_types_span_t span_t;

/* A view into a batch's string buffer: not NUL-terminated, use the length. */
typedef struct {
    const char *ptr;
    size_t len;
} str_t;

/* The text a span points at (the host guarantees it is in bounds and valid UTF-8). */
static inline str_t S(const detector_event_batch_t *b, span_t s) {
    return (str_t){(const char *)b->strings.ptr + s.offset, s.len};
}

static inline str_t str_c(const char *s) { return (str_t){s, strlen(s)}; }

static inline int str_eq(str_t a, str_t b) {
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static inline int str_starts_with(str_t s, str_t prefix) {
    return s.len >= prefix.len && (prefix.len == 0 || memcmp(s.ptr, prefix.ptr, prefix.len) == 0);
}

/* The part after the last '/'. */
static inline str_t str_basename(str_t s) {
    size_t i = s.len;
    while (i > 0 && s.ptr[i - 1] != '/') i--;
    return (str_t){s.ptr + i, s.len - i};
}

/* An owned (heap) copy, as the bindings' string type. */
static inline detector_string_t own_n(const char *s, size_t len) {
    detector_string_t out;
    detector_string_dup_n(&out, s, len);
    return out;
}
static inline detector_string_t own(const char *s) { return own_n(s, strlen(s)); }
static inline detector_string_t own_str(str_t s) { return own_n(s.ptr, s.len); }

/* A growable text buffer; `buf_take` hands its bytes over as an owned string. */
typedef struct {
    char *ptr;
    size_t len, cap;
} buf_t;

static inline void buf_put(buf_t *b, const char *s, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 128;
        while (cap < b->len + n) cap *= 2;
        b->ptr = realloc(b->ptr, cap);
        if (!b->ptr) abort();
        b->cap = cap;
    }
    if (n) memcpy(b->ptr + b->len, s, n);
    b->len += n;
}
static inline void buf_puts(buf_t *b, const char *s) { buf_put(b, s, strlen(s)); }
static inline void buf_str(buf_t *b, str_t s) { buf_put(b, s.ptr, s.len); }
static inline void buf_u32(buf_t *b, uint32_t v) {
    /* By hand: printf would pull in stdio, and with it WASI imports the sandbox has no use for. */
    char tmp[10];
    size_t n = 0;
    do {
        tmp[sizeof tmp - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    buf_put(b, tmp + sizeof tmp - n, n);
}
static inline detector_string_t buf_take(buf_t *b) {
    detector_string_t out = {(uint8_t *)b->ptr, b->len};
    if (!b->ptr) out = own("");
    *b = (buf_t){0};
    return out;
}

/* Appends a zeroed alert to `list` (capacity in *cap) and returns it. */
static inline detector_alert_t *alert_push(detector_list_alert_t *list, size_t *cap) {
    if (list->len == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        list->ptr = realloc(list->ptr, *cap * sizeof *list->ptr);
        if (!list->ptr) abort();
    }
    detector_alert_t *a = &list->ptr[list->len++];
    memset(a, 0, sizeof *a);
    return a;
}

static inline void alert_tag(detector_alert_t *a, const char *tag) {
    a->tags.ptr = realloc(a->tags.ptr, (a->tags.len + 1) * sizeof *a->tags.ptr);
    if (!a->tags.ptr) abort();
    a->tags.ptr[a->tags.len++] = own(tag);
}

static inline void alert_field(detector_alert_t *a, const char *key, detector_string_t value) {
    a->fields.ptr = realloc(a->fields.ptr, (a->fields.len + 1) * sizeof *a->fields.ptr);
    if (!a->fields.ptr) abort();
    a->fields.ptr[a->fields.len++] = (detector_tuple2_string_string_t){own(key), value};
}

/* The process's command line, arguments joined by spaces. */
static inline detector_string_t cmdline(const detector_event_batch_t *b,
                                        const palisade_plugin_types_list_span_t *args) {
    buf_t out = {0};
    for (size_t i = 0; i < args->len; i++) {
        if (i) buf_puts(&out, " ");
        buf_str(&out, S(b, args->ptr[i]));
    }
    return buf_take(&out);
}

/* Owned copies of a config text list (NUL-terminated), replacing *out (length in *n). */
static inline void text_list_copy(const detector_list_string_t *from, char ***out, size_t *n) {
    for (size_t i = 0; i < *n; i++) free((*out)[i]);
    free(*out);
    *out = calloc(from->len ? from->len : 1, sizeof **out);
    if (!*out) abort();
    for (size_t i = 0; i < from->len; i++) {
        (*out)[i] = strndup((const char *)from->ptr[i].ptr, from->ptr[i].len);
        if (!(*out)[i]) abort();
    }
    *n = from->len;
}

/* A config text-list value from a C array. */
static inline palisade_plugin_types_config_value_t text_list_value(const char *const *items,
                                                                    size_t n) {
    palisade_plugin_types_config_value_t v;
    v.tag = PALISADE_PLUGIN_TYPES_CONFIG_VALUE_TEXT_LIST;
    v.val.text_list.len = n;
    v.val.text_list.ptr = malloc((n ? n : 1) * sizeof(detector_string_t));
    if (!v.val.text_list.ptr) abort();
    for (size_t i = 0; i < n; i++) v.val.text_list.ptr[i] = own(items[i]);
    return v;
}

#endif
