/* kvedge C ABI. Every function here is exported by libkvedge_ffi (cdylib and staticlib).
 * Ownership and threading are stated per function. */
#ifndef KVEDGE_H
#define KVEDGE_H

#ifdef __cplusplus
extern "C" {
#endif

/* The library version, NUL-terminated, static: do not free. Any thread. */
const char *kvedge_version(void);

#ifdef __cplusplus
}
#endif

#endif /* KVEDGE_H */
