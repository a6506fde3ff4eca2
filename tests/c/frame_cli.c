/* Host-side driver for tests/test_firmware.py: exposes the C reference encoder on stdin/stdout.
 *
 *   frame_cli samples SEQ FIRST_SAMPLE CAPTURE_US RATE SCALE COUNT CHANNELS < values.txt > frame.bin
 *   frame_cli status SEQ CAPTURE_US < message.txt > frame.bin
 *   frame_cli crc < data.bin            (prints the CRC-32 in decimal)
 *   frame_cli cobs < data.bin > stuffed.bin
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cm_frame.h"

#define MAX_INPUT 65536u

static uint8_t input[MAX_INPUT];
static uint8_t output[CM_FRAME_WIRE_MAX(MAX_INPUT)];
static int16_t values[CM_FRAME_MAX_PAYLOAD]; /* twice the legal maximum: lets tests hit the encoder limit */

static size_t read_stdin(void)
{
    return fread(input, 1, sizeof input, stdin);
}

static int write_stdout(size_t length)
{
    if (length == 0u) {
        fputs("frame_cli: encoder refused the input\n", stderr);
        return 1;
    }
    return fwrite(output, 1, length, stdout) == length ? 0 : 1;
}

static int run_samples(char **argv)
{
    cm_frame_info info;
    unsigned long count = strtoul(argv[6], NULL, 10);
    unsigned long channels = strtoul(argv[7], NULL, 10);
    size_t i;
    info.sequence = (uint32_t)strtoul(argv[1], NULL, 10);
    info.first_sample = (uint64_t)strtoull(argv[2], NULL, 10);
    info.capture_time_us = (int64_t)strtoll(argv[3], NULL, 10);
    info.sample_rate_hz = (uint32_t)strtoul(argv[4], NULL, 10);
    info.scale = strtof(argv[5], NULL);
    info.flags = (uint8_t)strtoul(argv[8], NULL, 10);
    if (count * channels > sizeof values / sizeof values[0]) {
        fputs("frame_cli: too many values\n", stderr);
        return 2;
    }
    for (i = 0; i < count * channels; i++) {
        int value;
        if (scanf("%d", &value) != 1) {
            fputs("frame_cli: expected more values on stdin\n", stderr);
            return 2;
        }
        values[i] = (int16_t)value;
    }
    return write_stdout(cm_frame_encode_samples(output, sizeof output, &info, values, (uint16_t)count,
                                                (uint8_t)channels));
}

int main(int argc, char **argv)
{
    if (argc == 10 && strcmp(argv[1], "samples") == 0) {
        return run_samples(argv + 1);
    }
    if (argc == 5 && strcmp(argv[1], "status") == 0) {
        size_t length = read_stdin();
        return write_stdout(cm_frame_encode_status(output, sizeof output, (uint32_t)strtoul(argv[2], NULL, 10),
                                                   (int64_t)strtoll(argv[3], NULL, 10),
                                                   (uint8_t)strtoul(argv[4], NULL, 10), (const char *)input,
                                                   length));
    }
    if (argc == 2 && strcmp(argv[1], "crc") == 0) {
        size_t length = read_stdin();
        printf("%lu\n", (unsigned long)cm_crc32_update(0u, input, length));
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "cobs") == 0) {
        size_t length = read_stdin();
        return write_stdout(cm_cobs_encode(input, length, output, sizeof output));
    }
    fputs("usage: frame_cli samples|status|crc|cobs ...\n", stderr);
    return 2;
}
