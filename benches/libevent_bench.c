/*
 * libevent 2.1 side of the dispatch comparison: libevent's test/bench.c
 * method, written again so that it prints the same numbers as
 * benches/dispatch.rs (median and best microseconds per round).
 *
 *   gcc -O2 -o libevent_bench benches/libevent_bench.c \
 *       $(pkg-config --cflags --libs libevent)
 *   ./libevent_bench BACKEND N [ACTIVE] [WRITES] [ROUNDS] [noreadd]
 *
 * BACKEND is epoll, epoll_changelist, poll or select (the others are
 * avoided with event_config_avoid_method; the environment is ignored).
 *
 * N socket pairs, each read end with a persistent read event whose callback
 * reads one byte and, while writes remain, writes one byte to the next pair.
 * A round re-adds every event and runs one non-blocking turn (untimed), then
 * writes one byte to ACTIVE pairs spread over the N and times
 * EVLOOP_ONCE | EVLOOP_NONBLOCK turns until every byte written is read.
 */
#include <event2/event.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int num_pipes, num_active, num_writes;
static int *pipes;
static long count, fired, writes, failures;

static void read_cb(evutil_socket_t fd, short which, void *arg)
{
	intptr_t idx = (intptr_t)arg, widx = idx + 1;
	unsigned char ch;
	ssize_t n;
	(void)which;

	n = recv(fd, (char *)&ch, sizeof(ch), 0);
	if (n >= 0)
		count += n;
	else
		failures++;
	if (writes) {
		if (widx >= num_pipes)
			widx -= num_pipes;
		n = send(pipes[2 * widx + 1], "e", 1, 0);
		if (n != 1)
			failures++;
		writes--;
		fired++;
	}
}

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	const char *backend, *method;
	int rounds, i, r, space, readd;
	struct event_config *cfg;
	struct event_base *base;
	struct event **events;
	struct rlimit rl;
	double *us;

	if (argc < 3) {
		fprintf(stderr, "usage: %s BACKEND N [ACTIVE] [WRITES] [ROUNDS] [noreadd]\n", argv[0]);
		return 2;
	}
	backend = argv[1];
	num_pipes = atoi(argv[2]);
	num_active = argc > 3 ? atoi(argv[3]) : 100;
	num_writes = argc > 4 ? atoi(argv[4]) : 100;
	rounds = argc > 5 ? atoi(argv[5]) : 25;
	/* "noreadd": keep the events added between rounds (profiling). */
	readd = !(argc > 6 && strcmp(argv[6], "noreadd") == 0);
	if (num_active > num_pipes)
		num_active = num_pipes;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	cfg = event_config_new();
	event_config_set_flag(cfg, EVENT_BASE_FLAG_IGNORE_ENV);
	method = strcmp(backend, "epoll_changelist") == 0 ? "epoll" : backend;
	if (strcmp(method, "epoll") != 0)
		event_config_avoid_method(cfg, "epoll");
	if (strcmp(method, "poll") != 0)
		event_config_avoid_method(cfg, "poll");
	if (strcmp(method, "select") != 0)
		event_config_avoid_method(cfg, "select");
	if (strcmp(backend, "epoll_changelist") == 0)
		event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	/* 2.1 names the changelist mode "epoll (with changelist)". */
	if (!base || strncmp(event_base_get_method(base), method, strlen(method)) != 0) {
		fprintf(stderr, "could not get backend %s\n", backend);
		return 1;
	}

	/*
	 * libevent's select.c grows its fd sets past FD_SETSIZE, but it fills
	 * them with FD_SET, and glibc's _FORTIFY_SOURCE check (Debian builds
	 * libevent with it) aborts on any fd >= FD_SETSIZE.
	 */
	if (strcmp(method, "select") == 0 && 2 * num_pipes + 16 >= FD_SETSIZE) {
		fprintf(stderr, "libevent select: fds reach %d >= FD_SETSIZE (%d); glibc's fortified FD_SET aborts\n",
		    2 * num_pipes + 16, FD_SETSIZE);
		printf("RESULT libevent %s %d n/a n/a\n", backend, num_pipes);
		return 0;
	}

	pipes = calloc(2 * num_pipes, sizeof(int));
	events = calloc(num_pipes, sizeof(struct event *));
	us = calloc(rounds, sizeof(double));
	if (!pipes || !events || !us)
		return 1;
	for (i = 0; i < num_pipes; i++) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, &pipes[2 * i]) == -1) {
			fprintf(stderr, "socketpair %d: %s\n", i, strerror(errno));
			return 1;
		}
		events[i] = event_new(base, pipes[2 * i], EV_READ | EV_PERSIST, read_cb, (void *)(intptr_t)i);
	}

	space = num_pipes / num_active;
	for (r = 0; r < rounds; r++) {
		double start;
		for (i = 0; i < num_pipes; i++) {
			if (readd || r == 0) {
				event_del(events[i]);
				event_add(events[i], NULL);
			}
		}
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		fired = 0;
		for (i = 0; i < num_active; i++, fired++)
			if (send(pipes[2 * (i * space) + 1], "e", 1, 0) != 1)
				failures++;
		count = 0;
		writes = num_writes;
		start = now_us();
		do {
			event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		} while (count != fired);
		us[r] = now_us() - start;
	}
	if (failures) {
		fprintf(stderr, "%ld failed reads/writes\n", failures);
		return 1;
	}
	qsort(us, rounds, sizeof(double), cmp_double);
	printf("RESULT libevent %s %d %.1f %.1f\n", backend, num_pipes, us[rounds / 2], us[0]);

	for (i = 0; i < num_pipes; i++) {
		event_free(events[i]);
		close(pipes[2 * i]);
		close(pipes[2 * i + 1]);
	}
	event_base_free(base);
	return 0;
}
