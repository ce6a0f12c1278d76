/* /bin/sleep SECONDS for the proxy's preStop hook on clusters older than 1.30, which have no
 * sleep action: the Portcullis image is FROM scratch and has no coreutils. Built static. */
#include <errno.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    char *end;
    long seconds = strtol(argv[1], &end, 10);
    if (*argv[1] == '\0' || *end != '\0' || seconds < 0) return 2;
    struct timespec left = {seconds, 0};
    while (nanosleep(&left, &left) != 0) {
        if (errno != EINTR) return 1;
    }
    return 0;
}
