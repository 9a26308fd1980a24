/*
 * Times guest accesses to one device register: maps a PCI BAR through
 * sysfs (resourceN; needs iomem=relaxed while a driver owns the device)
 * and reports nanoseconds per 32-bit read and per write. With "reads",
 * it only reads (for registers a write would disturb, such as the LSI's
 * ISTAT, which the VMM answers from its register mirror), WIDTH bytes at a
 * time (default 4). The width matters: a mirror answers only reads of
 * exactly its register's size (ISTAT0 is one byte, read by sym53c8xx with
 * readb), and a wider read goes to the device.
 *
 * usage: regbench /sys/bus/pci/devices/BDF N OFFSET COUNT [reads [WIDTH]]
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* Start address of BAR n, from the device's "resource" file. */
static uint64_t bar_start(const char *dev, int n)
{
    char path[512], line[256];
    snprintf(path, sizeof(path), "%s/resource", dev);
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        exit(1);
    }
    uint64_t start = 0;
    for (int i = 0; i <= n && fgets(line, sizeof(line), f); i++)
        start = strtoull(line, NULL, 16);
    fclose(f);
    return start;
}

int main(int argc, char **argv)
{
    int reads_only = argc >= 6 && strcmp(argv[5], "reads") == 0;
    int width = argc == 7 ? atoi(argv[6]) : 4;
    if (!(argc == 5 || (reads_only && argc <= 7)) || (width != 1 && width != 2 && width != 4)) {
        fprintf(stderr, "usage: %s DEVICE-DIR BAR OFFSET COUNT [reads [1|2|4]]\n", argv[0]);
        return 2;
    }
    const char *dev = argv[1];
    int bar = atoi(argv[2]);
    unsigned long offset = strtoul(argv[3], NULL, 0);
    long count = atol(argv[4]);
    char path[512];
    snprintf(path, sizeof(path), "%s/resource%d", dev, bar);
    int fd = open(path, O_RDWR | O_SYNC);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    long page = sysconf(_SC_PAGESIZE);
    uint64_t in_page = bar_start(dev, bar) & (page - 1);
    char *base = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    volatile uint32_t *reg = (volatile uint32_t *)(base + in_page + offset);
    uint32_t sum = 0;
    if (reads_only) {
        volatile uint8_t *b = (volatile uint8_t *)reg;
        volatile uint16_t *h = (volatile uint16_t *)reg;
        for (int i = 0; i < 100; i++)
            sum += width == 1 ? *b : width == 2 ? *h : *reg;
        double t0 = now_ns();
        for (long i = 0; i < count; i++)
            sum += width == 1 ? *b : width == 2 ? *h : *reg;
        double t1 = now_ns();
        printf("regbench-reads: offset=%#lx width=%d reads=%ld read_ns=%.0f (checksum %" PRIu32 ")\n",
               offset, width, count, (t1 - t0) / count, sum);
        return 0;
    }
    for (int i = 0; i < 100; i++)
        sum += *reg;
    double t0 = now_ns();
    for (long i = 0; i < count; i++)
        sum += *reg;
    double t1 = now_ns();
    for (long i = 0; i < count; i++)
        *reg = (uint32_t)i;
    /* A read after the writes: they are done once it returns. */
    sum += *reg;
    double t2 = now_ns();
    printf("regbench: reads=%ld read_ns=%.0f write_ns=%.0f (checksum %" PRIu32 ")\n",
           count, (t1 - t0) / count, (t2 - t1) / count, sum);
    return 0;
}
