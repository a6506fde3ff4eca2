/* Runs the accel_stream sketch against a simulated clock; frames go to stdout.
 *   host_main SIMULATED_US STALL_FRAME STALL_US
 * Every micros() call advances the clock by 1 us; the write of samples frame STALL_FRAME (0-based, the
 * boot status frame not counted) blocks for STALL_US, as a full USB buffer would. */
#include <stdio.h>
#include <stdlib.h>

#include "Arduino.h"

void setup();
void loop();

static uint64_t now_us = 1000;
static long writes = 0;
static long stall_frame = -1;
static uint32_t stall_us = 0;
HostSerial Serial;

uint32_t micros() { return (uint32_t)(now_us++); }

int analogRead(uint8_t pin) { return (int)((now_us * (pin + 1u)) % 1024u); }

size_t HostSerial::write(const uint8_t *data, size_t length)
{
    if (length > 1u && writes++ == stall_frame + 1) {  // +1: the boot status frame comes first
        now_us += stall_us;
    }
    return fwrite(data, 1, length, stdout);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fputs("usage: host_main SIMULATED_US STALL_FRAME STALL_US\n", stderr);
        return 2;
    }
    uint64_t end = now_us + strtoull(argv[1], NULL, 10);
    stall_frame = strtol(argv[2], NULL, 10);
    stall_us = (uint32_t)strtoul(argv[3], NULL, 10);
    setup();
    while (now_us < end) {
        loop();
    }
    return 0;
}
