/*
 * The sandbox ("pause") process of every Pod on the testbed's real node, a
 * stand-in for registry.k8s.io/pause (no registry is reachable here). It
 * holds the Pod's namespaces open, reaps the zombies of processes that were
 * re-parented to it (it is PID 1 of the Pod when the PID namespace is
 * shared), and exits on SIGINT or SIGTERM. Built static, run FROM scratch.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
  (void)sig;
  _exit(0);
}

static void on_child(int sig) {
  (void)sig;
  /* Several children may exit for one SIGCHLD. */
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

static int handle(int sig, void (*fn)(int), int flags) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = fn;
  sa.sa_flags = flags;
  sigemptyset(&sa.sa_mask);
  return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "-v") == 0) {
    puts("pause (converge testbed stand-in)");
    return 0;
  }
  if (getpid() != 1) {
    /* Not fatal: the Pod may not share its PID namespace. */
    fputs("pause: warning: not PID 1\n", stderr);
  }
  if (handle(SIGINT, on_stop, 0) || handle(SIGTERM, on_stop, 0) ||
      handle(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART)) {
    perror("pause: sigaction");
    return 1;
  }
  for (;;) {
    pause();
  }
}
