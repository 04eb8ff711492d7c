/* log: stderr logging for programs (never called from library code).
 * Each line starts with a syslog priority prefix "<N>" so journald files it at
 * the right level when the daemon runs under systemd. */
#ifndef LOG_H
#define LOG_H

enum log_level { LOG_ERR = 3, LOG_WARNING = 4, LOG_NOTICE = 5, LOG_INFO = 6, LOG_DEBUG = 7 };

/* Messages above this level are dropped. Default LOG_INFO. */
void log_set_level(enum log_level level);
/* Parses "err|warning|notice|info|debug"; returns 0 or -EINVAL. */
int log_level_parse(const char *s, enum log_level *ret);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
