/* args: command-line value parsing shared by the programs. */
#ifndef ARGS_H
#define ARGS_H

/* Parses a whole decimal integer in [lo, hi] into *out; -EINVAL otherwise
 * (empty, trailing characters, overflow, out of range). */
int args_parse_long(const char *s, long lo, long hi, long *out);

#endif
