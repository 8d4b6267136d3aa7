/*
 * What the machine charges for the system calls a socket fan-out makes, without Node in the way:
 *   1. a null system call (getppid);
 *   2. a 100-byte write on a loopback TCP connection whose reader is not waiting (it drains now and then);
 *   3. the same write when the reader is asleep in epoll_wait in another process, so that every write wakes it:
 *      what a gateway pays per socket when its clients share the machine and have caught up.
 * The presence fan-out sends one such write per socket and its clients make the matching reads, so these set a
 * floor under the fan-out's cost per delivery on a machine (docs/BENCHMARKS.md, "Presence at 10,000 sockets:
 * what the machine charges per delivery").
 *
 *   gcc -O2 -o /tmp/syscall-cost bench/platform/syscall-cost.c && /tmp/syscall-cost
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

/* A connected loopback pair: *writer (TCP_NODELAY, as ws sets it) and *reader. */
static void loopback_pair(int *writer, int *reader) {
	int listener = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in address = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t length = sizeof address;
	bind(listener, (struct sockaddr *)&address, sizeof address);
	listen(listener, 1);
	getsockname(listener, (struct sockaddr *)&address, &length);
	*reader = socket(AF_INET, SOCK_STREAM, 0);
	connect(*reader, (struct sockaddr *)&address, sizeof address);
	*writer = accept(listener, NULL, NULL);
	int one = 1;
	setsockopt(*writer, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	close(listener);
}

static double null_syscall_ns(void) {
	const int calls = 1000000;
	double start = now_ns();
	for (int i = 0; i < calls; i++) syscall(SYS_getppid);
	return (now_ns() - start) / calls;
}

static double write_reader_not_waiting_ns(void) {
	int writer, reader;
	loopback_pair(&writer, &reader);
	char frame[100], drained[65536];
	memset(frame, 'x', sizeof frame);
	const int writes = 200000;
	double spent = 0;
	for (int i = 0; i < writes; i++) {
		double start = now_ns();
		if (write(writer, frame, sizeof frame) != sizeof frame) return -1;
		spent += now_ns() - start;
		if (i % 100 == 99) while (recv(reader, drained, sizeof drained, MSG_DONTWAIT) > 0) {}
	}
	close(writer);
	close(reader);
	return spent / writes;
}

static double write_waking_reader_ns(void) {
	int writer, reader;
	loopback_pair(&writer, &reader);
	pid_t child = fork();
	if (child == 0) {
		int poller = epoll_create1(0);
		struct epoll_event interest = { .events = EPOLLIN, .data.fd = reader }, ready;
		char drained[65536];
		epoll_ctl(poller, EPOLL_CTL_ADD, reader, &interest);
		for (;;)
			if (epoll_wait(poller, &ready, 1, -1) > 0 && read(reader, drained, sizeof drained) <= 0) _exit(0);
	}
	char frame[100];
	memset(frame, 'x', sizeof frame);
	const int writes = 50000;
	double spent = 0;
	for (int i = 0; i < writes; i++) {
		double gap = now_ns();
		while (now_ns() - gap < 50000) {} /* 50 µs: the reader has read the last frame and sleeps again */
		double start = now_ns();
		if (write(writer, frame, sizeof frame) != sizeof frame) return -1;
		spent += now_ns() - start;
	}
	kill(child, SIGKILL);
	close(writer);
	close(reader);
	return spent / writes;
}

int main(void) {
	printf("null system call (getppid): %.0f ns\n", null_syscall_ns());
	printf("100-byte loopback write, reader not waiting: %.0f ns\n", write_reader_not_waiting_ns());
	printf("100-byte loopback write waking a reader asleep in epoll_wait: %.0f ns\n", write_waking_reader_ns());
	return 0;
}
