/* Minimal host stand-in for the Arduino core, enough to run examples/accel_stream on a PC (tests only). */
#ifndef ARDUINO_SHIM_H
#define ARDUINO_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum { A0 = 0, A1 = 1, A2 = 2, A3 = 3 };

uint32_t micros();
int analogRead(uint8_t pin);

struct HostSerial {
    void begin(unsigned long) {}
    explicit operator bool() const { return true; }
    size_t write(const uint8_t *data, size_t length);
};

extern HostSerial Serial;

#endif
